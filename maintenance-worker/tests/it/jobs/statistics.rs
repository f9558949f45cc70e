//! The analyze and vacuum jobs, and the lock that keeps a job from running twice at once.

use std::time::Duration;

use chrono::Utc;
use maintenance_worker::clock::Clock;
use maintenance_worker::jobs::{self, Job};
use shared::schema::partitions::Month;
use testkit::TestDb;

use super::{ctx, months};

async fn parent_stats(c: &tokio_postgres::Client) -> i64 {
    c.query_one(
        "SELECT count(*) FROM pg_stats WHERE tablename = 'analytics_events'",
        &[],
    )
    .await
    .expect("stats")
    .get(0)
}

/// Waits until the cumulative statistics show what `check` wants of `table` (they are flushed
/// asynchronously, at most a second after the writing session asks).
async fn wait_for_stats(c: &tokio_postgres::Client, table: &str, check: &str) {
    let q = format!("SELECT {check} FROM pg_stat_user_tables WHERE relname = $1");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let row = c.query_opt(&q, &[&table]).await.expect("pg_stat");
        if row.is_some_and(|r| r.get::<_, bool>(0)) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{table}: {check} never held"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn insert(c: &tokio_postgres::Client, rows: i64, month_back: u32) {
    c.batch_execute(&format!(
        "INSERT INTO analytics_events (event_id, app_id, event_name, occurred_at, received_at) \
         SELECT gen_random_uuid(), 'a', 'e', now() - interval '{month_back} months', now() \
           FROM generate_series(1, {rows}); \
         SELECT pg_stat_force_next_flush()"
    ))
    .await
    .expect("rows");
}

fn analyzed(r: &jobs::Report) -> Vec<String> {
    r.detail["analyzed"]
        .as_array()
        .expect("analyzed")
        .iter()
        .map(|v| v.as_str().expect("name").to_owned())
        .collect()
}

#[tokio::test]
async fn analyze_takes_statistics_of_what_changed() {
    let db = TestDb::migrated().await;
    let client = db.client().await;
    let ctx = ctx(&db, Clock::System);
    let now = Month::of(Utc::now()).partition_name();
    let last = Month::of(Utc::now()).plus(-1).partition_name();
    // Autovacuum must not analyze behind the job's back.
    for p in months(&db).await {
        client
            .batch_execute(&format!(
                "ALTER TABLE {} SET (autovacuum_enabled = off)",
                p.partition_name()
            ))
            .await
            .expect("autovacuum off");
    }
    insert(&client, 10_000, 1).await;
    insert(&client, 500, 0).await;
    assert_eq!(parent_stats(&client).await, 0);
    wait_for_stats(&client, &now, "n_live_tup = 500").await;
    wait_for_stats(&client, &last, "n_live_tup = 10000").await;

    // Never analyzed: the parent, and every partition with it.
    let r = jobs::run(Job::Analyze, &ctx).await.expect("analyze");
    assert_eq!(r.detail["parent"], "never analyzed", "{}", r.detail);
    assert!(analyzed(&r).contains(&"analytics_events".to_owned()));
    assert!(parent_stats(&client).await > 0);
    assert!(
        r.detail["rows"].as_i64().unwrap_or(0) >= 10_500,
        "{}",
        r.detail
    );
    wait_for_stats(&client, &last, "last_analyze IS NOT NULL").await;

    // 100 new rows in this month (1% of the parent): only this month's partition.
    let before: chrono::DateTime<Utc> = client
        .query_one(
            "SELECT last_analyze FROM pg_stat_user_tables WHERE relname = $1",
            &[&last],
        )
        .await
        .expect("last analyze")
        .get(0);
    insert(&client, 100, 0).await;
    wait_for_stats(&client, &now, "n_mod_since_analyze = 100").await;
    let r = jobs::run(Job::Analyze, &ctx).await.expect("analyze");
    assert_eq!(r.detail["parent"], "not due", "{}", r.detail);
    assert_eq!(analyzed(&r), vec![now.clone()], "{}", r.detail);
    assert_eq!(r.detail["rows"], 600, "{}", r.detail);
    let after: chrono::DateTime<Utc> = client
        .query_one(
            "SELECT last_analyze FROM pg_stat_user_tables WHERE relname = $1",
            &[&last],
        )
        .await
        .expect("last analyze")
        .get(0);
    assert_eq!(before, after, "last month was left alone");

    // Nothing changed: nothing analyzed.
    wait_for_stats(&client, &now, "n_mod_since_analyze = 0").await;
    let r = jobs::run(Job::Analyze, &ctx).await.expect("analyze");
    assert_eq!(analyzed(&r), Vec::<String>::new(), "{}", r.detail);
    assert_eq!(r.detail["rows"], 0);

    // At the limit: the parent describes 10,500 rows; 1,050 more (10%, with the 100 above) is
    // not yet a drift, 1,051 is.
    insert(&client, 950, 0).await;
    wait_for_stats(&client, &now, "n_live_tup = 1550").await;
    let r = jobs::run(Job::Analyze, &ctx).await.expect("analyze");
    assert_eq!(r.detail["parent"], "not due", "{}", r.detail);
    assert_eq!(analyzed(&r), vec![now.clone()], "{}", r.detail);
    insert(&client, 1, 0).await;
    wait_for_stats(&client, &now, "n_live_tup = 1551").await;
    let r = jobs::run(Job::Analyze, &ctx).await.expect("analyze");
    assert_eq!(
        r.detail["parent"], "its partitions' rows moved more than 10%",
        "{}",
        r.detail
    );
    assert_eq!(analyzed(&r), vec!["analytics_events".to_owned()]);
    let described: f32 = client
        .query_one(
            "SELECT reltuples FROM pg_class WHERE relname = 'analytics_events'",
            &[],
        )
        .await
        .expect("reltuples")
        .get(0);
    assert_eq!(described, 11_551.0);
}

