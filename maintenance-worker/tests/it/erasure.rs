//! Erasure requests carried out against the real PostgreSQL, tick by tick.

use std::time::Duration;

use chrono::{DateTime, Utc};
use maintenance_worker::clock::Clock;
use maintenance_worker::erasure::{self, ErasureCtx, ErasureError, Progress, State};
use maintenance_worker::jobs::{self, Job, JobCtx};
use serde_json::json;
use shared::db::Pools;
use shared::queue::QueuedEvent;
use shared::schema::partitions::Month;
use testkit::{wait_for, Daemon, TestDb};
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

const BIN: &str = env!("CARGO_BIN_EXE_maintenance-worker");

fn job_ctx(db: &TestDb) -> JobCtx {
    JobCtx {
        db: Pools::new(&db.config()).expect("pools").write,
        clock: Clock::System,
        retention_months: 12,
        premake_months: 6,
        dedupe_window: Duration::from_secs(24 * 3600),
    }
}

fn ctx(db: &TestDb) -> ErasureCtx {
    ErasureCtx::new(job_ctx(db), CancellationToken::new())
}

async fn setup(c: &Client) {
    c.batch_execute("INSERT INTO apps (app_id, name) VALUES ('app', 'App'), ('other', 'Other')")
        .await
        .expect("apps");
}

async fn event(c: &Client, app: &str, user: &str, name: &str, at: DateTime<Utc>) {
    c.execute(
        "INSERT INTO analytics_events (event_id, app_id, event_name, occurred_at, received_at, user_id, session_id) \
         VALUES (gen_random_uuid(), $1, $2, $3, now(), $4, 's-' || $4)",
        &[&app, &name, &at, &user],
    )
    .await
    .expect("event");
}

async fn quarantined(c: &Client, app: &str, user: &str, at: DateTime<Utc>) {
    c.execute(
        "INSERT INTO events_quarantine (event_id, app_id, event_name, occurred_at, received_at, user_id) \
         VALUES (gen_random_uuid(), $1, 'view', $2, now(), $3)",
        &[&app, &at, &user],
    )
    .await
    .expect("quarantine");
}

fn queued(app: &str, user: &str) -> QueuedEvent {
    QueuedEvent {
        event_id: Uuid::new_v4(),
        app_id: app.to_owned(),
        event_name: "view".to_owned(),
        occurred_at_us: Utc::now().timestamp_micros(),
        received_at_us: Utc::now().timestamp_micros(),
        user_id: Some(user.to_owned()),
        session_id: None,
        metadata: None,
        client_id: false,
    }
}

/// A dead letter of one event, as the writer stores it; returns its id.
async fn dead_letter(c: &Client, app: &str, user: &str) -> i64 {
    let e = queued(app, user);
    let payload = shared::queue::encode(std::slice::from_ref(&e)).expect("encode");
    raw_dead_letter(c, Some((e.event_id, app)), &payload).await
}

async fn raw_dead_letter(c: &Client, event: Option<(Uuid, &str)>, payload: &[u8]) -> i64 {
    let (event_id, app) = (event.map(|e| e.0), event.map(|e| e.1));
    c.query_one(
        "INSERT INTO dead_letters (event_id, app_id, payload, error, stream, entry_id, deliveries) \
         VALUES ($1, $2, $3, 'refused', 'stream', gen_random_uuid()::text, 5) RETURNING id",
        &[&event_id, &app, &payload],
    )
    .await
    .expect("dead letter")
    .get(0)
}

/// Records an erasure request of `users` of `app` as the gateway does; returns its id.
async fn request(c: &Client, app: &str, users: &[&str]) -> Uuid {
    let id = Uuid::new_v4();
    c.execute(
        "INSERT INTO erasures (erasure_id, app_id, suppress, users) VALUES ($1, $2, false, $3)",
        &[&id, &app, &(users.len() as i32)],
    )
    .await
    .expect("erasure");
    for u in users {
        let digest = shared::privacy::user_digest(app, u).to_vec();
        c.execute(
            "INSERT INTO erasure_users (erasure_id, user_hash, user_id) VALUES ($1, $2, $3)",
            &[&id, &digest, u],
        )
        .await
        .expect("erasure user");
    }
    id
}

async fn count(c: &Client, sql: &str) -> i64 {
    c.query_one(sql, &[]).await.expect(sql).get(0)
}

async fn removed(c: &Client, id: Uuid) -> serde_json::Value {
    c.query_one("SELECT removed FROM erasures WHERE erasure_id = $1", &[&id])
        .await
        .expect("removed")
        .get(0)
}

