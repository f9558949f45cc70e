//! How a request proceeds: it waits for what was queued before it, resumes after an
//! interruption with exact counts, runs in one process at a time, fails after five attempts,
//! and is carried out by `erasures run-once` and by the daemon.

use std::time::Duration;

use chrono::Utc;
use maintenance_worker::erasure::{self, ErasureError, State};
use maintenance_worker::jobs::{self, Job};
use serde_json::json;
use shared::schema::partitions::Month;
use testkit::{wait_for, Daemon, TestDb};
use tokio_postgres::Client;

use super::{
    count, ctx, dead_letter, event, job_ctx, mid_month, quarantined, raw_dead_letter, removed,
    request, run_to_end, setup,
};

const BIN: &str = env!("CARGO_BIN_EXE_maintenance-worker");

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
