use std::time::Duration;

use shared::queue::Keys;
use shared::testing::{Daemon, TestDb};

use crate::helpers::*;

const BIN: &str = env!("CARGO_BIN_EXE_batch-writer");

async fn assert_exactly_once(db: &TestDb, n: i64) {
    let total = count(db, "SELECT count(*) FROM analytics_events").await;
    let distinct = count(db, "SELECT count(DISTINCT event_id) FROM analytics_events").await;
    assert_eq!((total, distinct), (n, n), "rows and distinct ids");
}

#[tokio::test]
async fn a_writer_killed_mid_load_loses_and_doubles_nothing_once_another_claims_its_entries() {
    let db = TestDb::migrated().await;
    let prefix = prefix();
    let keys = Keys::new(&prefix, 2);
    push(&keys, &events(30_000), 10).await;
    let mut vars = env(
        &db,
        &prefix,
        &[("BATCH_SIZE", "500"), ("CLAIM_IDLE_MS", "1000")],
    );
    vars.push(("WRITER_CONSUMER_NAME".into(), "doomed".into()));
    let mut a = Daemon::start(BIN, &vars).await;
    let seen = wait_rows(&db, 3000, Duration::from_secs(30)).await;
    assert!(seen >= 3000);
    a.child.kill().expect("SIGKILL");
    let _ = a.child.wait();
    let mid = count(&db, "SELECT count(*) FROM analytics_events").await;
    assert!(mid < 30_000, "killed mid-load ({mid} rows)");
    vars.pop();
    vars.push(("WRITER_CONSUMER_NAME".into(), "heir".into()));
    let _b = Daemon::start(BIN, &vars).await;
    assert_eq!(
        wait_rows(&db, 30_000, Duration::from_secs(60)).await,
        30_000
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_exactly_once(&db, 30_000).await;
    let drained = shared::testing::wait_for(Duration::from_secs(10), || async {
        (queue_state(&keys).await == (0, 0)).then_some(())
    })
    .await;
    assert!(drained.is_some(), "{:?}", queue_state(&keys).await);
    cleanup(&prefix).await;
}

#[tokio::test]
async fn a_poison_event_is_dead_lettered_after_max_deliveries_and_replay_stores_it() {
    let db = TestDb::migrated().await;
    db.client()
        .await
        .batch_execute(
            "ALTER TABLE analytics_events ADD CONSTRAINT no_poison CHECK (event_name <> 'poison')",
        )
        .await
        .expect("constraint");
    let prefix = prefix();
    let keys = Keys::new(&prefix, 2);
    let poison = event("app_t", "poison");
    let mut batch = events(20);
    batch.insert(7, poison.clone());
    push(&keys, &batch, 10).await;
    let vars = env(
        &db,
        &prefix,
        &[("MAX_DELIVERIES", "3"), ("CLAIM_IDLE_MS", "300")],
    );
    let w = start(vars.clone(), "w1").await;
    assert_eq!(
        wait_rows(&db, 20, Duration::from_secs(10)).await,
        20,
        "batch-mates stored"
    );
    let dead = shared::testing::wait_for(Duration::from_secs(15), || async {
        let n = count(&db, "SELECT count(*) FROM dead_letters").await;
        (n > 0).then_some(n)
    })
    .await;
    assert_eq!(dead, Some(1));
    let row = db
        .client()
        .await
        .query_one("SELECT event_id, deliveries, error FROM dead_letters", &[])
        .await
        .expect("dead letter");
    assert_eq!(row.get::<_, uuid::Uuid>(0), poison.event_id);
    assert_eq!(row.get::<_, i32>(1), 3);
    assert!(row.get::<_, String>(2).contains("no_poison"));
    let drained = shared::testing::wait_for(Duration::from_secs(5), || async {
        (queue_state(&keys).await == (0, 0)).then_some(())
    })
    .await;
    assert!(
        drained.is_some(),
        "the poison's entry is acknowledged: {:?}",
        queue_state(&keys).await
    );

    let list = std::process::Command::new(BIN)
        .args(["dead-letter", "list"])
        .envs(vars.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .output()
        .expect("list");
    assert!(
        list.status.success(),
        "{}",
        String::from_utf8_lossy(&list.stderr)
    );
    let line: serde_json::Value = serde_json::from_slice(&list.stdout).expect("one JSON line");
    assert_eq!(line["event"]["event_name"], "poison");
    assert_eq!(line["deliveries"], 3);

    // The operator fixes the cause, then replays.
    db.client()
        .await
        .batch_execute("ALTER TABLE analytics_events DROP CONSTRAINT no_poison")
        .await
        .expect("drop");
    let replay = std::process::Command::new(BIN)
        .args(["dead-letter", "replay", "--all"])
        .envs(vars.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .output()
        .expect("replay");
    assert!(
        replay.status.success(),
        "{}",
        String::from_utf8_lossy(&replay.stderr)
    );
    assert_eq!(wait_rows(&db, 21, Duration::from_secs(10)).await, 21);
    assert_eq!(count(&db, "SELECT count(*) FROM dead_letters").await, 0);
    assert_exactly_once(&db, 21).await;
    w.stop().await;
    cleanup(&prefix).await;
}

#[tokio::test]
async fn postgres_unreachable_for_a_while_loses_nothing() {
    let db = TestDb::migrated().await;
    let proxy = Proxy::start(5432).await;
    let prefix = prefix();
    let keys = Keys::new(&prefix, 2);
    let port = proxy.port.to_string();
    let w = start(env(&db, &prefix, &[("DB_PORT", &port)]), "w1").await;
    push(&keys, &events(1000), 10).await;
    assert_eq!(wait_rows(&db, 1000, Duration::from_secs(10)).await, 1000);
    proxy.off();
    push(&keys, &events(2000), 10).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        count(&db, "SELECT count(*) FROM analytics_events").await,
        1000,
        "nothing written while cut off"
    );
    let (len, depth) = queue_state(&keys).await;
    assert!(
        len > 0 && depth == 2000,
        "still queued: {len} entries, {depth} events"
    );
    proxy.on();
    assert_eq!(wait_rows(&db, 3000, Duration::from_secs(30)).await, 3000);
    assert_exactly_once(&db, 3000).await;
    w.stop().await;
    cleanup(&prefix).await;
}

#[tokio::test]
async fn sigterm_mid_batch_writes_the_batch_in_hand_then_exits() {
    let db = TestDb::migrated().await;
    let prefix = prefix();
    let keys = Keys::new(&prefix, 2);
    let mut vars = env(&db, &prefix, &[("BATCH_SIZE", "1000")]);
    vars.retain(|(k, _)| k != "BATCH_LINGER_MS");
    vars.push(("BATCH_LINGER_MS".into(), "5000".into()));
    let mut w = Daemon::start(BIN, &vars).await;
    push(&keys, &events(500), 10).await;
    // The batch is open and lingering: nothing is written yet.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(count(&db, "SELECT count(*) FROM analytics_events").await, 0);
    let status = w
        .terminate(Duration::from_secs(15))
        .expect("exits after SIGTERM");
    assert!(status.success(), "{status:?}");
    assert_eq!(
        count(&db, "SELECT count(*) FROM analytics_events").await,
        500
    );
    assert_eq!(queue_state(&keys).await, (0, 0));
    cleanup(&prefix).await;
}
