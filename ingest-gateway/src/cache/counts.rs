//! Hit and miss counts: counted in the process on every read (never a round trip), added to
//! Redis's daily counters by the gauges loop, and read back with the cache's keys and memory by
//! `cache stats`.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use shared::redis_conn::RedisConn;

use super::Cache;

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
        let (hits, misses) = self.daily_counts(&mut conn).await?;
        let keys = self.count_answers(&mut conn).await?;
        let info: String = conn
            .query_at_key(redis::cmd("INFO").arg("memory"), &self.prefix)
            .await
            .ok()?;
        Some(CacheStats {
            hits,
            misses,
            hit_ratio: (hits + misses > 0).then(|| hits as f64 / (hits + misses) as f64),
            keys,
            memory_bytes: info_field(&info, "used_memory:").and_then(|v| v.parse().ok()),
            maxmemory_policy: info_field(&info, "maxmemory_policy:"),
        })
    }

    /// Today's hits and misses in Redis (every gateway's, as flushed so far).
    async fn daily_counts(&self, conn: &mut RedisConn) -> Option<(u64, u64)> {
        let (hits, misses): (Option<u64>, Option<u64>) = tokio::time::timeout(
            self.timeout,
            redis::pipe()
                .get(self.stats_key("hits"))
                .get(self.stats_key("misses"))
                .query_async(conn),
        )
        .await
        .ok()?
        .ok()?;
        Some((hits.unwrap_or(0), misses.unwrap_or(0)))
    }
}

/// The value of `name` (with its colon) in `INFO`'s text.
fn info_field(info: &str, name: &str) -> Option<String> {
    info.lines()
        .find_map(|l| l.strip_prefix(name))
        .map(|v| v.trim().to_owned())
}
