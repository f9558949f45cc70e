//! Sessions in the summary (migration 0008): their owners kept through the trigger, the fold
//! and a dirty day, and a session leaving the unique counts only where no event carries it.

use chrono::{DateTime, Utc};
use maintenance_worker::jobs::{self, Job};
use testkit::TestDb;
use tokio_postgres::Client;

use super::{job_ctx, mid_month, request, setup};

/// One event of `app` on `at` named `view`, with any user and session.
async fn session_event(c: &Client, user: Option<&str>, session: &str, at: DateTime<Utc>) {
    c.execute(
        "INSERT INTO analytics_events (event_id, app_id, event_name, occurred_at, received_at, user_id, session_id) \
         VALUES (gen_random_uuid(), 'app', 'view', $1, now(), $2, $3)",
        &[&at, &user, &session],
    )
    .await
    .expect("event");
}

/// (session, owner) of `app`'s `view` members on `day`.
async fn owners(c: &Client, at: DateTime<Utc>) -> Vec<(String, Option<String>)> {
    c.query(
        "SELECT member, owner FROM summary_members WHERE app_id = 'app' AND event_name = 'view' \
         AND kind = 's' AND day = ($1::timestamptz AT TIME ZONE 'UTC')::date ORDER BY member",
        &[&at],
    )
    .await
    .expect("owners")
    .iter()
    .map(|r| (r.get(0), r.get(1)))
    .collect()
}

async fn unique_sessions(c: &Client, at: DateTime<Utc>) -> i64 {
    c.query_one(
        "SELECT unique_sessions FROM daily_analytics_summary WHERE app_id = 'app' \
         AND event_name = 'view' AND day = ($1::timestamptz AT TIME ZONE 'UTC')::date",
        &[&at],
    )
    .await
    .expect("summary")
    .get(0)
}

/// Migration 0008: a session's owner is kept through the trigger, the fold and the
/// recomputation of a dirty day; an erasure takes a session out of the unique counts exactly
/// where no remaining event of that day and name carries it, whether it had an owner (proved
/// by the user index) or not (proved by reading the day).
#[tokio::test]
async fn sessions_leave_the_summary_only_where_no_remaining_event_carries_them() {
    let db = TestDb::migrated().await;
    let c = db.client().await;
    setup(&c).await;
    let fold = || async { jobs::run(Job::Views, &job_ctx(&db)).await.expect("fold") };
    let at = mid_month(0);
    let u1 = Some("u1");
    // Only u1's events, in two statements folded together.
    session_event(&c, u1, "s-own", at).await;
    session_event(&c, u1, "s-own", at).await;
    // u1 then an anonymous event, in two statements of one fold.
    session_event(&c, u1, "s-anon", at).await;
    session_event(&c, None, "s-anon", at).await;
    // u1 and u2 in one statement: the trigger sees both.
    c.execute(
        "INSERT INTO analytics_events (event_id, app_id, event_name, occurred_at, received_at, user_id, session_id) \
         SELECT gen_random_uuid(), 'app', 'view', $1, now(), u, 's-shared' FROM unnest(ARRAY['u1', 'u2']) u",
        &[&at],
    )
    .await
    .expect("shared");
    // u1, and in a later fold u3: the member already stored loses its owner.
    session_event(&c, u1, "s-twofolds", at).await;
    // u1's only, but stored before owners were kept (as an upgraded database has them).
    session_event(&c, u1, "s-legacy", at).await;
    // u1's only, and u1 sends another event of it after the deletions.
    session_event(&c, u1, "s-late", at).await;
    fold().await;
    session_event(&c, Some("u3"), "s-twofolds", at).await;
    fold().await;
    c.execute(
        "UPDATE summary_members SET owner = NULL WHERE member = 's-legacy'",
        &[],
    )
    .await
    .expect("legacy");
    let u1 = Some("u1".to_owned());
    let want = vec![
        ("s-anon".to_owned(), None),
        ("s-late".to_owned(), u1.clone()),
        ("s-legacy".to_owned(), None),
        ("s-own".to_owned(), u1.clone()),
        ("s-shared".to_owned(), None),
        ("s-twofolds".to_owned(), None),
    ];
    assert_eq!(owners(&c, at).await, want);

    // A dirty day is recomputed from its events, owners included.
    let other_day = mid_month(-1);
    session_event(&c, Some("u1"), "d-own", other_day).await;
    session_event(&c, Some("u1"), "d-mixed", other_day).await;
    session_event(&c, Some("u2"), "d-mixed", other_day).await;
    fold().await;
    c.execute(
        "INSERT INTO summary_dirty VALUES ('app', ($1::timestamptz AT TIME ZONE 'UTC')::date)",
        &[&other_day],
    )
    .await
    .expect("dirty");
    c.execute(
        "UPDATE summary_members SET owner = NULL WHERE member = 'd-own'",
        &[],
    )
    .await
    .expect("forget");
    fold().await;
    assert_eq!(
        owners(&c, other_day).await,
        vec![
            ("d-mixed".to_owned(), None),
            ("d-own".to_owned(), u1.clone())
        ]
    );

    // The erasure's deletions, then u1's late event, then its summary step.
    let id = request(&c, "app", &["u1"]).await;
    let before = unique_sessions(&c, at).await;
    assert_eq!(before, 6);
    let mut client = db.client().await;
    let tx = client.transaction().await.expect("begin");
    tx.execute(
        "SELECT set_config('sluice.erasure_id', $1, true)",
        &[&id.to_string()],
    )
    .await
    .expect("guc");
    let deleted = tx
        .execute(
            "DELETE FROM analytics_events WHERE app_id = 'app' AND user_id = 'u1' \
             AND occurred_at = $1",
            &[&at],
        )
        .await
        .expect("delete");
    assert_eq!(deleted, 7);
    tx.commit().await.expect("commit");
    session_event(&c, Some("u1"), "s-late", at).await;
    let db_pool = job_ctx(&db).db;
    maintenance_worker::jobs::views::fold(
        &db_pool,
        Some(maintenance_worker::jobs::views::Erased {
            erasure_id: id,
            app_id: "app",
        }),
    )
    .await
    .expect("summary step");
    // s-own and s-legacy had no event left; the others keep one (u2's, u3's, the anonymous
    // one, u1's late one).
    let left: Vec<String> = owners(&c, at).await.into_iter().map(|o| o.0).collect();
    assert_eq!(left, ["s-anon", "s-late", "s-shared", "s-twofolds"]);
    assert_eq!(unique_sessions(&c, at).await, before - 2);
    let recount: i64 = c
        .query_one(
            "SELECT count(DISTINCT session_id) FROM analytics_events WHERE app_id = 'app' \
             AND event_name = 'view' AND occurred_at = $1",
            &[&at],
        )
        .await
        .expect("recount")
        .get(0);
    assert_eq!(recount, before - 2, "the summary agrees with the events");
}