#[tokio::test]
async fn vacuum_reports_the_tables_it_cleaned() {
    let db = TestDb::migrated().await;
    let client = db.client().await;
    client
        .batch_execute(
            "INSERT INTO analytics_events (event_id, app_id, event_name, occurred_at, received_at) \
             SELECT gen_random_uuid(), 'a', 'e', now(), now() FROM generate_series(1, 5000); \
             DELETE FROM analytics_events WHERE event_name = 'e'",
        )
        .await
        .expect("dead rows");
    client
        .batch_execute("SELECT pg_stat_force_next_flush()")
        .await
        .expect("flush");
    let current = Month::of(Utc::now()).partition_name();
    wait_for_stats(&client, &current, "n_dead_tup >= 5000").await;
    let r = jobs::run(Job::Vacuum, &ctx(&db, Clock::System))
        .await
        .expect("vacuum");
    let done = r.detail["vacuumed"].as_array().expect("vacuumed");
    let entry = done.iter().find(|v| v["table"] == current.as_str());
    assert!(entry.is_some(), "{}", r.detail);
    assert!(entry.and_then(|e| e["dead_tuples"].as_i64()).unwrap_or(0) >= 5000);
}

#[tokio::test]
async fn a_job_never_runs_twice_at_once() {
    let db = TestDb::migrated().await;
    let ctx = ctx(&db, Clock::System);
    // Another process (a run-once, another replica) is running the job: it holds its lock.
    let other = db.client().await;
    other
        .execute("SELECT pg_advisory_lock($1)", &[&Job::Analyze.lock_key()])
        .await
        .expect("lock");
    let r = jobs::run(Job::Analyze, &ctx).await;
    assert!(matches!(r, Err(jobs::JobError::Busy("analyze"))), "{r:?}");
    other
        .execute("SELECT pg_advisory_unlock($1)", &[&Job::Analyze.lock_key()])
        .await
        .expect("unlock");
    jobs::run(Job::Analyze, &ctx)
        .await
        .expect("runs once the other is done");
}
