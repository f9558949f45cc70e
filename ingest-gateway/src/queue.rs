//! The gateway's side of the queue: pushes events onto the stream shards, watches the queue
//! depth for backpressure, and counts events against per-app rate limits.
//!
//! All requests share one reconnecting multiplexed connection, so concurrent pushes are pipelined
//! by redis-rs; one request costs one script call however many events it carries. Nothing is
//! answered 202 before that call has returned from Redis.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use shared::queue::{self, Keys, QueuedEvent, EVENTS_PER_ENTRY};
use shared::redis_conn::RedisConn;
use shared::secret::Secret;
use tokio::sync::OnceCell;
use tokio::time::error::Elapsed;

/// Why events were not queued; every variant is a 503 or 429 for the client, never a 500.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("the queue is full ({depth} events waiting); retry later")]
    Full { depth: u64 },
    #[error("the queue is unavailable; retry later")]
    Unavailable,
    #[error("the queue's Redis evicts keys (maxmemory-policy {0}); refusing to queue")]
    Evicting(String),
}

pub struct Queue {
    keys: Keys,
    url: Secret,
    conn: OnceCell<RedisConn>,
    push: redis::Script,
    rate: redis::Script,
    timeout: Duration,
    high_water: u64,
    depth: AtomicU64,
    /// The last depth poll reached Redis.
    reachable: AtomicBool,
    /// Set when the server's eviction policy is not `noeviction`.
    bad_policy: std::sync::Mutex<Option<String>>,
    next_shard: AtomicUsize,
}

impl Queue {
    pub fn new(keys: Keys, url: Secret, timeout: Duration, high_water: u64) -> Arc<Self> {
        Arc::new(Self {
            keys,
            url,
            conn: OnceCell::new(),
            push: redis::Script::new(queue::PUSH_SCRIPT),
            rate: redis::Script::new(queue::RATE_SCRIPT),
            timeout,
            high_water,
            depth: AtomicU64::new(0),
            reachable: AtomicBool::new(false),
            bad_policy: std::sync::Mutex::new(None),
            next_shard: AtomicUsize::new(0),
        })
    }

    /// Tries to connect once, within the Redis timeout. On success the eviction policy is checked:
    /// an evicting Redis is an error (it can drop the stream itself).
    pub async fn connect(&self) -> Result<bool, QueueError> {
        if self.conn.initialized() {
            return Ok(true);
        }
        let attempt = tokio::time::timeout(
            self.timeout,
            shared::redis_conn::connect(&self.url, self.timeout),
        )
        .await;
        let Ok(Ok(mut conn)) = attempt else {
            return Ok(false);
        };
        match shared::redis_conn::eviction_policy(&mut conn).await {
            Ok(Some(p)) if p != "noeviction" => return Err(self.evicting(p)),
            Ok(None) => tracing::warn!("CONFIG GET is not allowed on the queue's Redis: cannot check that maxmemory-policy is noeviction. Make sure it is: an evicting Redis loses events."),
            _ => {}
        }
        let _ = self.conn.set(conn);
        self.poll_depth().await;
        tracing::info!("Connected to the queue's Redis.");
        Ok(true)
    }

    /// Refuses an evicting Redis: every push and readiness check says so from now on.
    fn evicting(&self, policy: String) -> QueueError {
        tracing::error!(policy = %policy, "The queue's Redis must run with maxmemory-policy noeviction: an evicting Redis can drop the stream and lose events.");
        *self.bad_policy.lock().unwrap_or_else(|e| e.into_inner()) = Some(policy.clone());
        QueueError::Evicting(policy)
    }

    /// Keeps trying to connect (with exponential backoff) until connected, then polls the queue
    /// depth every 100 ms until `stop`.
    pub fn spawn_watch(self: &Arc<Self>, tasks: &shared::tasks::Tasks) {
        let q = self.clone();
        let stop = tasks.stop_token();
        tasks.spawn("queue_watch", async move {
            let mut backoff = shared::retry::Backoff::standard();
            loop {
                if let Ok(true) = q.connect().await {
                    break;
                }
                if !backoff.wait(&stop).await {
                    return;
                }
            }
            shared::shutdown::every(Duration::from_millis(100), stop, || q.poll_depth()).await;
        });
    }

    async fn poll_depth(&self) {
        let Some(conn) = self.conn.get() else { return };
        let mut conn = conn.clone();
        let keys = self.keys.all_depths();
        let reply: Result<redis::RedisResult<Vec<Option<i64>>>, _> = tokio::time::timeout(
            self.timeout,
            redis::cmd("MGET").arg(&keys).query_async(&mut conn),
        )
        .await;
        match reply {
            Ok(Ok(values)) => {
                let total: i64 = values.into_iter().flatten().map(|v| v.max(0)).sum();
                self.depth.store(total as u64, Ordering::Relaxed);
                shared::metrics::queue_depth(total as u64);
                self.reachable.store(true, Ordering::Relaxed);
            }
            _ => self.reachable.store(false, Ordering::Relaxed),
        }
    }

