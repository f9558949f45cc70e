//! The views job: folds what arrived since the last run into `daily_analytics_summary`
//! (migration 0006 says how the summary is kept). Its cost follows the pending rows, not the
//! table's history: each pending row costs one probe per distinct id into `summary_members` and
//! one upsert; only days whose events were deleted or updated are recomputed from the
//! partitions. One REPEATABLE READ transaction: the pending rows it deletes are the ones it
//! folds, and readers see the summary before or after, never between (and are never blocked).

use shared::db::{Db, DbError};

use super::JobCtx;

/// Takes this fold's share: the pending rows and dirty days visible to its snapshot.
const TAKE: &str = "
CREATE TEMP TABLE sluice_fold (app_id text, day date, event_name text, events bigint,
                               users text[], sessions text[], owners text[]) ON COMMIT DROP;
CREATE TEMP TABLE sluice_dirty (app_id text, day date) ON COMMIT DROP;
WITH d AS (DELETE FROM summary_pending RETURNING *)
INSERT INTO sluice_fold SELECT app_id, day, event_name, events, users, sessions, owners FROM d;
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
";

/// The summary of the rows in `sluice_day_rows` (app, day, event name, user, session): their
/// distinct ids, each session's owner, and the counts. Also how a benchmark summarizes a bulk
/// load, from a partition's rows.
pub const SUMMARIZE_DAY_ROWS: &str = "
INSERT INTO summary_members (app_id, day, event_name, kind, member, owner)
SELECT DISTINCT app_id, day, event_name, 'u', user_id, NULL::text FROM sluice_day_rows
 WHERE user_id IS NOT NULL
