//! The read API's Redis cache: what the read path uses and nothing more. One `GET` per read and
//! one `SET EX` per computed answer, one computation per key for concurrent misses (no
//! stampede) with refresh-ahead, hit and miss counts kept in the process and added to Redis's
//! daily counters by the gauges loop (never a round trip per read), and invalidation by prefix
//! with SCAN (never KEYS). The cache may live on another, LRU, Redis (`CACHE_REDIS_URL`). Every
//! call is bounded by a short timeout and a cache that is down is simply a miss: answers still
//! come from PostgreSQL.
//!
//! Here: connection, `GET`, `SET EX` and single flight. `counts.rs`: hit and miss counts, the
//! gauges loop, `cache stats`. `scan.rs`: invalidation and the count of cached answers.

mod counts;
mod scan;

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use shared::redis_conn::RedisConn;
use shared::secret::Secret;
use tokio::sync::OnceCell;
use tokio_util::sync::CancellationToken;

pub use counts::CacheStats;

/// The computation behind a miss failed (the closure that ran it logged why); every request
/// that waited on the same flight gets this too.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the value could not be computed")]
pub struct ComputeFailed;

type Flight = Arc<OnceCell<Result<String, ComputeFailed>>>;

pub struct Cache {
    url: Secret,
    prefix: String,
    timeout: Duration,
    conn: OnceCell<RedisConn>,
    inflight: Mutex<HashMap<String, Flight>>,
    /// Hits and misses not yet added to Redis's daily counters.
    unflushed: [AtomicU64; 2],
}

impl Cache {
    pub fn new(url: Secret, prefix: &str, timeout: Duration) -> Arc<Self> {
        Arc::new(Self {
            url,
            // One hash tag for the whole cache: on a Redis Cluster its keys share a slot, so
            // batches, MGET and invalidation by SCAN all go to one node.
            prefix: format!("{{{prefix}:cache}}"),
            timeout,
            conn: OnceCell::new(),
            inflight: Mutex::new(HashMap::new()),
            unflushed: [AtomicU64::new(0), AtomicU64::new(0)],
        })
    }

    /// The prefix of every cache key (so invalidation never touches the queue's keys).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The prefix of the cached answers: every app's, or one app's (see
    /// [`crate::stats::cache_key`]).
    pub fn answers_prefix(&self, app: Option<&str>) -> String {
        match app {
            Some(app) => format!("{}:v1:{app}:", self.prefix),
            None => format!("{}:v1:", self.prefix),
        }
    }

    /// Tries to connect once; `false` when the cache Redis is unreachable.
    pub async fn connect(&self) -> bool {
        if self.conn.initialized() {
            return true;
        }
        match tokio::time::timeout(
            self.timeout.max(Duration::from_millis(500)),
            shared::redis_conn::connect(&self.url, self.timeout),
        )
        .await
        {
            Ok(Ok(c)) => {
                let _ = self.conn.set(c);
                true
            }
            _ => false,
        }
    }

    /// Keeps trying to connect with exponential backoff until connected or `stop`; after that
    /// the connection manager reconnects by itself. A one-shot task, so not watched: it ends
    /// once connected.
    pub fn spawn_connect(self: &Arc<Self>, stop: CancellationToken) {
        let me = self.clone();
        tokio::spawn(async move {
            let mut backoff =
                shared::retry::Backoff::new(Duration::from_millis(100), Duration::from_secs(10));
            while !me.connect().await {
                if !backoff.wait(&stop).await {
                    return;
                }
            }
        });
    }

