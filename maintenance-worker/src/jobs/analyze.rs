//! The analyze job: ANALYZE the partitioned parent, which autovacuum never does (the planner's
//! statistics for the parent come only from here); PostgreSQL analyzes every partition with it.
//! Its cost follows the number of partitions (a bounded sample of each), not their rows; the
//! rows it sampled (an estimate from the catalog) are its `rows`.

use shared::db::DbError;

use super::JobCtx;

pub async fn run(ctx: &JobCtx) -> Result<serde_json::Value, DbError> {
    let client = ctx.db.get("analyze job").await?;
    client
        .batch_execute(
            "SET statement_timeout = 0; ANALYZE analytics_events; ANALYZE events_quarantine",
        )
        .await
        .map_err(DbError::query("analyze analytics_events"))?;
    let _ = client.batch_execute("RESET statement_timeout").await;
    let stats: i64 = client
        .query_one(
            "SELECT count(*) FROM pg_stats WHERE tablename = 'analytics_events'",
            &[],
        )
        .await
        .map_err(DbError::query("read parent statistics"))?
        .get(0);
    // ANALYZE reads a sample of at most 300 x default_statistics_target rows of each partition
    // (and as many for the parent): its cost is bounded per partition, not by history.
    let sampled: i64 = client
        .query_one(
            "SELECT coalesce(sum(least(greatest(c.reltuples, 0)::bigint, \
                    300 * current_setting('default_statistics_target')::bigint)), 0)::bigint \
               FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid \
              WHERE i.inhparent = 'analytics_events'::regclass",
            &[],
        )
        .await
        .map_err(DbError::query("estimate the rows sampled"))?
        .get(0);
    Ok(serde_json::json!({"parent_columns_with_stats": stats, "rows": sampled}))
}