/// Ticks until the request is done or failed, sleeping while it waits.
async fn run_to_end(ctx: &ErasureCtx) -> Progress {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let p = erasure::tick(ctx)
            .await
            .expect("tick")
            .expect("an open request");
        if matches!(p.state, State::Done | State::Failed) {
            return p;
        }
        assert!(tokio::time::Instant::now() < deadline, "stuck at {p:?}");
        if p.waiting {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

fn mid_month(n: i32) -> DateTime<Utc> {
    Month::of(Utc::now()).plus(n).start() + chrono::Duration::days(9) + chrono::Duration::hours(7)
}

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
async fn a_request_waits_for_what_was_queued_before_it() {
    let db = TestDb::migrated().await;
    let c = db.client().await;
    setup(&c).await;
    event(&c, "app", "u1", "view", Utc::now()).await;
    c.batch_execute(
        "INSERT INTO stream_pipelines (pipeline_id, stream_prefix, queue_low_water_db) \
         VALUES (7, 'a', now() - interval '1 minute'), (8, 'b', NULL)",
    )
    .await
    .expect("pipelines");
    let id = request(&c, "app", &["u1"]).await;
    let ctx = ctx(&db);
    for _ in 0..2 {
        let p = erasure::tick(&ctx).await.expect("tick").expect("open");
        assert_eq!((p.erasure_id, p.state, p.waiting), (id, State::Queue, true));
    }
    // One pipeline past the request is not enough; the one that never reported holds it too.
    c.execute(
        "UPDATE stream_pipelines SET queue_low_water_db = \
         (SELECT requested_at FROM erasures WHERE erasure_id = $1) + interval '5 seconds' \
         WHERE pipeline_id = 7",
        &[&id],
    )
    .await
    .expect("low water");
    let p = erasure::tick(&ctx).await.expect("tick").expect("open");
    assert_eq!((p.state, p.waiting), (State::Queue, true));
    c.execute(
        "UPDATE stream_pipelines SET queue_low_water_db = \
         (SELECT requested_at FROM erasures WHERE erasure_id = $1) + interval '6 seconds'",
        &[&id],
    )
    .await
    .expect("low water");
    let p = erasure::tick(&ctx).await.expect("tick").expect("open");
    assert_eq!((p.state, p.waiting), (State::Cache, true), "past the queue");
    assert_eq!(run_to_end(&ctx).await.state, State::Done);
    assert_eq!(removed(&c, id).await["events"], 1);
}

/// The rows of `r1` left in each place, in `PLACES` order.
async fn left(c: &Client, dead: &[i64]) -> [i64; 4] {
    let dead_left: i64 = c
        .query_one(
            "SELECT count(*) FROM dead_letters WHERE id = ANY($1)",
            &[&dead],
        )
        .await
        .expect("dead letters")
        .get(0);
    [
        count(c, "SELECT count(*) FROM analytics_events WHERE app_id = 'app' AND user_id = 'r1'")
            .await,
        count(c, "SELECT count(*) FROM events_quarantine WHERE app_id = 'app' AND user_id = 'r1'")
            .await,
        dead_left,
        count(
            c,
            "SELECT count(*) FROM summary_members WHERE app_id = 'app' AND kind = 'u' AND member = 'r1'",
        )
        .await,
    ]
}

#[tokio::test]
async fn an_interrupted_request_resumes_with_exact_counts() {
    let db = TestDb::migrated().await;
    let c = db.client().await;
    setup(&c).await;
    for (n, name) in [(-1, "a"), (-1, "b"), (-1, "c"), (0, "a"), (0, "d")] {
        event(&c, "app", "r1", name, mid_month(n)).await;
        event(&c, "app", "keep", name, mid_month(n)).await;
    }
    let far = Month::of(Utc::now()).plus(9).start();
    for _ in 0..3 {
        quarantined(&c, "app", "r1", far).await;
    }
    let mut dead = Vec::new();
    for _ in 0..3 {
        raw_dead_letter(&c, None, b"garbage").await;
        dead.push(dead_letter(&c, "app", "r1").await);
    }
    jobs::run(Job::Views, &job_ctx(&db)).await.expect("fold");
    let initial = left(&c, &dead).await;
    assert_eq!(initial, [5, 3, 3, 5]);

    let id = request(&c, "app", &["r1"]).await;
    let mut deleting_ticks = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        // A fresh context (pool) per tick, as after a restart; two rows a batch, one batch a tick.
        let mut ctx = ctx(&db);
        ctx.batch_rows = 2;
        ctx.batches_per_tick = Some(1);
        let p = erasure::tick(&ctx).await.expect("tick").expect("open");
        let counts = removed(&c, id).await;
        let now = left(&c, &dead).await;
        for (i, place) in shared::privacy::PLACES.iter().enumerate() {
            let gone = counts[place].as_i64().unwrap_or(-1);
            assert_eq!(gone + now[i], initial[i], "{place} after {p:?}");
        }
        if p.state == State::Delete {
            deleting_ticks += 1;
        }
        if p.state == State::Done {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "stuck at {p:?}");
        if p.waiting {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    // Batches of two: 2 + 2 + 3 + 3 of them, less the ones that ended a place in the same tick.
    assert!(deleting_ticks >= 8, "{deleting_ticks} ticks deleting");
    assert_eq!(
        removed(&c, id).await,
        json!({"events": 5, "quarantine": 3, "dead_letters": 3, "summary_members": 5})
    );
    assert_eq!(
        count(
            &c,
            "SELECT count(*) FROM analytics_events WHERE user_id = 'keep'"
        )
        .await,
        5
    );

    // Asked again: nothing is left to remove.
    let again = request(&c, "app", &["r1"]).await;
    assert_eq!(run_to_end(&ctx(&db)).await.state, State::Done);
    assert_eq!(
        removed(&c, again).await,
        json!({"events": 0, "quarantine": 0, "dead_letters": 0, "summary_members": 0})
    );
    let epochs = count(
        &c,
        "SELECT erasures_done FROM privacy_epochs WHERE app_id = 'app'",
    )
    .await;
    assert_eq!(epochs, 2);
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

#[tokio::test]
async fn only_one_process_works_at_a_time_and_a_broken_request_fails_after_five_attempts() {
    let db = TestDb::migrated().await;
    let c = db.client().await;
    setup(&c).await;
    let id = request(&c, "app", &["u1"]).await;
    let ctx = ctx(&db);
    c.execute("SELECT pg_advisory_lock($1)", &[&erasure::LOCK_KEY])
        .await
        .expect("lock");
    assert!(matches!(erasure::tick(&ctx).await, Err(ErasureError::Busy)));
    c.execute("SELECT pg_advisory_unlock($1)", &[&erasure::LOCK_KEY])
        .await
        .expect("unlock");

    c.execute(
        "UPDATE erasures SET status = 'running', phase = 'bogus' WHERE erasure_id = $1",
        &[&id],
    )
    .await
    .expect("break it");
    for attempt in 1..erasure::MAX_ATTEMPTS {
        let e = erasure::tick(&ctx).await.expect_err("an unknown phase");
        assert!(matches!(e, ErasureError::UnknownPhase(..)), "{e}");
        let n = count(&c, "SELECT attempts::bigint FROM erasures").await;
        assert_eq!(n, attempt as i64);
    }
    let p = erasure::tick(&ctx).await.expect("tick").expect("open");
    assert_eq!((p.erasure_id, p.state), (id, State::Failed));
    let row = c
        .query_one(
            "SELECT status, error, finished_at IS NOT NULL, \
             (SELECT count(*) FROM erasure_users WHERE user_id IS NOT NULL) FROM erasures",
            &[],
        )
        .await
        .expect("request");
    let (status, error, finished, ids): (String, Option<String>, bool, i64) =
        (row.get(0), row.get(1), row.get(2), row.get(3));
    assert_eq!((status.as_str(), finished, ids), ("failed", true, 0));
    assert!(error.is_some_and(|e| e.contains("bogus")));
    assert!(erasure::tick(&ctx).await.expect("tick").is_none());
}

#[tokio::test]
async fn run_once_and_the_daemon_carry_requests_out() {
    let db = TestDb::migrated().await;
    let c = db.client().await;
    setup(&c).await;
    event(&c, "app", "u1", "view", Utc::now()).await;
    event(&c, "app", "u2", "view", Utc::now()).await;
    let first = request(&c, "app", &["u1"]).await;
    let out = std::process::Command::new(BIN)
        .args(["erasures", "run-once"])
        .envs(db.env_vars())
        .output()
        .expect("run erasures run-once");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(
        printed.contains(&format!("\"erasure_id\":\"{first}\"")),
        "{printed}"
    );
    assert!(printed.contains("\"state\":\"done\""), "{printed}");

    let second = request(&c, "app", &["u2"]).await;
    let mut d = Daemon::start(BIN, &db.env_vars()).await;
    let done = wait_for(Duration::from_secs(20), || async {
        let status: String = c
            .query_one(
                "SELECT status FROM erasures WHERE erasure_id = $1",
                &[&second],
            )
            .await
            .expect("status")
            .get(0);
        (status == "done").then_some(())
    })
    .await;
    assert!(done.is_some(), "{}", d.logs());
    assert_eq!(count(&c, "SELECT count(*) FROM analytics_events").await, 0);
    d.terminate(Duration::from_secs(10)).expect("exits");
}

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
