use std::time::Duration;

use shared::testing::{free_port, http_get, Daemon, TestDb};

const BIN: &str = env!("CARGO_BIN_EXE_ingest-gateway");

#[tokio::test]
async fn the_daemon_serves_health_on_both_ports_and_stops_on_sigterm() {
    let db = TestDb::migrated().await;
    let addr = format!("127.0.0.1:{}", free_port());
    let mut env = db.env_vars();
    env.push(("GATEWAY_ADDR".into(), addr.clone()));
    env.push(("REDIS_URL".into(), "redis://127.0.0.1:6379/".into()));
    env.push((
        "STREAM_PREFIX".into(),
        format!("test-{}", std::process::id()),
    ));
    let mut d = Daemon::start(BIN, &env).await;
    for target in [&d.ops_addr, &addr] {
        let (status, body) = http_get(target, "/readyz").await.expect("readyz");
        assert_eq!(status, 200, "{target}: {body}");
        let (status, _) = http_get(target, "/healthz").await.expect("healthz");
        assert_eq!(status, 200);
    }
    let (_, metrics) = http_get(&d.ops_addr, "/metrics").await.expect("metrics");
    for name in [
        "sluice_events_accepted_total 0",
        "sluice_events_rejected_total{reason=\"invalid_event\"} 0",
        "sluice_cache_hits_total 0",
        "sluice_cache_misses_total 0",
    ] {
        assert!(metrics.contains(name), "{name} missing from {metrics}");
    }
    let status = d
        .terminate(Duration::from_secs(10))
        .expect("exits after SIGTERM");
    assert!(status.success(), "{status:?}");
}
