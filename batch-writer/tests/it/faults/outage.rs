//! A writer killed mid-load, cut off from PostgreSQL for a while, or stopped by SIGTERM
//! mid-batch: nothing is lost and nothing doubled.

use std::time::Duration;

use shared::queue::Keys;
use testkit::{Daemon, TestDb};

use super::{assert_exactly_once, BIN};
use crate::helpers::*;

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
    let drained = testkit::wait_for(Duration::from_secs(10), || async {
        (queue_state(&keys).await == (0, 0)).then_some(())
    })
    .await;
    assert!(drained.is_some(), "{:?}", queue_state(&keys).await);
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
