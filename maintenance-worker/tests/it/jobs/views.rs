//! The views job: the summary refresh is not blocked by a reader, nor blocks one.

use std::time::Duration;

use maintenance_worker::clock::Clock;
use maintenance_worker::jobs::{self, Job};
use testkit::TestDb;

use super::ctx;

#[tokio::test]
async fn the_view_refresh_runs_while_a_reader_holds_the_view() {
    let db = TestDb::migrated().await;
    let client = db.client().await;
    client
        .batch_execute(
            "INSERT INTO analytics_events (event_id, app_id, event_name, occurred_at, received_at, user_id, session_id) \
             SELECT gen_random_uuid(), 'a', 'e' || (i % 3), now() - interval '1 day', now(), 'u' || (i % 5), 's' || (i % 7) \
             FROM generate_series(1, 1000) i",
        )
        .await
        .expect("rows");
    let reader = db.client().await;
    reader
        .batch_execute(
            "BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT count(*) FROM daily_analytics_summary",
        )
        .await
        .expect("reader holds the view");
    let ctx = ctx(&db, Clock::System);
    let r = tokio::time::timeout(Duration::from_secs(20), jobs::run(Job::Views, &ctx))
        .await
        .expect("the refresh is not blocked by the reader")
        .expect("refresh");
    assert_eq!(r.detail["summary_rows_upserted"], 3);
    assert_eq!(r.detail["new_members"], 3 * 5 + 3 * 7);
    // A reader during the refresh is not blocked either: its read answers at once.
    let started = std::time::Instant::now();
    let n: i64 = reader
        .query_one("SELECT count(*) FROM daily_analytics_summary", &[])
        .await
        .expect("read")
        .get(0);
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(n, 0, "the reader's snapshot predates the refresh");
    reader.batch_execute("COMMIT").await.expect("commit");
    let row = client
        .query_one(
            "SELECT sum(events)::bigint, max(unique_users), max(unique_sessions) FROM daily_analytics_summary",
            &[],
        )
        .await
        .expect("summary");
    assert_eq!(row.get::<_, i64>(0), 1000);
    assert_eq!(row.get::<_, i64>(1), 5);
    assert_eq!(row.get::<_, i64>(2), 7);
}
