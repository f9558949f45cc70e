//! The read API's Redis cache, as the original design describes its Redis layer: reconnection
//! with exponential backoff, batch get and set with TTL (MGET, pipelined SET EX), counters with
//! TTL, invalidation by prefix with SCAN (never KEYS), statistics, and one computation per key
//! for concurrent misses (no stampede). The cache may live on another, LRU, Redis
//! (`CACHE_REDIS_URL`). Every call is bounded by a short timeout and a cache that is down is
//! simply a miss: answers still come from PostgreSQL.

use std::collections::HashMap;
use std::future::Future;
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

    /// Publishes the cache's keys, memory and hit ratio on `/metrics` every `every` until `stop`.
    pub fn spawn_gauges(self: &Arc<Self>, every: Duration, tasks: &shared::tasks::Tasks) {
        let me = self.clone();
        let stop = tasks.stop_token();
        tasks.spawn(
            "cache_gauges",
            shared::shutdown::every(every, stop, move || {
                let me = me.clone();
                async move {
                    if let Some(s) = me.stats().await {
                        shared::metrics::cache_state(s.keys, s.memory_bytes, s.hit_ratio);
                    }
                }
            }),
        );
    }

    /// `MGET`: one value (or none) per key, in order; all `None` when the cache is down.
    pub async fn get_many(&self, keys: &[String]) -> Vec<Option<String>> {
        if keys.is_empty() {
            return Vec::new();
        }
        let mut conn = match self.conn.get() {
            Some(c) => c.clone(),
            None => return vec![None; keys.len()],
        };
        let got = tokio::time::timeout(
            self.timeout,
            redis::cmd("MGET")
                .arg(keys)
                .query_async::<Vec<Option<String>>>(&mut conn),
        )
        .await;
        match got {
            Ok(Ok(v)) => v,
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "Cache call failed.");
                vec![None; keys.len()]
            }
            Err(_) => vec![None; keys.len()],
        }
    }

    /// Pipelined `SET key value EX ttl`; false when the cache is down.
    pub async fn set_many(&self, items: &[(String, String, Duration)]) -> bool {
        if items.is_empty() {
            return true;
        }
        self.call::<()>(|| {
            let mut p = redis::pipe();
            for (k, v, ttl) in items {
                p.cmd("SET")
                    .arg(k)
                    .arg(v)
                    .arg("EX")
                    .arg(ttl.as_secs().max(1))
                    .ignore();
            }
            p
        })
        .await
        .is_some()
    }

    /// `INCRBY` then `EXPIRE` (set only when the key is new), atomically; the new value.
    pub async fn incr(&self, key: &str, by: i64, ttl: Duration) -> Option<i64> {
        let (v, _): (i64, i64) = self
            .call(|| {
                let mut p = redis::pipe();
                p.atomic()
                    .cmd("INCRBY")
                    .arg(key)
                    .arg(by)
                    .cmd("EXPIRE")
                    .arg(key)
                    .arg(ttl.as_secs().max(1))
                    .arg("NX");
                p
            })
            .await?;
        Some(v)
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

    /// Counts a hit or a miss: a Prometheus counter here, and a daily Redis counter (kept two
    /// days) that `cache stats` reads across replicas.
    pub async fn record(&self, hit: bool) {
        if hit {
            shared::metrics::cache_hit();
        } else {
            shared::metrics::cache_miss();
        }
        let key = self.stats_key(if hit { "hits" } else { "misses" });
        let _ = self.incr(&key, 1, Duration::from_secs(2 * 86_400)).await;
    }

    /// Today's hits and misses, the number of cached answers, and the cache Redis's memory.
    pub async fn stats(&self) -> Option<CacheStats> {
        let counts = self
            .get_many(&[self.stats_key("hits"), self.stats_key("misses")])
            .await;
        let num = |v: &Option<String>| v.as_deref().and_then(|s| s.parse().ok()).unwrap_or(0u64);
        let (hits, misses) = (num(&counts[0]), num(&counts[1]));
        let mut conn = self.conn.get()?.clone();
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
        let cached = self.get_many(&[key.to_owned()]).await.pop().flatten();
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
                self.record(true).await;
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
                    self.set_many(&[(key.to_owned(), format!("{fresh_until}|{v}"), ttl * 2)])
                        .await;
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
        self.record(false).await;
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