    async fn call<T: redis::FromRedisValue>(
        &self,
        cmd: impl FnOnce() -> redis::Pipeline,
    ) -> Option<T> {
        let mut conn = self.conn.get()?.clone();
        let pipe = cmd();
        match tokio::time::timeout(self.timeout, pipe.query_async::<T>(&mut conn)).await {
            Ok(Ok(v)) => Some(v),
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "Cache call failed.");
                None
            }
            Err(_) => None,
        }
    }

    /// `GET`: the value, or none (also when the cache is down).
    pub async fn get(&self, key: &str) -> Option<String> {
        let mut conn = self.conn.get()?.clone();
        let mut get = redis::cmd("GET");
        get.arg(key);
        match tokio::time::timeout(self.timeout, get.query_async::<Option<String>>(&mut conn)).await
        {
            Ok(Ok(v)) => v,
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "Cache call failed.");
                None
            }
            Err(_) => None,
        }
    }

    /// `SET key value EX ttl`; false when the cache is down.
    pub async fn put(&self, key: &str, value: &str, ttl: Duration) -> bool {
        self.call::<()>(|| {
            let mut p = redis::pipe();
            p.cmd("SET")
                .arg(key)
                .arg(value)
                .arg("EX")
                .arg(ttl.as_secs().max(1))
                .ignore();
            p
        })
        .await
        .is_some()
    }

    /// The cached value of `key`, or `compute`'s result, stored for `ttl`. Concurrent misses of
    /// one key in this process compute once. Refresh-ahead: an answer is kept for twice `ttl`, and
    /// once it is older than `ttl` the first request to see it recomputes it while the others are
    /// still served the cached answer, so a busy key never expires into a burst of misses.
    /// Returns the value and whether it came from the cache.
    pub async fn get_or_compute<F, Fut>(
        &self,
        key: &str,
        ttl: Duration,
        compute: F,
    ) -> Result<(String, bool), ComputeFailed>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<String, ComputeFailed>>,
    {
        if let Some(value) = self.cached(key).await {
            self.record(true);
            return Ok((value, true));
        }
        let out = self.compute_once(key, ttl, compute).await;
        self.record(false);
        out.map(|v| (v, false))
    }

    /// The cached answer of `key` while it is fresh, or while stale if another request of this
    /// process is refreshing it (a stale answer is refreshed by one request; the others keep
    /// being served it).
    async fn cached(&self, key: &str) -> Option<String> {
        let now_ms = chrono::Utc::now().timestamp_millis();
        let cached = self.get(key).await?;
        let (fresh_until, value) = split_entry(&cached)?;
        (now_ms < fresh_until || self.flights().contains_key(key)).then(|| value.to_owned())
    }

    /// `compute`, run by one of the concurrent callers for `key` (the others wait for its
    /// result); an answer is stored fresh for `ttl`.
    async fn compute_once<F, Fut>(
        &self,
        key: &str,
        ttl: Duration,
        compute: F,
    ) -> Result<String, ComputeFailed>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<String, ComputeFailed>>,
    {
        let flight = self.flights().entry(key.to_owned()).or_default().clone();
        let mut computed_here = false;
        let out = flight
            .get_or_init(|| async {
                computed_here = true;
                let r = compute().await;
                if let Ok(v) = &r {
                    self.put_entry(key, v, ttl).await;
                }
                r
            })
            .await
            .clone();
        if computed_here {
            self.flights().remove(key);
        }
        out
    }

    fn flights(&self) -> MutexGuard<'_, HashMap<String, Flight>> {
        self.inflight.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Stores `value` as fresh for `ttl` and kept for twice that (see [`split_entry`]).
    async fn put_entry(&self, key: &str, value: &str, ttl: Duration) {
        let fresh_until = chrono::Utc::now().timestamp_millis() + ttl.as_millis() as i64;
        self.put(key, &format!("{fresh_until}|{value}"), ttl * 2)
            .await;
    }
}

/// A cache entry is `fresh_until_ms|value`.
fn split_entry(raw: &str) -> Option<(i64, &str)> {
    let (t, v) = raw.split_once('|')?;
    Some((t.parse().ok()?, v))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_carry_their_freshness() {
        assert_eq!(split_entry("1700|{\"a\":1}"), Some((1700, "{\"a\":1}")));
        assert_eq!(split_entry("{\"a\":1}"), None);
        assert_eq!(split_entry("x|y"), None);
    }
}
