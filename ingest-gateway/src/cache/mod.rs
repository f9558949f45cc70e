//! The read API's Redis cache: what the read path uses and nothing more. One `GET` per read and
//! one `SET EX` per computed answer, one computation per key for concurrent misses (no
//! stampede) with refresh-ahead, hit and miss counts kept in the process and added to Redis's
//! daily counters by the gauges loop (never a round trip per read), and invalidation by prefix
//! with SCAN (never KEYS). The cache may live on another, LRU, Redis (`CACHE_REDIS_URL`). Every
//! call is bounded by a short timeout and a cache that is down is simply a miss: answers still
//! come from PostgreSQL.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use shared::redis_conn::RedisConn;
use shared::secret::Secret;
use tokio::sync::OnceCell;
use tokio_util::sync::CancellationToken;

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

/// What `ingest-gateway cache stats` prints.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct CacheStats {
    pub hits: u64,
    pub misses: u64,
    pub hit_ratio: Option<f64>,
    pub keys: u64,
    pub memory_bytes: Option<u64>,
    pub maxmemory_policy: Option<String>,
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

    /// Every `every` until `stop`: adds this process's hits and misses to Redis's daily
    /// counters, and publishes the cache's keys, memory and hit ratio on `/metrics`; once more
    /// at the stop, so no count is lost.
    pub fn spawn_gauges(self: &Arc<Self>, every: Duration, tasks: &shared::tasks::Tasks) {
        let me = self.clone();
        let stop = tasks.stop_token();
        tasks.spawn("cache_gauges", async move {
            let each = me.clone();
            shared::shutdown::every(every, stop, move || {
                let me = each.clone();
                async move {
                    me.flush_counts().await;
                    if let Some(s) = me.stats().await {
                        shared::metrics::cache_state(s.keys, s.memory_bytes, s.hit_ratio);
                    }
                }
            })
            .await;
            me.flush_counts().await;
        });
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

    /// Deletes every cache key under `prefix` (which must lie inside [`Cache::prefix`]), with
    /// SCAN and UNLINK in batches; the number deleted.
    pub async fn invalidate_prefix(&self, prefix: &str) -> Option<u64> {
        let mut conn = self.conn.get()?.clone();
        let pattern = format!("{}*", escape_glob(prefix));
        let mut cursor: u64 = 0;
        let mut deleted = 0;
        loop {
            let (next, keys) = tokio::time::timeout(
                self.timeout * 5,
                self.scan_page(&mut conn, cursor, &pattern),
            )
            .await
            .ok()??;
            if !keys.is_empty() {
                let n: u64 = redis::cmd("UNLINK")
                    .arg(&keys)
                    .query_async(&mut conn)
                    .await
                    .ok()?;
                deleted += n;
            }
            cursor = next;
            if cursor == 0 {
                return Some(deleted);
            }
        }
    }

    /// One SCAN page of the keys matching `pattern`, on the node holding the cache's keys: the
    /// next cursor and the keys.
    async fn scan_page(
        &self,
        conn: &mut RedisConn,
        cursor: u64,
        pattern: &str,
    ) -> Option<(u64, Vec<String>)> {
        let mut scan = redis::cmd("SCAN");
        scan.arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(1000);
        conn.query_at_key(&scan, &self.prefix).await.ok()
    }

    fn stats_key(&self, what: &str) -> String {
        format!(
            "{}:stats:{what}:{}",
            self.prefix,
            chrono::Utc::now().format("%Y%m%d")
        )
    }

    /// Counts a hit or a miss: a Prometheus counter, and a count the gauges loop adds to Redis's
    /// daily counter (kept two days), which `cache stats` reads across replicas.
    pub fn record(&self, hit: bool) {
        if hit {
            shared::metrics::cache_hit();
        } else {
            shared::metrics::cache_miss();
        }
        self.unflushed[usize::from(!hit)].fetch_add(1, Ordering::Relaxed);
    }

    /// Adds the hits and misses counted since the last flush to Redis's daily counters
    /// (`INCRBY`, and `EXPIRE NX` of two days, atomically); what could not be added is kept for
    /// the next flush.
    pub async fn flush_counts(&self) {
        let counts = [0, 1].map(|i| self.unflushed[i].swap(0, Ordering::Relaxed));
        if counts == [0, 0] {
            return;
        }
        let keys = [self.stats_key("hits"), self.stats_key("misses")];
        let done = self
            .call::<()>(|| {
                let mut p = redis::pipe();
                p.atomic();
                for (key, n) in keys.iter().zip(counts) {
                    p.cmd("INCRBY").arg(key).arg(n).ignore();
                    p.cmd("EXPIRE").arg(key).arg(2 * 86_400).arg("NX").ignore();
                }
                p
            })
            .await;
        if done.is_none() {
            for (i, n) in counts.into_iter().enumerate() {
                self.unflushed[i].fetch_add(n, Ordering::Relaxed);
            }
        }
    }

    /// Today's hits and misses, the number of cached answers, and the cache Redis's memory.
    pub async fn stats(&self) -> Option<CacheStats> {
        let mut conn = self.conn.get()?.clone();
        let (hits, misses): (Option<u64>, Option<u64>) = tokio::time::timeout(
            self.timeout,
            redis::pipe()
                .get(self.stats_key("hits"))
                .get(self.stats_key("misses"))
                .query_async(&mut conn),
        )
        .await
        .ok()?
        .ok()?;
        let (hits, misses) = (hits.unwrap_or(0), misses.unwrap_or(0));
        let mut keys = 0;
        let mut cursor: u64 = 0;
        let pattern = format!("{}:v1:*", escape_glob(&self.prefix));
        loop {
            let (next, batch) = self.scan_page(&mut conn, cursor, &pattern).await?;
            keys += batch.len() as u64;
            cursor = next;
            if cursor == 0 {
                break;
            }
        }
        let info: String = conn
            .query_at_key(redis::cmd("INFO").arg("memory"), &self.prefix)
            .await
            .ok()?;
        let field = |name: &str| {
            info.lines()
                .find_map(|l| l.strip_prefix(name))
                .map(|v| v.trim().to_owned())
        };
        Some(CacheStats {
            hits,
            misses,
            hit_ratio: (hits + misses > 0).then(|| hits as f64 / (hits + misses) as f64),
            keys,
            memory_bytes: field("used_memory:").and_then(|v| v.parse().ok()),
            maxmemory_policy: field("maxmemory_policy:"),
        })
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
        let now_ms = chrono::Utc::now().timestamp_millis();
        let cached = self.get(key).await;
        if let Some((fresh_until, value)) = cached.as_deref().and_then(split_entry) {
            let stale = now_ms >= fresh_until;
            // A stale answer is refreshed by one request; the others keep being served it.
            if !stale
                || self
                    .inflight
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .contains_key(key)
            {
                self.record(true);
                return Ok((value.to_owned(), true));
            }
        }
        let flight: Flight = {
            let mut map = self.inflight.lock().unwrap_or_else(|e| e.into_inner());
            map.entry(key.to_owned()).or_default().clone()
        };
        let mut computed_here = false;
        let out = flight
            .get_or_init(|| async {
                computed_here = true;
                let r = compute().await;
                if let Ok(v) = &r {
                    let fresh_until =
                        chrono::Utc::now().timestamp_millis() + ttl.as_millis() as i64;
                    self.put(key, &format!("{fresh_until}|{v}"), ttl * 2).await;
                }
                r
            })
            .await
            .clone();
        if computed_here {
            self.inflight
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(key);
        }
        self.record(false);
        out.map(|v| (v, false))
    }
}

/// A cache entry is `fresh_until_ms|value`.
fn split_entry(raw: &str) -> Option<(i64, &str)> {
    let (t, v) = raw.split_once('|')?;
    Some((t.parse().ok()?, v))
}

/// Escapes Redis glob characters so a prefix matches itself only.
fn escape_glob(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
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

    #[test]
    fn glob_characters_are_escaped() {
        assert_eq!(escape_glob("a*b?[c]\\"), "a\\*b\\?\\[c\\]\\\\");
        assert_eq!(escape_glob("sluice:cache:app_1"), "sluice:cache:app_1");
    }
}
