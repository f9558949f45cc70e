//! The partitions and retention jobs: partitions made ahead, quarantined rows moved in once
//! their partition exists, the hot index on the recent partitions, old partitions dropped, and
//! the user index built on partitions that predate it.

use chrono::{Duration as ChronoDuration, Utc};
use maintenance_worker::clock::Clock;
use maintenance_worker::jobs::{self, Job};
use shared::schema::partitions::{self, Month};
use testkit::TestDb;

use super::{ctx, months};

#[tokio::test]
async fn partitions_appear_ahead_as_months_pass() {
    let db = TestDb::migrated().await;
    let now = Utc::now();
    let clock = Clock::manual(now);
    let ctx = ctx(&db, clock.clone());
    let r = jobs::run(Job::Partitions, &ctx).await.expect("run");
    assert_eq!(
        r.detail["created"].as_array().map(Vec::len),
        Some(0),
        "the migration made them"
    );
    assert_eq!(r.detail["months_ahead"], 6);
    let later = now
        .checked_add_months(chrono::Months::new(3))
        .expect("date");
    clock.set(later);
    let r = jobs::run(Job::Partitions, &ctx).await.expect("run");
    let created: Vec<String> = r.detail["created"]
        .as_array()
        .expect("created")
        .iter()
        .map(|v| v.as_str().expect("name").to_owned())
        .collect();
    let want: Vec<String> = (7..=9)
        .map(|n| Month::of(now).plus(n).partition_name())
        .collect();
    assert_eq!(created, want);
    assert_eq!(r.detail["months_ahead"], 6);
    assert!(months(&db).await.contains(&Month::of(later).plus(6)));
}

#[tokio::test]
async fn a_quarantined_row_moves_to_its_partition_once_it_exists_and_expired_ones_are_discarded() {
    let db = TestDb::migrated().await;
    let now = Utc::now();
    let client = db.client().await;
    let far = Month::of(now).plus(8).start() + ChronoDuration::days(3);
    let ancient = now - ChronoDuration::days(800);
    for (id, at) in [
        ("00000000-0000-7000-8000-000000000001", far),
        ("00000000-0000-7000-8000-000000000002", ancient),
    ] {
        client
            .execute(
                "INSERT INTO events_quarantine (event_id, app_id, event_name, occurred_at, received_at) \
                 VALUES ($1::text::uuid, 'a', 'e', $2, now())",
                &[&id, &at],
            )
            .await
            .expect("quarantine");
    }
    let clock = Clock::manual(now);
    let ctx = ctx(&db, clock.clone());
    let r = jobs::run(Job::Partitions, &ctx).await.expect("run");
    assert_eq!(r.detail["quarantine_moved"], 0, "no partition for it yet");
    assert_eq!(r.detail["quarantine_discarded"], 1, "past retention");
    clock.set(
        now.checked_add_months(chrono::Months::new(2))
            .expect("date"),
    );
    let r = jobs::run(Job::Partitions, &ctx).await.expect("run");
    assert_eq!(r.detail["quarantine_moved"], 1);
    let n: i64 = client
        .query_one(
            "SELECT count(*) FROM analytics_events WHERE occurred_at = $1",
            &[&far],
        )
        .await
        .expect("count")
        .get(0);
    assert_eq!(n, 1);
    let left: i64 = client
        .query_one("SELECT count(*) FROM events_quarantine", &[])
        .await
        .expect("c")
        .get(0);
    assert_eq!(left, 0);
}

#[tokio::test]
async fn the_hot_index_stays_on_the_recent_partitions_only() {
    let db = TestDb::migrated().await;
    let now = Utc::now();
    let clock = Clock::manual(now);
    let ctx = ctx(&db, clock.clone());
    jobs::run(Job::Partitions, &ctx).await.expect("run");
    let hot = |db: &TestDb| {
        let db = db.name.clone();
        async move {
            let c = testkit::connect(&db).await;
            let mut v: Vec<String> = c
                .query(
                    "SELECT relname::text FROM pg_class WHERE relname LIKE '%_hot_idx'",
                    &[],
                )
                .await
                .expect("list")
                .iter()
                .map(|r| r.get(0))
                .collect();
            v.sort();
            v
        }
    };
    let m = Month::of(now);
    let expect = |a: Month, b: Month| {
        vec![
            format!("{}_hot_idx", a.partition_name()),
            format!("{}_hot_idx", b.partition_name()),
        ]
    };
    assert_eq!(hot(&db).await, expect(m.plus(-1), m));
    clock.set(m.plus(1).start() + ChronoDuration::days(1));
    jobs::run(Job::Partitions, &ctx).await.expect("run");
    assert_eq!(hot(&db).await, expect(m, m.plus(1)));
}

