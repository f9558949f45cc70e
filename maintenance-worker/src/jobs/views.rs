//! The views job: folds what arrived since the last run into `daily_analytics_summary`
//! (migration 0006 says how the summary is kept). Its cost follows the pending rows, not the
//! table's history: each pending row costs one probe per distinct id into `summary_members` and
//! one upsert; only days whose events were deleted or updated are recomputed from the
//! partitions. One REPEATABLE READ transaction: the pending rows it deletes are the ones it
//! folds, and readers see the summary before or after, never between (and are never blocked).

use shared::db::DbError;

use super::JobCtx;

/// Takes this fold's share: the pending rows and dirty days visible to its snapshot.
const TAKE: &str = "
CREATE TEMP TABLE sluice_fold (app_id text, day date, event_name text, events bigint,
                               users text[], sessions text[]) ON COMMIT DROP;
CREATE TEMP TABLE sluice_dirty (app_id text, day date) ON COMMIT DROP;
WITH d AS (DELETE FROM summary_pending RETURNING *)
INSERT INTO sluice_fold SELECT app_id, day, event_name, events, users, sessions FROM d;
WITH d AS (DELETE FROM summary_dirty RETURNING *)
INSERT INTO sluice_dirty SELECT DISTINCT app_id, day FROM d;
ANALYZE sluice_fold;
ANALYZE sluice_dirty;
";

/// Dirty days: recomputed whole from the partitions (the pending rows of those days are part of
/// what the recomputation reads, so they are dropped from the fold). The days' rows are read
/// once, each day by its range of the `(app_id, occurred_at)` index (the temp tables were just
/// analyzed, so the planner knows how few days there are), then counted three ways.
const RECOMPUTE: &str = "
DELETE FROM sluice_fold f USING sluice_dirty d WHERE f.app_id = d.app_id AND f.day = d.day;
DELETE FROM daily_analytics_summary s USING sluice_dirty d
 WHERE s.app_id = d.app_id AND s.day = d.day;
DELETE FROM summary_members m USING sluice_dirty d WHERE m.app_id = d.app_id AND m.day = d.day;
CREATE TEMP TABLE sluice_day_rows ON COMMIT DROP AS
SELECT e.app_id, d.day, e.event_name, e.user_id, e.session_id
  FROM sluice_dirty d JOIN analytics_events e ON e.app_id = d.app_id
   AND e.occurred_at >= d.day::timestamp AT TIME ZONE 'UTC'
   AND e.occurred_at < (d.day + 1)::timestamp AT TIME ZONE 'UTC';
INSERT INTO summary_members (app_id, day, event_name, kind, member)
SELECT DISTINCT app_id, day, event_name, 'u', user_id FROM sluice_day_rows
 WHERE user_id IS NOT NULL
UNION ALL
SELECT DISTINCT app_id, day, event_name, 's', session_id FROM sluice_day_rows
 WHERE session_id IS NOT NULL;
INSERT INTO daily_analytics_summary
SELECT app_id, day, event_name, count(*), count(DISTINCT user_id), count(DISTINCT session_id)
  FROM sluice_day_rows
 GROUP BY 1, 2, 3;
";

/// The fold proper: new ids into `summary_members` (counted as they go in), then one upsert per
/// (app, day, event name). Returns the pending rows folded and the new ids.
const FOLD: &str = "
WITH agg AS (
    SELECT app_id, day, event_name, sum(events)::bigint AS events
      FROM sluice_fold GROUP BY 1, 2, 3
), nu AS (
    INSERT INTO summary_members (app_id, day, event_name, kind, member)
    SELECT DISTINCT f.app_id, f.day, f.event_name, 'u'::\"char\", u
      FROM sluice_fold f, unnest(f.users) AS u
    ON CONFLICT DO NOTHING
    RETURNING app_id, day, event_name
), ns AS (
    INSERT INTO summary_members (app_id, day, event_name, kind, member)
    SELECT DISTINCT f.app_id, f.day, f.event_name, 's'::\"char\", s
      FROM sluice_fold f, unnest(f.sessions) AS s
    ON CONFLICT DO NOTHING
    RETURNING app_id, day, event_name
), nuc AS (
    SELECT app_id, day, event_name, count(*) AS n FROM nu GROUP BY 1, 2, 3
), nsc AS (
    SELECT app_id, day, event_name, count(*) AS n FROM ns GROUP BY 1, 2, 3
), up AS (
    INSERT INTO daily_analytics_summary AS s
           (app_id, day, event_name, events, unique_users, unique_sessions)
    SELECT a.app_id, a.day, a.event_name, a.events, coalesce(nuc.n, 0), coalesce(nsc.n, 0)
      FROM agg a
      LEFT JOIN nuc USING (app_id, day, event_name)
      LEFT JOIN nsc USING (app_id, day, event_name)
    ON CONFLICT (app_id, day, event_name) DO UPDATE
       SET events = s.events + EXCLUDED.events,
           unique_users = s.unique_users + EXCLUDED.unique_users,
           unique_sessions = s.unique_sessions + EXCLUDED.unique_sessions
    RETURNING 1
)
SELECT (SELECT count(*) FROM sluice_fold),
       (SELECT coalesce(sum(n), 0) FROM nuc)::bigint + (SELECT coalesce(sum(n), 0) FROM nsc)::bigint,
       (SELECT count(*) FROM up),
       (SELECT count(*) FROM sluice_dirty)
";

pub async fn run(ctx: &JobCtx) -> Result<serde_json::Value, DbError> {
    let mut client = ctx.db.get("views job").await?;
    // An erasure deleting rows recounts the summary itself once done (its members' count would
    // be off if a fold recomputed its days meanwhile); readers add the pending rows, so the
    // answers stay exact while the fold waits.
    let erasing: bool = client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM erasures WHERE status = 'running' AND phase = 'delete')",
            &[],
        )
        .await
        .map_err(DbError::query("look for an erasure deleting"))?
        .get(0);
    if erasing {
        return Ok(serde_json::json!({"deferred_for_erasure": true, "rows": 0}));
    }
    let started: chrono::DateTime<chrono::Utc> = client
        .query_one("SELECT clock_timestamp()", &[])
        .await
        .map_err(DbError::query("read clock"))?
        .get(0);
    let tx = client
        .build_transaction()
        .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
        .start()
        .await
        .map_err(DbError::query("begin fold"))?;
    tx.batch_execute("SET LOCAL statement_timeout = 0")
        .await
        .map_err(DbError::query("fold timeout"))?;
    tx.batch_execute(TAKE)
        .await
        .map_err(DbError::query("take pending summary rows"))?;
    tx.batch_execute(RECOMPUTE)
        .await
        .map_err(DbError::query("recompute dirty summary days"))?;
    let row = tx
        .query_one(FOLD, &[])
        .await
        .map_err(DbError::query("fold pending summary rows"))?;
    let (pending, members, upserted, dirty): (i64, i64, i64, i64) =
        (row.get(0), row.get(1), row.get(2), row.get(3));
    tx.execute(
        "UPDATE view_refreshes SET refreshed_at = clock_timestamp(), covers_before = $1 \
         WHERE view_name = 'daily_analytics_summary'",
        &[&started],
    )
    .await
    .map_err(DbError::query("record refresh"))?;
    tx.commit().await.map_err(DbError::query("commit fold"))?;
    Ok(serde_json::json!({
        "view": "daily_analytics_summary",
        "pending_rows_folded": pending,
        "new_members": members,
        "summary_rows_upserted": upserted,
        "days_recomputed": dirty,
        "rows": pending + members + upserted,
    }))
}
