//! The dedupe-prune job: removes the writer's exactly-once bookkeeping that no delivery can need
//! any more, in bounded batches (10,000 rows a statement, each its own transaction), so writers
//! are never blocked for long.
//!
//! What may go is decided on receive times, against the oldest event still queued (each
//! pipeline's writers record a low-water mark of their queue in `stream_pipelines`):
//! - `event_dedupe` (and `event_dedupe_legacy`): a key may go once it is older than
//!   `DEDUPE_WINDOW_HOURS` before the oldest queued event (and before now). A retry received
//!   within the window of its first copy's receipt is still queued or written, so it always
//!   meets the key, however late a backlog writes it.
//! - `entry_ledger`: a pipeline's rows for entries older than its low-water mark (those entries
//!   are acknowledged and deleted from the stream, so never delivered again) and written more than
//!   the window ago. An entry committed but not yet acknowledged is still in its stream, at or
//!   above the mark, and keeps its row.
//!
//! Until every registered pipeline has recorded a mark, keys are kept.

use std::time::Duration;

use chrono::{DateTime, Utc};
use shared::db::{Db, DbError};
use shared::queue::ledger_key;
use uuid::Uuid;

use super::JobCtx;

/// Clock differences between the gateway, Redis and PostgreSQL that the cutoffs allow for.
pub const CLOCK_MARGIN: Duration = Duration::from_secs(600);

const BATCH: i64 = 10_000;

pub async fn run(ctx: &JobCtx) -> Result<serde_json::Value, DbError> {
    let now = ctx.clock.now();
    let window = chrono::Duration::from_std(ctx.dedupe_window + CLOCK_MARGIN).unwrap_or_default();
    let pipelines = pipelines(&ctx.db).await?;
    if pipelines.iter().any(|p| p.low_water.is_none()) || pipelines.is_empty() {
        tracing::info!(
            "Keeping dedupe keys: not every pipeline has recorded its queue's low-water mark yet."
        );
        return Ok(
            serde_json::json!({"dedupe_keys_pruned": 0, "ledger_entries_pruned": 0, "waiting_for_low_water": true, "rows": 0}),
        );
    }
    let oldest = pipelines
        .iter()
        .filter_map(|p| p.low_water)
        .min()
        .unwrap_or(now)
        .min(now);
    let key_cutoff = oldest - window;
    let keys = prune_by_time(&ctx.db, "event_dedupe", key_cutoff).await?
        + prune_by_time(&ctx.db, "event_dedupe_legacy", key_cutoff).await?;
    let mut entries = 0;
    for p in &pipelines {
        let Some(mark) = p.low_water else { continue };
        let before = mark.min(now - window);
        entries += prune_ledger(&ctx.db, p.id, before, now - window).await?;
    }
    Ok(serde_json::json!({
        "dedupe_keys_pruned": keys,
        "ledger_entries_pruned": entries,
        "key_cutoff": key_cutoff,
        "rows": keys + entries,
    }))
}

struct Pipeline {
    id: u16,
    low_water: Option<DateTime<Utc>>,
}

async fn pipelines(db: &Db) -> Result<Vec<Pipeline>, DbError> {
    Ok(db
        .query(
            "read pipelines",
            "SELECT pipeline_id, queue_low_water FROM stream_pipelines",
            &[],
        )
        .await?
        .iter()
        .map(|r| Pipeline {
            id: r.get::<_, i16>(0) as u16,
            low_water: r.get(1),
        })
        .collect())
}

/// Deletes rows whose `first_seen` is before `cutoff`, a batch at a time. `table` is one of this
/// file's constants.
async fn prune_by_time(
    db: &Db,
    table: &'static str,
    cutoff: DateTime<Utc>,
) -> Result<u64, DbError> {
    let sql = format!(
        "DELETE FROM {table} WHERE ctid = ANY(ARRAY(\
         SELECT ctid FROM {table} WHERE first_seen < $1 LIMIT {BATCH}))"
    );
    drain(db, &sql, &[&cutoff]).await
}

/// Deletes pipeline `pipeline`'s ledger rows for entries before `before` that were written
/// before `written_before`, walking the key range (keys start with the pipeline and the entry
/// time).
async fn prune_ledger(
    db: &Db,
    pipeline: u16,
    before: DateTime<Utc>,
    written_before: DateTime<Utc>,
) -> Result<u64, DbError> {
    let lo = ledger_key(pipeline, 0, 0, 0).unwrap_or(Uuid::nil());
    let ms = before.timestamp_millis().max(0) as u64;
    let Some(hi) = ledger_key(pipeline, 0, ms, 0) else {
        return Ok(0);
    };
    let sql = format!(
        "DELETE FROM entry_ledger WHERE entry_key = ANY(ARRAY(\
         SELECT entry_key FROM entry_ledger WHERE entry_key >= $1 AND entry_key < $2 \
         AND first_seen < $3 LIMIT {BATCH}))"
    );
    drain(db, &sql, &[&lo, &hi, &written_before]).await
}

/// Runs a bounded DELETE until it deletes nothing, pausing between batches.
async fn drain(
    db: &Db,
    sql: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> Result<u64, DbError> {
    let mut total = 0;
    loop {
        let n = db.execute("prune bookkeeping", sql, params).await?;
        total += n;
        if n == 0 {
            return Ok(total);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
