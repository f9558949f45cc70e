//! The incrementally kept `daily_analytics_summary` equals a full recomputation from the
//! partitions after any mix of inserts (late events for old days included, several statements
//! and folds interleaved), quarantine moves, deletes and retention drops; so do the sessions'
//! owners (migration 0008).

use std::time::Duration;

use maintenance_worker::clock::Clock;
use maintenance_worker::jobs::{self, Job, JobCtx};
use shared::db::Pools;
use testkit::TestDb;

type Row = (String, chrono::NaiveDate, String, i64, i64, i64);

fn ctx(db: &TestDb, retention_months: u32) -> JobCtx {
    JobCtx {
        db: Pools::new(&db.config()).expect("pools").write,
        clock: Clock::System,
        retention_months,
        premake_months: 6,
        dedupe_window: Duration::from_secs(24 * 3600),
    }
}

async fn rows(c: &tokio_postgres::Client, sql: &str) -> Vec<Row> {
    c.query(sql, &[])
        .await
        .expect("query")
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4), r.get(5)))
        .collect()
}

const SUMMARY: &str = "SELECT app_id, day, event_name, events, unique_users, unique_sessions \
                       FROM daily_analytics_summary ORDER BY 1, 2, 3";
const FULL: &str = "SELECT app_id, (occurred_at AT TIME ZONE 'UTC')::date, event_name, count(*), \
                    count(DISTINCT user_id), count(DISTINCT session_id) \
                    FROM analytics_events GROUP BY 1, 2, 3 ORDER BY 1, 2, 3";

type Owner = (String, chrono::NaiveDate, String, String, Option<String>);

async fn owners(c: &tokio_postgres::Client, sql: &str) -> Vec<Owner> {
    c.query(sql, &[])
        .await
        .expect("query")
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4)))
        .collect()
}

const OWNERS: &str = "SELECT app_id, day, event_name, member, owner FROM summary_members \
                      WHERE kind = 's' ORDER BY 1, 2, 3, 4";
const FULL_OWNERS: &str = "SELECT app_id, (occurred_at AT TIME ZONE 'UTC')::date, event_name, \
                           session_id, CASE WHEN count(user_id) = count(*) \
                           AND min(user_id) = max(user_id) THEN min(user_id) END \
                           FROM analytics_events WHERE session_id IS NOT NULL \
                           GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4";

/// The summary, and every session's owner, against a recomputation from the events.
async fn assert_exact(c: &tokio_postgres::Client, after: &str) {
    assert_eq!(rows(c, SUMMARY).await, rows(c, FULL).await, "{after}");
    let (kept, full) = (owners(c, OWNERS).await, owners(c, FULL_OWNERS).await);
    assert!(
        kept.iter().any(|o| o.4.is_some()),
        "{after}: some sessions have an owner"
    );
    assert_eq!(kept, full, "{after}: owners");
}

/// `n` events over the last `days` days, with ids drawn from small pools (so later statements
/// repeat ids already counted) and some NULL ids; `seed` varies the draw. One session in five
/// is its user's own (`o` and the user's number), the others are drawn apart from the users.
fn insert(n: u32, days: u32, seed: u32) -> String {
    format!(
        "INSERT INTO analytics_events (event_id, app_id, event_name, occurred_at, received_at, user_id, session_id) \
         SELECT gen_random_uuid(), 'app' || (h % 3), 'e' || (h % 4), \
                now() - (h % {days}) * interval '1 day' - (h % 997) * interval '1 minute', now(), \
                CASE WHEN h % 11 = 0 THEN NULL ELSE 'u' || (h % 37) END, \
                CASE WHEN h % 13 = 0 THEN NULL WHEN h % 5 = 0 THEN 'o' || (h % 37) \
                     ELSE 's' || (h % 53) END \
         FROM (SELECT abs(hashint4(i * 7919 + {seed})) AS h FROM generate_series(1, {n}) i) t"
    )
}

#[tokio::test]
async fn the_summary_equals_a_full_recomputation_through_every_change() {
    let db = TestDb::migrated().await;
    let c = db.client().await;
    let fold = |months| {
        let ctx = ctx(&db, months);
        async move { jobs::run(Job::Views, &ctx).await.expect("fold") }
    };
    // Inserts in several statements, folded between some of them: late events for old days
    // arrive after those days were folded.
    c.batch_execute(&insert(2000, 70, 1)).await.expect("insert");
    fold(12).await;
    assert_exact(&c, "after one fold").await;
    for seed in 2..6 {
        c.batch_execute(&insert(500, 70, seed))
            .await
            .expect("insert");
        c.batch_execute(&insert(300, 3, seed * 100))
            .await
            .expect("insert");
    }
    let r = fold(12).await;
    assert!(r.detail["pending_rows_folded"].as_i64() > Some(0));
    assert_exact(&c, "late events").await;

    // A quarantine move (an INSERT ... SELECT from the quarantine) is counted like any insert.
    c.batch_execute(
        "INSERT INTO events_quarantine (event_id, app_id, event_name, occurred_at, received_at, user_id, session_id) \
         SELECT gen_random_uuid(), 'app1', 'moved', now() - interval '1 day', now(), 'u' || i, 's1' \
         FROM generate_series(1, 25) i",
    )
    .await
    .expect("quarantine");
    let r = jobs::run(Job::Partitions, &ctx(&db, 12))
        .await
        .expect("partitions");
    assert_eq!(r.detail["quarantine_moved"], 25);
    fold(12).await;
    assert_exact(&c, "quarantine move").await;

    // Deletes (and an update) mark their days, which the fold recomputes.
    c.batch_execute(
        "DELETE FROM analytics_events WHERE user_id IN ('u3', 'u5') OR event_name = 'e2' AND session_id = 's7'; \
         UPDATE analytics_events SET user_id = 'u9' WHERE user_id = 'u10'",
    )
    .await
    .expect("delete");
    c.batch_execute(&insert(400, 70, 77)).await.expect("insert");
    let r = fold(12).await;
    assert!(r.detail["days_recomputed"].as_i64() > Some(0));
    assert_exact(&c, "deletes").await;

    // Retention drops the months before last month, and their summary with them.
    let before = rows(&c, SUMMARY).await.len();
    let r = jobs::run(Job::Retention, &ctx(&db, 1))
        .await
        .expect("retention");
    assert!(!r.detail["dropped"].as_array().expect("dropped").is_empty());
    assert!(r.detail["rows"].as_u64() > Some(0));
    c.batch_execute(&insert(100, 20, 99)).await.expect("insert");
    fold(1).await;
    let after = rows(&c, SUMMARY).await;
    assert!(after.len() < before, "the dropped months' rows are gone");
    assert_exact(&c, "retention").await;
    let left: i64 = c
        .query_one("SELECT count(*) FROM summary_pending", &[])
        .await
        .expect("pending")
        .get(0);
    assert_eq!(left, 0, "every pending row was folded");
}
