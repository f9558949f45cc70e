//! `maintenance-worker adopt`: an installation of the original design (a plain
//! `analytics_events` with a few million rows) upgraded in place, killed midway and resumed,
//! while new events already arrive.

use std::process::{Command, Output, Stdio};
use std::time::Duration;

use testkit::{wait_for, TestDb};

const BIN: &str = env!("CARGO_BIN_EXE_maintenance-worker");

/// Rows of the original table, spread over the last 14 months (two of them past the 12 months
/// of retention).
const ROWS: i64 = 2_000_000;

/// The original design's table, with the usual columns, a NULL-able event name (its rows
/// without one cannot move) and its own summary view.
const ORIGINAL: &str = r#"
CREATE TABLE analytics_events (
    id          bigserial PRIMARY KEY,
    app_id      varchar(64) NOT NULL,
    event_name  varchar(255),
    "timestamp" timestamptz,
    user_id     varchar(255),
    session_id  varchar(255),
    metadata    jsonb DEFAULT '{}',
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX analytics_events_app_time ON analytics_events (app_id, "timestamp");
CREATE MATERIALIZED VIEW daily_analytics_summary AS
  SELECT app_id, date("timestamp") AS day, event_name, count(*) AS events
    FROM analytics_events GROUP BY 1, 2, 3;
"#;

fn load_sql() -> String {
    format!(
        "INSERT INTO analytics_events (app_id, event_name, \"timestamp\", user_id, session_id, metadata) \
         SELECT 'app_' || (i % 7), 'event_' || (i % 13), \
                now() - make_interval(secs => (i * 2654435761 % (425 * 86400))::float8), \
                CASE WHEN i % 5 > 0 THEN 'user_' || (i % 50000) END, 'sess_' || (i % 90000), \
                jsonb_build_object('plan', CASE WHEN i % 2 = 0 THEN 'pro' ELSE 'free' END, 'n', i) \
           FROM generate_series(1, {ROWS}) i; \
         INSERT INTO analytics_events (app_id, event_name, \"timestamp\") \
         SELECT 'app_1', NULL, now() - interval '3 days' FROM generate_series(1, 5); \
         INSERT INTO analytics_events (app_id, event_name, \"timestamp\") \
         SELECT 'app_1', 'no_time', NULL FROM generate_series(1, 3); \
         ANALYZE analytics_events"
    )
}

fn command(db: &TestDb, args: &[&str]) -> Command {
    let mut c = Command::new(BIN);
    c.args(args)
        .envs(db.env_vars())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    c
}

fn report(out: &Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "adopt failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("adopt prints its report as JSON")
}

async fn count(c: &tokio_postgres::Client, sql: &str) -> i64 {
    c.query_one(sql, &[]).await.expect(sql).get(0)
}

/// Old rows inside the retention window (from the month 12 months back, the oldest partition),
/// with an event name.
const IN_WINDOW: &str = "SELECT count(*) FROM analytics_events_original o \
    WHERE o.event_name IS NOT NULL AND o.\"timestamp\" >= \
      date_trunc('month', (now() AT TIME ZONE 'UTC') - interval '12 months') AT TIME ZONE 'UTC'";

#[tokio::test]
async fn an_original_installation_is_adopted_through_a_kill_and_a_resume() {
    let db = TestDb::empty().await;
    let c = db.client().await;
    c.batch_execute(ORIGINAL).await.expect("original schema");
    c.batch_execute(&load_sql()).await.expect("original rows");

    // `migrate` refuses the original table and names the command that upgrades it.
    let out = command(&db, &["migrate"]).output().expect("run migrate");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("maintenance-worker adopt"), "{err}");

    // The first run is killed once it has copied part of the rows.
    let mut first = command(&db, &["adopt", "--batch-rows", "20000"])
        .spawn()
        .expect("start adopt");
    let progress = "SELECT coalesce((SELECT sum(moved)::bigint FROM sluice_adopt_months), 0)";
    let partway = wait_for(Duration::from_secs(120), || async {
        let moved = c.query_one(progress, &[]).await.ok()?.get::<_, i64>(0);
        (moved >= 300_000).then_some(moved)
    })
    .await;
    first.kill().expect("kill adopt");
    let _ = first.wait();
    assert!(partway.is_some(), "adopt copied nothing within two minutes");
    assert!(
        count(
            &c,
            "SELECT count(*) FROM sluice_adopt_months WHERE done_at IS NULL"
        )
        .await
            > 0,
        "the kill came too late to interrupt anything"
    );

    // The new pipeline already takes events into the partitioned table.
    c.batch_execute(
        "INSERT INTO analytics_events (event_id, app_id, event_name, occurred_at, received_at, user_id) \
         SELECT gen_random_uuid(), 'app_new', 'signup', now(), now(), 'u' || i \
           FROM generate_series(1, 1000) i",
    )
    .await
    .expect("new events");

    // The resumed run waits for the killed one's last statement to end, then goes on.
    let done = report(
        &command(&db, &["adopt", "--batch-rows", "50000"])
            .output()
            .expect("adopt"),
    );
    assert_eq!(done["moved_aside"], false, "{done}");
    assert_eq!(done["complete"], true, "{done}");
    let in_window = count(&c, IN_WINDOW).await;
    assert_eq!(done["copied"], in_window, "{done}");
    for m in done["months"].as_array().expect("months") {
        if m.get("left_behind").is_none() {
            assert_eq!(m["verified"], true, "{m}");
            assert_eq!(m["found"], m["copied"], "{m}");
        }
    }
    let left = &done["left_behind"];
    assert_eq!(left["invalid"], 5, "{done}");
    assert_eq!(left["no_timestamp"], 3, "{done}");
    let past = left["past_retention"].as_i64().expect("past_retention");
    assert!(past > 0, "{done}");
    assert_eq!(
        in_window + past,
        ROWS,
        "every dated, named row is copied or counted: {done}"
    );

    // Exactly once: every copied row once, beside the new events.
    assert_eq!(
        count(&c, "SELECT count(*) FROM analytics_events").await,
        in_window + 1000
    );
    assert_eq!(
        count(&c, "SELECT count(DISTINCT event_id) FROM analytics_events").await,
        in_window + 1000
    );
    // The old rows' content came along, the old table stays for the operator to drop.
    assert_eq!(
        count(
            &c,
            "SELECT count(*) FROM analytics_events e JOIN analytics_events_original o \
               ON e.event_id = md5('sluice-adopt:' || o.id::text)::uuid \
              WHERE e.app_id = o.app_id AND e.event_name = o.event_name \
                AND e.occurred_at = o.\"timestamp\" AND e.received_at = o.created_at \
                AND e.user_id IS NOT DISTINCT FROM o.user_id AND e.session_id = o.session_id \
                AND e.metadata = o.metadata"
        )
        .await,
        in_window
    );
    assert_eq!(
        count(&c, "SELECT count(*) FROM apps WHERE app_id LIKE 'app\\_%'").await,
        7,
        "the old apps are registered"
    );
    assert_eq!(
        count(
            &c,
            "SELECT count(*) FROM pg_matviews WHERE matviewname = 'daily_analytics_summary_original'"
        )
        .await,
        1,
        "the original summary view is moved aside with its table"
    );

    // Once done, a run copies nothing and reports the same.
    let again = report(&command(&db, &["adopt"]).output().expect("adopt"));
    assert_eq!(again["copied"], done["copied"]);
    assert_eq!(again["complete"], true);
    assert_eq!(
        count(&c, "SELECT count(*) FROM analytics_events").await,
        in_window + 1000
    );
    // And `migrate` is an ordinary no-op now.
    let out = command(&db, &["migrate"]).output().expect("run migrate");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn adopt_on_a_sluice_database_does_nothing_and_a_foreign_table_is_refused() {
    let db = TestDb::migrated().await;
    let r = report(&command(&db, &["adopt"]).output().expect("adopt"));
    assert_eq!(r["moved_aside"], false);
    assert_eq!(r["copied"], 0);
    assert_eq!(r["complete"], true);

    let other = TestDb::empty().await;
    other
        .client()
        .await
        .batch_execute("CREATE TABLE analytics_events (id uuid PRIMARY KEY, app_id text, event_name text, \"timestamp\" timestamptz)")
        .await
        .expect("a table of another shape");
    let out = command(&other, &["adopt"]).output().expect("adopt");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("column id is uuid"), "{err}");
}
