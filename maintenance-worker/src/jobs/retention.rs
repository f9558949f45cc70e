//! The retention job: partitions that end before the retention floor are detached
//! (CONCURRENTLY, so writers are not blocked) and dropped; an interrupted detach is finalized;
//! the writer's exactly-once bookkeeping older than its window is pruned.

use std::time::Duration;

use chrono::{DateTime, Utc};
use shared::db::{Db, DbError};
use shared::schema::partitions::{self, retention_floor};

use super::{ddl, JobCtx};

pub async fn run(ctx: &JobCtx) -> Result<serde_json::Value, DbError> {
    let now = ctx.clock.now();
    let floor = retention_floor(now, ctx.retention_months);
    finalize_pending_detaches(&ctx.db).await?;
    let client = ctx.db.get("retention job").await?;
    let existing = partitions::existing(&client).await?;
    drop(client);
    let mut dropped = Vec::new();
    for m in existing {
        if m.plus(1).start() > floor {
            continue;
        }
        let name = m.partition_name();
        ddl(
            &ctx.db,
            "detach partition",
            &format!("ALTER TABLE analytics_events DETACH PARTITION {name} CONCURRENTLY"),
        )
        .await?;
        ddl(
            &ctx.db,
            "drop partition",
            &format!("DROP TABLE IF EXISTS {name}"),
        )
        .await?;
        tracing::info!(partition = %name, "Dropped a partition past retention.");
        dropped.push(name);
    }
    let cutoff = now - chrono::Duration::from_std(ctx.dedupe_window).unwrap_or_default();
    let keys = prune(&ctx.db, "event_dedupe", cutoff).await?;
    let entries = prune(&ctx.db, "entry_ledger", cutoff).await?;
    Ok(serde_json::json!({
        "dropped": dropped,
        "dedupe_keys_pruned": keys,
        "ledger_entries_pruned": entries,
    }))
}

/// A `DETACH ... CONCURRENTLY` interrupted (by a crash or a cancel) leaves the partition
/// "detach pending"; `FINALIZE` completes it.
async fn finalize_pending_detaches(db: &Db) -> Result<(), DbError> {
    let pending: Vec<String> = db
        .query(
            "list pending detaches",
            "SELECT c.relname::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid \
             JOIN pg_class p ON p.oid = i.inhparent \
             WHERE p.relname = 'analytics_events' AND i.inhdetachpending",
            &[],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    for name in pending {
        if shared::schema::partitions::Month::from_partition_name(&name).is_none() {
            continue;
        }
        ddl(
            db,
            "finalize detach",
            &format!("ALTER TABLE analytics_events DETACH PARTITION {name} FINALIZE"),
        )
        .await?;
    }
    Ok(())
}

/// Deletes rows older than `cutoff` from a bookkeeping table, 10,000 at a time so no statement
/// runs long. `table` is one of this file's constants.
async fn prune(db: &Db, table: &'static str, cutoff: DateTime<Utc>) -> Result<u64, DbError> {
    let sql = format!(
        "DELETE FROM {table} WHERE ctid = ANY(ARRAY(SELECT ctid FROM {table} WHERE first_seen < $1 LIMIT 10000))"
    );
    let mut total = 0;
    loop {
        let n = db.execute("prune bookkeeping", &sql, &[&cutoff]).await?;
        total += n;
        if n == 0 {
            return Ok(total);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