#[tokio::test]
async fn retention_drops_exactly_the_partitions_past_the_window() {
    let db = TestDb::migrated().await;
    let now = Utc::now();
    let before = months(&db).await;
    let clock = Clock::manual(now);
    let ctx = ctx(&db, clock.clone());
    let r = jobs::run(Job::Retention, &ctx).await.expect("run");
    assert_eq!(
        r.detail["dropped"].as_array().map(Vec::len),
        Some(0),
        "nothing is past the window yet"
    );
    let later = now
        .checked_add_months(chrono::Months::new(2))
        .expect("date");
    clock.set(later);
    let r = jobs::run(Job::Retention, &ctx).await.expect("run");
    let floor = partitions::retention_floor(later, 12);
    let want: Vec<String> = before
        .iter()
        .filter(|m| m.plus(1).start() <= floor)
        .map(|m| m.partition_name())
        .collect();
    assert_eq!(want.len(), 2);
    let dropped: Vec<String> = r.detail["dropped"]
        .as_array()
        .expect("dropped")
        .iter()
        .map(|v| v.as_str().expect("s").to_owned())
        .collect();
    assert_eq!(dropped, want);
    let after = months(&db).await;
    assert_eq!(after.len(), before.len() - 2);
    assert!(after.iter().all(|m| m.plus(1).start() > floor));
    let gone: i64 = db
        .client()
        .await
        .query_one(
            "SELECT count(*) FROM pg_class WHERE relname = ANY($1)",
            &[&want],
        )
        .await
        .expect("count")
        .get(0);
    assert_eq!(gone, 0, "detached partitions are dropped, not left behind");
}

/// An installation upgraded to migration 7 has partitions without the user index (the migration
/// creates it on the parent only): the partitions job builds it on each and attaches it, once.
#[tokio::test]
async fn the_partitions_job_builds_the_user_index_on_partitions_that_predate_it() {
    let db = TestDb::migrated().await;
    let ctx = ctx(&db, Clock::System);
    let client = db.client().await;
    client
        .batch_execute(
            "DROP INDEX analytics_events_user_idx; \
             CREATE INDEX analytics_events_user_idx ON ONLY analytics_events \
               (hashtextextended(app_id || chr(31) || user_id, 0)) WHERE user_id IS NOT NULL",
        )
        .await
        .expect("an upgraded installation's state");
    let state = || async {
        let valid: bool = client
            .query_one(
                "SELECT indisvalid FROM pg_index WHERE indexrelid = 'analytics_events_user_idx'::regclass",
                &[],
            )
            .await
            .expect("parent")
            .get(0);
        let attached: i64 = client
            .query_one(
                "SELECT count(*) FROM pg_inherits h JOIN pg_index x ON x.indexrelid = h.inhrelid \
                 WHERE h.inhparent = 'analytics_events_user_idx'::regclass AND x.indisvalid",
                &[],
            )
            .await
            .expect("children")
            .get(0);
        (valid, attached)
    };
    let parts = months(&db).await.len() as i64;
    assert!(parts > 1);
    assert_eq!(state().await, (false, 0));
    let r = jobs::run(Job::Partitions, &ctx).await.expect("run");
    assert_eq!(
        r.detail["user_index_added"].as_array().map(Vec::len),
        Some(parts as usize)
    );
    assert_eq!(state().await, (true, parts));
    let r = jobs::run(Job::Partitions, &ctx).await.expect("run");
    assert_eq!(
        r.detail["user_index_added"].as_array().map(Vec::len),
        Some(0)
    );
    // A partition made from now on carries it from the start.
    let plan: String = client
        .query(
            "EXPLAIN SELECT 1 FROM analytics_events WHERE occurred_at >= now() \
             AND occurred_at < now() + interval '1 day' AND user_id IS NOT NULL \
             AND hashtextextended(app_id || chr(31) || user_id, 0) = 42",
            &[],
        )
        .await
        .expect("explain")
        .iter()
        .map(|r| r.get::<_, String>(0))
        .collect::<Vec<_>>()
        .join("\n");
    assert!(plan.contains("_user_idx"), "{plan}");
}