UNION ALL
SELECT app_id, day, event_name, 's', session_id,
       CASE WHEN count(user_id) = count(*) AND min(user_id COLLATE \"C\") = max(user_id COLLATE \"C\")
            THEN min(user_id COLLATE \"C\") END
  FROM sluice_day_rows
 WHERE session_id IS NOT NULL
 GROUP BY 1, 2, 3, 5;
INSERT INTO daily_analytics_summary
SELECT app_id, day, event_name, count(*), count(DISTINCT user_id), count(DISTINCT session_id)
  FROM sluice_day_rows
 GROUP BY 1, 2, 3;
";

/// The fold's sessions, one row per (app, day, event name, session) with its owner across the
/// pending rows (migration 0008: NULL as soon as one pending row saw several users, none, or is
/// older than the owners), each probed once in `summary_members` (a LATERAL with LIMIT keeps it
/// a primary-key lookup: as a join, the planner read the whole table). A member already stored
/// with another owner loses it; the ones not found are the new ids [`FOLD`] inserts.
const OWNERS: &str = "
CREATE TEMP TABLE sluice_fold_sessions ON COMMIT DROP AS
SELECT s.*, m.ctid AS found, m.owner AS kept
  FROM (SELECT f.app_id, f.day, f.event_name, x.member,
               CASE WHEN bool_and(x.owner IS NOT NULL) AND min(x.owner) = max(x.owner)
                    THEN min(x.owner) END AS owner
          FROM sluice_fold f, unnest(f.sessions, coalesce(f.owners, '{}')) AS x(member, owner)
         WHERE x.member IS NOT NULL
         GROUP BY 1, 2, 3, 4) s
  LEFT JOIN LATERAL (
    SELECT x.ctid, x.owner FROM summary_members x
     WHERE x.app_id = s.app_id AND x.day = s.day AND x.event_name = s.event_name
       AND x.kind = 's' AND x.member = s.member
     LIMIT 1) m ON true;
UPDATE summary_members SET owner = NULL
 WHERE ctid = ANY (ARRAY(
   SELECT found FROM sluice_fold_sessions
    WHERE found IS NOT NULL AND kept IS NOT NULL AND kept IS DISTINCT FROM owner));
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
    INSERT INTO summary_members (app_id, day, event_name, kind, member, owner)
    SELECT app_id, day, event_name, 's'::\"char\", member, owner FROM sluice_fold_sessions
     WHERE found IS NULL
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

/// The erasure being summarized ([`fold`]): its events, less those of days recomputed by this
/// fold (already without them), and its users' and sessions' ids per day and event name. $1 the
/// erasure, $2 its app.
const ERASED_TAKE: &str = "
INSERT INTO sluice_erased
SELECT day, event_name, sum(events)::bigint FROM summary_erased e
 WHERE erasure_id = $1 AND app_id = $2
   AND NOT EXISTS (SELECT 1 FROM sluice_dirty d WHERE d.app_id = e.app_id AND d.day = e.day)
 GROUP BY 1, 2";

const ERASED_IDS: &str = "
INSERT INTO sluice_erased_ids
SELECT e.day, e.event_name, 'u', u FROM summary_erased e, unnest(e.users) AS u
 WHERE erasure_id = $1 AND app_id = $2
   AND NOT EXISTS (SELECT 1 FROM sluice_dirty d WHERE d.app_id = e.app_id AND d.day = e.day)
UNION
SELECT e.day, e.event_name, 's', x FROM summary_erased e, unnest(e.sessions) AS x
 WHERE erasure_id = $1 AND app_id = $2
   AND NOT EXISTS (SELECT 1 FROM sluice_dirty d WHERE d.app_id = e.app_id AND d.day = e.day)";

/// What is left of the erased users' events: each user's rows found by the user index, once
/// for all their days (after the deletions, only events that landed since). The subquery is
/// kept apart (OFFSET 0) so that each user stays one parameterized probe of the user index; as
/// per-(day, event name) probes, the planner also read each day's range of the app's index.
const ERASED_LEFT: &str = "
INSERT INTO sluice_left
SELECT (e.occurred_at AT TIME ZONE 'UTC')::date, e.event_name, e.user_id, e.session_id
  FROM (SELECT DISTINCT member FROM sluice_erased_ids WHERE kind = 'u') u
 CROSS JOIN LATERAL (
    SELECT e.occurred_at, e.event_name, e.user_id, e.session_id FROM analytics_events e
     WHERE hashtextextended(e.app_id || chr(31) || e.user_id, 0)
           = hashtextextended($1::text || chr(31) || u.member, 0)
       AND e.user_id IS NOT NULL AND e.app_id = $1 AND e.user_id = u.member
    OFFSET 0) e";

/// Ids no remaining event of that day and name carries. A user is gone where none of their
/// events is left. A session whose owner (migration 0008) is one of the erased users of that
/// day and name had only that user's events there: it is gone unless one of the erased users'
/// events left carries it. A session with no owner is proved by reading the day's range of the
/// app's `(app_id, event_name, occurred_at)` index (a LATERAL with LIMIT, stopping at the first
/// event; its condition on the outer row alone runs as a one-time filter, so owned sessions
/// skip it).
const ERASED_GONE: &str = "
INSERT INTO sluice_gone
SELECT i.* FROM sluice_erased_ids i
 WHERE i.kind = 'u' AND NOT EXISTS (
   SELECT 1 FROM sluice_left l
    WHERE l.day = i.day AND l.event_name = i.event_name AND l.user_id = i.member)
UNION ALL
SELECT i.day, i.event_name, i.kind, i.member FROM sluice_erased_ids i
 CROSS JOIN LATERAL (
    SELECT x.owner FROM summary_members x
     WHERE x.app_id = $1 AND x.day = i.day AND x.event_name = i.event_name AND x.kind = 's'
       AND x.member = i.member
     LIMIT 1) m
 CROSS JOIN LATERAL (
    SELECT m.owner IS NOT NULL AND EXISTS (
             SELECT 1 FROM sluice_erased_ids u
              WHERE u.kind = 'u' AND u.day = i.day AND u.event_name = i.event_name
                AND u.member = m.owner) AS owned) o
  LEFT JOIN LATERAL (
    SELECT 1 AS hit FROM analytics_events e
     WHERE NOT o.owned AND e.app_id = $1 AND e.event_name = i.event_name
       AND e.occurred_at >= i.day::timestamp AT TIME ZONE 'UTC'
       AND e.occurred_at < (i.day + 1)::timestamp AT TIME ZONE 'UTC'
       AND e.session_id = i.member
     LIMIT 1) r ON true
 WHERE i.kind = 's' AND r.hit IS NULL AND NOT EXISTS (
   SELECT 1 FROM sluice_left l
    WHERE l.day = i.day AND l.event_name = i.event_name AND l.session_id = i.member)";

/// The gone ids leave `summary_members`, and each (day, event name) loses the erased events and
/// the ids gone; rows left with no event go. Returns the user members removed. $1 the app.
const ERASED_APPLY: &str = "
WITH d AS (
    DELETE FROM summary_members m USING sluice_gone g
     WHERE m.app_id = $1 AND m.day = g.day AND m.event_name = g.event_name
       AND m.kind = g.kind AND m.member = g.member
    RETURNING m.day, m.event_name, m.kind
), c AS (
    SELECT day, event_name, count(*) FILTER (WHERE kind = 'u') AS u,
           count(*) FILTER (WHERE kind = 's') AS s
      FROM d GROUP BY 1, 2
), up AS (
    UPDATE daily_analytics_summary s
       SET events = s.events - e.events,
           unique_users = s.unique_users - coalesce(c.u, 0),
           unique_sessions = s.unique_sessions - coalesce(c.s, 0)
      FROM sluice_erased e LEFT JOIN c USING (day, event_name)
     WHERE s.app_id = $1 AND s.day = e.day AND s.event_name = e.event_name
    RETURNING 1
)
SELECT coalesce((SELECT sum(u) FROM c), 0)::bigint, (SELECT count(*) FROM up)";

pub async fn run(ctx: &JobCtx) -> Result<serde_json::Value, DbError> {
    // An erasure between its deletions and its summary adjusts the summary itself: a fold
    // recomputing one of its days meanwhile would take its events out twice. Readers add the
    // pending rows, so their answers stay exact while the fold waits.
    let erasing: bool = ctx
        .db
        .query_one(
            "look for an erasure deleting",
            "SELECT EXISTS (SELECT 1 FROM erasures \
             WHERE status = 'running' AND phase IN ('delete', 'summary'))",
            &[],
        )
        .await?
        .get(0);
    if erasing {
        return Ok(serde_json::json!({"deferred_for_erasure": true, "rows": 0}));
    }
    fold(&ctx.db, None).await
}

/// What an erasure's summary step needs of the fold.
#[derive(Debug, Clone, Copy)]
pub struct Erased<'a> {
    pub erasure_id: uuid::Uuid,
    pub app_id: &'a str,
}

/// Records the fold: the summary covers every event received before `$1`.
const RECORD_REFRESH: &str = "UPDATE view_refreshes \
    SET refreshed_at = clock_timestamp(), covers_before = $1 \
    WHERE view_name = 'daily_analytics_summary'";

/// One fold. With `erased`, in the same transaction and after the fold (so every event the
/// erasure deleted is counted in the summary, folded or not before): the erasure's events are
/// taken out of the summary, with its users' and sessions' ids that no remaining event of that
/// day and name carries, its `summary_erased` rows go, and the user members removed are added
/// to its `removed` counts. The caller holds the views job's lock.
pub async fn fold(db: &Db, erased: Option<Erased<'_>>) -> Result<serde_json::Value, DbError> {
    let mut client = db.get("views job").await?;
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
    let (pending, members, upserted, dirty) = fold_pending(&tx).await?;
    let erased_members = match erased {
        Some(e) => take_out(&tx, e).await?,
        None => 0,
    };
    tx.execute(RECORD_REFRESH, &[&started])
        .await
        .map_err(DbError::query("record refresh"))?;
    tx.commit().await.map_err(DbError::query("commit fold"))?;
    Ok(serde_json::json!({
        "view": "daily_analytics_summary",
        "pending_rows_folded": pending,
        "new_members": members,
        "summary_rows_upserted": upserted,
        "days_recomputed": dirty,
        "erased_user_members": erased_members,
        "rows": pending + members + upserted,
    }))
}

/// The fold proper: takes the pending rows and dirty days, recomputes the dirty days and folds
/// the rest. Returns the pending rows folded, new members, summary rows upserted and days
/// recomputed.
async fn fold_pending(
    tx: &tokio_postgres::Transaction<'_>,
) -> Result<(i64, i64, i64, i64), DbError> {
    // JIT compilation of these statements (their estimates span every partition) took seconds
    // for queries that run in milliseconds.
    tx.batch_execute("SET LOCAL statement_timeout = 0; SET LOCAL jit = off")
        .await
        .map_err(DbError::query("fold timeout"))?;
    tx.batch_execute(TAKE)
        .await
        .map_err(DbError::query("take pending summary rows"))?;
    tx.batch_execute(&format!("{RECOMPUTE}{SUMMARIZE_DAY_ROWS}"))
        .await
        .map_err(DbError::query("recompute dirty summary days"))?;
    tx.batch_execute(OWNERS)
        .await
        .map_err(DbError::query("merge pending session owners"))?;
    let row = tx
        .query_one(FOLD, &[])
        .await
        .map_err(DbError::query("fold pending summary rows"))?;
    Ok((row.get(0), row.get(1), row.get(2), row.get(3)))
}

/// The temporary tables of an erasure's part of the fold.
const ERASED_TABLES: &str = "
CREATE TEMP TABLE sluice_erased (day date, event_name text, events bigint) ON COMMIT DROP;
CREATE TEMP TABLE sluice_erased_ids (day date, event_name text, kind \"char\", member text)
  ON COMMIT DROP;
CREATE TEMP TABLE sluice_gone (day date, event_name text, kind \"char\", member text)
  ON COMMIT DROP;
CREATE TEMP TABLE sluice_left (day date, event_name text, user_id text, session_id text)
  ON COMMIT DROP;";

/// The erasure's part of [`fold`]; returns the user members it removed.
async fn take_out(tx: &tokio_postgres::Transaction<'_>, e: Erased<'_>) -> Result<i64, DbError> {
    find_erased(tx, e).await?;
    let (id, app) = (&e.erasure_id, &e.app_id);
    let row = tx
        .query_one(ERASED_APPLY, &[app])
        .await
        .map_err(DbError::query("take the erasure out of the summary"))?;
    let users: i64 = row.get(0);
    tx.execute(
        "DELETE FROM daily_analytics_summary s USING sluice_erased e \
         WHERE s.app_id = $1 AND s.day = e.day AND s.event_name = e.event_name AND s.events <= 0",
        &[app],
    )
    .await
    .map_err(DbError::query("drop emptied summary rows"))?;
    tx.execute("DELETE FROM summary_erased WHERE erasure_id = $1", &[id])
        .await
        .map_err(DbError::query("forget the erasure's events"))?;
    tx.execute(
        "UPDATE erasures SET removed = removed || jsonb_build_object('summary_members', \
           coalesce((removed ->> 'summary_members')::bigint, 0) + $2::bigint) \
         WHERE erasure_id = $1",
        &[id, &users],
    )
    .await
    .map_err(DbError::query("count the erasure's summary members"))?;
    Ok(users)
}

/// Fills the temporary tables: the erasure's events and ids per day and name, the erased users'
/// events left, and the ids no remaining event carries (each analyzed for the next statement).
async fn find_erased(tx: &tokio_postgres::Transaction<'_>, e: Erased<'_>) -> Result<(), DbError> {
    let (id, app) = (&e.erasure_id, &e.app_id);
    tx.batch_execute(ERASED_TABLES)
        .await
        .map_err(DbError::query("prepare the erasure's summary"))?;
    tx.execute(ERASED_TAKE, &[id, app])
        .await
        .map_err(DbError::query("take the erasure's events"))?;
    tx.execute(ERASED_IDS, &[id, app])
        .await
        .map_err(DbError::query("take the erasure's ids"))?;
    tx.batch_execute("ANALYZE sluice_erased; ANALYZE sluice_erased_ids")
        .await
        .map_err(DbError::query("analyze the erasure's ids"))?;
    tx.execute(ERASED_LEFT, &[app])
        .await
        .map_err(DbError::query("find the erased users' events left"))?;
    tx.batch_execute("ANALYZE sluice_left")
        .await
        .map_err(DbError::query("analyze the erased users' events left"))?;
    tx.execute(ERASED_GONE, &[app])
        .await
        .map_err(DbError::query("find the erasure's gone ids"))?;
    tx.batch_execute("ANALYZE sluice_gone")
        .await
        .map_err(DbError::query("analyze the erasure's gone ids"))?;
    Ok(())
}
