//! Every job against the real PostgreSQL, with a moved clock.

use std::time::Duration;

use chrono::{Duration as ChronoDuration, Utc};
use maintenance_worker::clock::Clock;
use maintenance_worker::jobs::{self, Job, JobCtx};
use shared::db::Pools;
use shared::schema::partitions::{self, Month};
use testkit::TestDb;

fn ctx(db: &TestDb, clock: Clock) -> JobCtx {
    JobCtx {
        db: Pools::new(&db.config()).expect("pools").write,
        clock,
        retention_months: 12,
        premake_months: 6,
        dedupe_window: Duration::from_secs(24 * 3600),
    }
}

async fn months(db: &TestDb) -> Vec<Month> {
    partitions::existing(&db.client().await)
        .await
        .expect("list")
}

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
