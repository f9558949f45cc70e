//! The retention job: partitions that end before the retention floor are detached
//! (CONCURRENTLY, so writers are not blocked) and dropped; an interrupted detach is finalized.
//! (The writer's exactly-once bookkeeping has its own job, [`super::dedupe`].)

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
    let mut summary_rows = 0u64;
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
        summary_rows += forget_summary(&ctx.db, m).await?;
        dropped.push(name);
    }
    Ok(serde_json::json!({ "dropped": dropped, "rows": summary_rows }))
}

/// The summary's rows of a dropped month (the partition's drop fires no trigger): its days, their
/// distinct ids and any pending rows.
async fn forget_summary(db: &Db, m: partitions::Month) -> Result<u64, DbError> {
    let (from, to) = (m.start().date_naive(), m.plus(1).start().date_naive());
    let mut n = 0;
    for table in [
        "daily_analytics_summary",
        "summary_members",
        "summary_pending",
        "summary_dirty",
    ] {
        n += db
            .execute(
                "forget the summary of a dropped month",
                &format!("DELETE FROM {table} WHERE day >= $1 AND day < $2"),
                &[&from, &to],
            )
            .await?;
    }
    Ok(n)
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
