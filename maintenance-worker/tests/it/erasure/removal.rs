//! What a request removes: the user's rows in every place (events, quarantine, dead letters,
//! summary) and nobody else's, and zeros for users without rows.

use chrono::Utc;
use maintenance_worker::erasure::{self, State};
use maintenance_worker::jobs::{self, Job};
use serde_json::json;
use shared::schema::partitions::Month;
use testkit::TestDb;
use tokio_postgres::Client;

use super::{
    count, ctx, dead_letter, event, job_ctx, mid_month, quarantined, queued, raw_dead_letter,
    removed, request, run_to_end, setup,
};

/// (day, unique users) of `app`'s `view` rows in the summary.
async fn unique_users(c: &Client, app: &str) -> Vec<(chrono::NaiveDate, i64)> {
    c.query(
        "SELECT day, unique_users FROM daily_analytics_summary \
         WHERE app_id = $1 AND event_name = 'view' ORDER BY day",
        &[&app],
    )
    .await
    .expect("summary")
    .iter()
    .map(|r| (r.get(0), r.get(1)))
    .collect()
}

#[tokio::test]
async fn a_user_is_erased_everywhere_and_nobody_else() {
    let db = TestDb::migrated().await;
    let c = db.client().await;
    setup(&c).await;
    let days: Vec<_> = [-2, -1, 0].map(mid_month).to_vec();
    for &at in &days {
        event(&c, "app", "u1", "view", at).await;
        event(&c, "app", "u1", "click", at).await;
        event(&c, "app", "u2", "view", at).await;
        event(&c, "other", "u1", "view", at).await;
    }
    let far = Month::of(Utc::now()).plus(9).start() + chrono::Duration::days(2);
    quarantined(&c, "app", "u1", far).await;
    quarantined(&c, "app", "u2", far).await;
    quarantined(&c, "other", "u1", far).await;
    let entry = |users: &[&str]| {
        let events: Vec<_> = users.iter().map(|u| queued("app", u)).collect();
        shared::queue::encode(&events).expect("encode")
    };
    let theirs = [
        dead_letter(&c, "app", "u1").await,
        raw_dead_letter(&c, None, &entry(&["u2", "u1"])).await,
    ];
    let kept = [
        dead_letter(&c, "app", "u2").await,
        dead_letter(&c, "other", "u1").await,
        raw_dead_letter(&c, None, b"\xc1 not an entry").await,
        raw_dead_letter(&c, None, &entry(&["u2", "u3"])).await,
    ];
    jobs::run(Job::Views, &job_ctx(&db)).await.expect("fold");
    let members = count(
        &c,
        "SELECT count(*) FROM summary_members WHERE app_id = 'app' AND kind = 'u' AND member = 'u1'",
    )
    .await;
    assert_eq!(members, 6, "two event names on three days");
    let before = unique_users(&c, "app").await;
    let other_before = unique_users(&c, "other").await;
    assert_eq!(before.iter().map(|d| d.1).collect::<Vec<_>>(), [2, 2, 2]);

    let id = request(&c, "app", &["u1"]).await;
    let p = run_to_end(&ctx(&db)).await;
    assert_eq!(p.erasure_id, id);
    assert_eq!(p.state, State::Done);

    for sql in [
        "SELECT count(*) FROM analytics_events WHERE app_id = 'app' AND user_id = 'u1'",
        "SELECT count(*) FROM events_quarantine WHERE app_id = 'app' AND user_id = 'u1'",
        "SELECT count(*) FROM summary_members WHERE app_id = 'app' AND member = 'u1'",
        "SELECT count(*) FROM summary_pending",
    ] {
        assert_eq!(count(&c, sql).await, 0, "{sql}");
    }
    for (sql, n) in [
        (
            "SELECT count(*) FROM analytics_events WHERE app_id = 'app' AND user_id = 'u2'",
            3,
        ),
        (
            "SELECT count(*) FROM analytics_events WHERE app_id = 'other' AND user_id = 'u1'",
            3,
        ),
        ("SELECT count(*) FROM events_quarantine", 2),
        (
            "SELECT count(*) FROM summary_members WHERE app_id = 'other' AND member = 'u1'",
            3,
        ),
    ] {
        assert_eq!(count(&c, sql).await, n, "{sql}");
    }
    let left: Vec<i64> = c
        .query("SELECT id FROM dead_letters ORDER BY id", &[])
        .await
        .expect("dead letters")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(left, kept, "only dead letters {theirs:?} went");
    let after = unique_users(&c, "app").await;
    let want: Vec<_> = before.iter().map(|(d, n)| (*d, n - 1)).collect();
    assert_eq!(after, want, "one user fewer on each day");
    assert_eq!(unique_users(&c, "other").await, other_before);
    assert_eq!(
        removed(&c, id).await,
        json!({"events": 6, "quarantine": 1, "dead_letters": 2, "summary_members": 6})
    );
    let row = c
        .query_one(
            "SELECT status, phase, finished_at IS NOT NULL, \
             (SELECT count(*) FROM erasure_users WHERE erasure_id = $1 AND user_id IS NOT NULL), \
             (SELECT erasures_done FROM privacy_epochs WHERE app_id = 'app') \
             FROM erasures WHERE erasure_id = $1",
            &[&id],
        )
        .await
        .expect("request");
    let got: (String, Option<String>, bool, i64, i64) =
        (row.get(0), row.get(1), row.get(2), row.get(3), row.get(4));
    assert_eq!(got, ("done".into(), None, true, 0, 1));
    assert!(erasure::tick(&ctx(&db)).await.expect("tick").is_none());
}

#[tokio::test]
async fn a_user_without_rows_completes_with_zeros() {
    let db = TestDb::migrated().await;
    let c = db.client().await;
    setup(&c).await;
    event(&c, "app", "someone", "view", Utc::now()).await;
    let id = request(&c, "app", &["nobody", "ghost"]).await;
    assert_eq!(run_to_end(&ctx(&db)).await.state, State::Done);
    assert_eq!(
        removed(&c, id).await,
        json!({"events": 0, "quarantine": 0, "dead_letters": 0, "summary_members": 0})
    );
    assert_eq!(count(&c, "SELECT count(*) FROM analytics_events").await, 1);
}
