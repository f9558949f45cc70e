use std::time::Duration;

use testkit::{http_get, Daemon, TestDb};

const BIN: &str = env!("CARGO_BIN_EXE_batch-writer");

#[tokio::test]
async fn the_daemon_serves_health_and_metrics_and_stops_on_sigterm() {
    let db = TestDb::migrated().await;
    let mut d = Daemon::start(BIN, &db.env_vars()).await;
    assert!(d.wait_ready(Duration::from_secs(20)).await, "{}", d.logs());
    let (status, body) = http_get(&d.ops_addr, "/readyz").await.expect("readyz");
    assert_eq!(status, 200, "{body}");
    let (_, metrics) = http_get(&d.ops_addr, "/metrics").await.expect("metrics");
    for name in [
        "sluice_events_written_total 0",
        "sluice_dead_letter_total 0",
        "sluice_queue_lag_events 0",
        "sluice_batches_total{outcome=\"written\"} 0",
        "sluice_entries_claimed_total 0",
    ] {
        assert!(metrics.contains(name), "{name} missing from {metrics}");
    }
    let status = d
        .terminate(Duration::from_secs(10))
        .expect("exits after SIGTERM");
    assert!(status.success(), "{status:?}");
}
