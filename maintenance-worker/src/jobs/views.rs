//! The views job: `REFRESH MATERIALIZED VIEW CONCURRENTLY daily_analytics_summary` (readers are
//! never blocked), then record what the refresh covers for the read API.

use shared::db::DbError;

use super::JobCtx;

pub async fn run(ctx: &JobCtx) -> Result<serde_json::Value, DbError> {
    let client = ctx.db.get("views job").await?;
    let started: chrono::DateTime<chrono::Utc> = client
        .query_one("SELECT clock_timestamp()", &[])
        .await
        .map_err(DbError::query("read clock"))?
        .get(0);
    client
        .batch_execute(
            "SET statement_timeout = 0; \
             REFRESH MATERIALIZED VIEW CONCURRENTLY daily_analytics_summary",
        )
        .await
        .map_err(DbError::query("refresh daily_analytics_summary"))?;
    let _ = client.batch_execute("RESET statement_timeout").await;
    client
        .execute(
            "UPDATE view_refreshes SET refreshed_at = clock_timestamp(), covers_before = $1 \
             WHERE view_name = 'daily_analytics_summary'",
            &[&started],
        )
        .await
        .map_err(DbError::query("record refresh"))?;
    let rows: i64 = client
        .query_one("SELECT count(*) FROM daily_analytics_summary", &[])
        .await
        .map_err(DbError::query("count summary"))?
        .get(0);
    Ok(
        serde_json::json!({"view": "daily_analytics_summary", "rows": rows, "covers_before": started}),
    )
}