    pub fn depth(&self) -> u64 {
        self.depth.load(Ordering::Relaxed)
    }

    /// Ready: connected, reachable at the last poll, a safe eviction policy, below high water.
    pub fn readiness(&self) -> (bool, serde_json::Value) {
        let bad = self.bad_policy();
        let connected = self.conn.initialized();
        let reachable = connected && self.reachable.load(Ordering::Relaxed);
        let depth = self.depth();
        let ready = reachable && bad.is_none() && depth <= self.high_water;
        (
            ready,
            serde_json::json!({
                "redis_reachable": reachable,
                "queue_depth": depth,
                "queue_high_water": self.high_water,
                "eviction_policy_problem": bad,
            }),
        )
    }

    /// The eviction policy that made the queue refuse Redis, if one did.
    fn bad_policy(&self) -> Option<String> {
        self.bad_policy
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The connection to push on: none while Redis is unreachable or evicting.
    fn conn(&self) -> Result<RedisConn, QueueError> {
        match self.bad_policy() {
            Some(p) => Err(QueueError::Evicting(p)),
            None => self.conn.get().cloned().ok_or(QueueError::Unavailable),
        }
    }

    /// Queues the events of one request on one shard, all or none.
    pub async fn push(&self, events: &[QueuedEvent]) -> Result<(), QueueError> {
        let depth = self.depth();
        if depth > self.high_water {
            return Err(QueueError::Full { depth });
        }
        let mut conn = self.conn()?;
        let shard =
            (self.next_shard.fetch_add(1, Ordering::Relaxed) % self.keys.shards() as usize) as u16;
        let payloads = encode(events)?;
        // A cluster client resends after a dropped connection: a token of this push alone keeps
        // it once-only.
        let token = conn
            .is_cluster()
            .then(|| uuid::Uuid::new_v4().simple().to_string());
        let inv = queue::push_invocation(
            &self.push,
            &self.keys,
            shard,
            token.as_deref(),
            payloads.iter().map(|(n, p)| (*n, &p[..])),
        );
        let reply = tokio::time::timeout(self.timeout, inv.invoke_async(&mut conn)).await;
        self.pushed(reply, events.len(), depth)
    }

    /// What a push's reply means for the client; the depth counts the events at once.
    fn pushed(
        &self,
        reply: Result<redis::RedisResult<Vec<String>>, Elapsed>,
        events: usize,
        depth: u64,
    ) -> Result<(), QueueError> {
        match reply {
            Ok(Ok(_ids)) => {
                self.depth.fetch_add(events as u64, Ordering::Relaxed);
                Ok(())
            }
            Ok(Err(e)) if e.to_string().contains("OOM") => {
                tracing::warn!(error = %e, "Queue Redis is out of memory; refusing events.");
                Err(QueueError::Full { depth })
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "Cannot queue events.");
                Err(QueueError::Unavailable)
            }
            Err(_) => {
                tracing::warn!(timeout = ?self.timeout, "Queueing timed out.");
                Err(QueueError::Unavailable)
            }
        }
    }

    /// Counts `n` events of `app` against `limit` events per second, shared by every gateway
    /// replica. `Ok(false)` when the app is over its limit.
    pub async fn rate_allows(&self, app: &str, n: usize, limit: u32) -> Result<bool, QueueError> {
        let mut conn = self.conn()?;
        let now = chrono::Utc::now().timestamp();
        let mut inv = self.rate.key(self.keys.rate(app, now));
        inv.arg(n).arg(limit);
        match tokio::time::timeout(self.timeout, inv.invoke_async::<i64>(&mut conn)).await {
            Ok(Ok(v)) => Ok(v >= 0),
            _ => Err(QueueError::Unavailable),
        }
    }
}

/// The entries of one request: up to [`EVENTS_PER_ENTRY`] events each, with their count.
fn encode(events: &[QueuedEvent]) -> Result<Vec<(usize, Vec<u8>)>, QueueError> {
    let mut payloads = Vec::with_capacity(events.len().div_ceil(EVENTS_PER_ENTRY));
    for chunk in events.chunks(EVENTS_PER_ENTRY) {
        let payload = queue::encode(chunk).map_err(|e| {
            tracing::error!(error = %e, "Cannot encode events.");
            QueueError::Unavailable
        })?;
        payloads.push((chunk.len(), payload));
    }
    Ok(payloads)
}
