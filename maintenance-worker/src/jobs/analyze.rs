//! The analyze job: ANALYZE the partitioned parent, which autovacuum never does (the planner's
//! statistics for the parent come only from here); PostgreSQL analyzes every partition with it.

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
    Ok(serde_json::json!({"parent_columns_with_stats": stats}))
}
