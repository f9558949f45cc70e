//! The vacuum job: VACUUM (ANALYZE) of the partitions and tables with enough dead tuples to be
//! worth it, reported with their dead-tuple counts.

use deadpool_postgres::Object;
use shared::db::DbError;

use super::JobCtx;

/// Below this many dead tuples a table is left to autovacuum.
pub const MIN_DEAD: i64 = 1000;

/// The tables besides the partitions the job looks after.
const TABLES: [&str; 5] = [
    "events_quarantine",
    "event_dedupe",
    "entry_ledger",
    "dead_letters",
    "api_keys",
];

pub async fn run(ctx: &JobCtx) -> Result<serde_json::Value, DbError> {
    let client = ctx.db.get("vacuum job").await?;
    // VACUUM cannot run in a transaction block, so each statement is sent on its own.
    client
        .batch_execute("SET statement_timeout = 0")
        .await
        .map_err(DbError::query("lift statement timeout"))?;
    let mut done = Vec::new();
    for (table, dead, live) in candidates(&client).await? {
        // Names come from the catalog and are checked against our own naming.
        let ours = shared::schema::partitions::Month::from_partition_name(&table).is_some()
            || TABLES.contains(&table.as_str());
        if !ours {
            continue;
        }
        client
            .batch_execute(&format!("VACUUM (ANALYZE) {table}"))
            .await
            .map_err(DbError::query("vacuum"))?;
        tracing::info!(table = %table, dead_tuples = dead, live_tuples = live, "Vacuumed.");
        done.push(serde_json::json!({"table": table, "dead_tuples": dead, "live_tuples": live}));
    }
    let _ = client.batch_execute("RESET statement_timeout").await;
    let rows: i64 = done.iter().filter_map(|d| d["dead_tuples"].as_i64()).sum();
    Ok(serde_json::json!({"vacuumed": done, "rows": rows}))
}

/// The partitions and [`TABLES`] with at least `$1` dead tuples, most first.
const CANDIDATES: &str = "
SELECT relname::text, n_dead_tup, n_live_tup FROM pg_stat_user_tables
 WHERE (relname LIKE 'analytics_events_p%' OR relname IN
        ('events_quarantine', 'event_dedupe', 'entry_ledger', 'dead_letters', 'api_keys'))
   AND n_dead_tup >= $1 ORDER BY n_dead_tup DESC";

/// The tables with at least [`MIN_DEAD`] dead tuples, most first: name, dead and live tuples.
async fn candidates(client: &Object) -> Result<Vec<(String, i64, i64)>, DbError> {
    Ok(client
        .query(CANDIDATES, &[&MIN_DEAD])
        .await
        .map_err(DbError::query("list tables to vacuum"))?
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect())
}
