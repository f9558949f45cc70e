//! The dedupe-prune job: the window measured from the oldest event still queued.

use chrono::{Duration as ChronoDuration, Utc};
use maintenance_worker::clock::Clock;
use maintenance_worker::jobs::{self, Job};
use testkit::TestDb;

use super::ctx;

/// The dedupe-prune job measures the window from the oldest event still queued (the pipelines'
/// low-water marks), not from now: with a 30-hour backlog, keys up to 30 h + the window old stay,
/// and the ledger row of an entry committed but still in its stream stays however old it is.
#[tokio::test]
async fn dedupe_prune_keeps_what_a_backlog_may_still_need() {
    use shared::queue::ledger_key;
    let db = TestDb::migrated().await;
    let now = Utc::now();
    let h = |n: i64| now - ChronoDuration::hours(n);
    let ms = |t: chrono::DateTime<Utc>| t.timestamp_millis() as u64;
    let client = db.client().await;
    client
        .execute(
            "INSERT INTO stream_pipelines (pipeline_id, stream_prefix, queue_low_water) \
             VALUES (0, 'a', $1), (1, 'b', NULL)",
            &[&h(30)],
        )
        .await
        .expect("pipelines");
    for (age, name) in [(57, "old"), (50, "in_backlog_window"), (0, "new")] {
        client
            .execute(
                "INSERT INTO event_dedupe (event_id, app_id, first_seen) VALUES (gen_random_uuid(), $1, $2)",
                &[&name, &h(age)],
            )
            .await
            .expect("key");
    }
    let ledger = [
        (ledger_key(0, 0, ms(h(31)), 0), h(31)), // acknowledged long ago: goes
        (ledger_key(0, 1, ms(h(30)), 0), h(30)), // committed, still in its stream: stays
        (ledger_key(1, 0, ms(h(40)), 0), h(40)), // pipeline b, below its mark once it has one
    ];
    for (key, at) in &ledger {
        client
            .execute(
                "INSERT INTO entry_ledger (entry_key, first_seen) VALUES ($1, $2)",
                &[&key.expect("key"), at],
            )
            .await
            .expect("ledger");
    }
    let ctx = ctx(&db, Clock::manual(now));
    let r = jobs::run(Job::Dedupe, &ctx).await.expect("run");
    assert_eq!(r.detail["waiting_for_low_water"], true, "{}", r.detail);
    assert_eq!(count(&db, "SELECT count(*) FROM event_dedupe").await, 3);
    client
        .execute(
            "UPDATE stream_pipelines SET queue_low_water = $1 WHERE pipeline_id = 1",
            &[&now],
        )
        .await
        .expect("mark");
    let r = jobs::run(Job::Dedupe, &ctx).await.expect("run");
    assert_eq!(r.detail["dedupe_keys_pruned"], 1, "{}", r.detail);
    assert_eq!(r.detail["ledger_entries_pruned"], 2, "{}", r.detail);
    let left: Vec<String> = client
        .query("SELECT app_id FROM event_dedupe ORDER BY first_seen", &[])
        .await
        .expect("keys")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(left, ["in_backlog_window", "new"]);
    let kept: Vec<uuid::Uuid> = client
        .query("SELECT entry_key FROM entry_ledger", &[])
        .await
        .expect("ledger")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(kept, vec![ledger[1].0.expect("key")]);
}

async fn count(db: &TestDb, sql: &str) -> i64 {
    db.client()
        .await
        .query_one(sql, &[])
        .await
        .expect("count")
        .get(0)
}
