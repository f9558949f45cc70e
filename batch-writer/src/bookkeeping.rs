//! The pipeline's place in the database's exactly-once bookkeeping: its number in
//! `stream_pipelines` (part of every ledger key, so pipelines sharing a database never take each
//! other's entries for done), and the queue's low-water mark that the maintenance worker prunes
//! against.
//!
//! The low-water mark is the stream-entry time of the oldest entry still in any shard (acknowledged
//! entries are deleted, so this is the oldest not yet written), or the Redis server's time when
//! the streams are empty. A mark read at any moment stays a lower bound for everything queued
//! later (entry ids only grow), so an old mark is merely cautious, never wrong. (Unless the
//! Redis server's clock or stream ids go back: see `docs/reliability.md`.)

use std::time::Duration;

use chrono::{DateTime, Utc};
use shared::db::{Db, DbError};
use shared::queue::{self, Keys};
use shared::redis_conn::RedisConn;
use tokio_postgres::types::ToSql;

/// This pipeline's number, registering the prefix on first use. Concurrent registrations of
/// different prefixes may pick the same number: the loser retries.
pub async fn register(db: &Db, prefix: &str) -> Result<u16, DbError> {
    for _ in 0..10 {
        let row = db
            .query(
                "register pipeline",
                "WITH mine AS (SELECT pipeline_id FROM stream_pipelines WHERE stream_prefix = $1), \
                 ins AS (INSERT INTO stream_pipelines (pipeline_id, stream_prefix) \
                         SELECT coalesce(max(pipeline_id) + 1, 0), $1 FROM stream_pipelines \
                         WHERE NOT EXISTS (SELECT 1 FROM mine) \
                         ON CONFLICT DO NOTHING RETURNING pipeline_id) \
                 SELECT pipeline_id FROM mine UNION ALL SELECT pipeline_id FROM ins",
                &[&prefix],
            )
            .await?;
        if let Some(r) = row.first() {
            let id: i16 = r.get(0);
            return Ok(id as u16);
        }
    }
    Err(DbError::Other {
        op: "register pipeline",
        message: format!("could not register stream prefix {prefix:?} after 10 attempts"),
    })
}

/// A shard's oldest entry id and the server's time, read atomically (nothing can be added in
/// between). KEYS: stream. Returns {oldest id or "", seconds, microseconds}.
const FIRST_AND_TIME: &str = r"
local first = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', 1)
local t = redis.call('TIME')
local id = ''
if first[1] then id = first[1][1] end
return {id, t[1], t[2]}
";

/// The queue's low-water mark: the oldest entry's time, and how old it was when read, both in
/// milliseconds of Redis's clock (an empty shard counts as an entry made at the read).
pub async fn queue_low_water(redis: &mut RedisConn, keys: &Keys) -> redis::RedisResult<LowWater> {
    let script = redis::Script::new(FIRST_AND_TIME);
    let mut low = LowWater {
        ms: u64::MAX,
        age_ms: 0,
    };
    for shard in 0..keys.shards() {
        let (id, secs, micros): (String, u64, u64) =
            script.key(keys.stream(shard)).invoke_async(redis).await?;
        let now = secs * 1000 + micros / 1000;
        let ms = queue::entry_millis(&id).unwrap_or(now);
        if ms < low.ms {
            low = LowWater {
                ms,
                age_ms: now.saturating_sub(ms),
            };
        }
    }
    Ok(low)
}

/// A low-water mark as read from Redis.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LowWater {
    /// The oldest queued entry's time, Redis's clock, ms since the epoch.
    pub ms: u64,
    /// Its age when read.
    pub age_ms: u64,
}

/// The mark (`$2`, bounded by PostgreSQL's clock) and its age (`$3`, ms) of pipeline `$1`.
const REPORT_LOW_WATER: &str = "UPDATE stream_pipelines \
    SET queue_low_water = least($2, now() + interval '10 minutes'), \
        queue_low_water_db = now() - make_interval(secs => $3::bigint / 1000.0), \
        low_water_at = now() \
    WHERE pipeline_id = $1";

/// Records a low-water mark read now, replacing the last one: a mark read earlier and recorded
/// later (two writers) is merely cautious. A mark ahead of PostgreSQL's clock by more than the
/// prune job's margin (a Redis clock running fast) is recorded as that bound, so it cannot hold
/// the cutoff ahead of the keys a backlog still needs.
/// The same mark in PostgreSQL's clock (`queue_low_water_db`: now() minus the entry's age) goes
/// beside it, for erasures.
pub async fn report_low_water(db: &Db, pipeline: u16, low: LowWater) -> Result<(), DbError> {
    let at =
        DateTime::<Utc>::from_timestamp_millis(low.ms as i64).unwrap_or(DateTime::<Utc>::MIN_UTC);
    let age_ms = low.age_ms.min(i64::MAX as u64) as i64;
    let params: [&(dyn ToSql + Sync); 3] = [&(pipeline as i16), &at, &age_ms];
    db.execute("report queue low water", REPORT_LOW_WATER, &params)
        .await?;
    Ok(())
}

/// Reads and records the low-water mark; errors are logged (the mark just stays older).
pub async fn low_water_chore(db: &Db, redis: &mut RedisConn, keys: &Keys, pipeline: u16) {
    match queue_low_water(redis, keys).await {
        Ok(low) => {
            if let Err(e) = report_low_water(db, pipeline, low).await {
                tracing::warn!(error = %e, "Cannot record the queue's low-water mark.");
            }
        }
        Err(e) => tracing::warn!(error = %e, "Cannot read the queue's low-water mark."),
    }
}

/// How often writers report the low-water mark. An erasure request waits for the mark to pass
/// it (everything queued before it written), so this bounds that wait; a report costs one
/// script per shard and one UPDATE.
pub const LOW_WATER_EVERY: Duration = Duration::from_secs(5);
