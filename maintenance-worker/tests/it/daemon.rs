use std::time::Duration;

use shared::testing::{http_get, Daemon, TestDb};

const BIN: &str = env!("CARGO_BIN_EXE_maintenance-worker");

#[tokio::test]
async fn migrate_applies_once_then_is_a_no_op() {
    let db = TestDb::empty().await;
    let run = || {
        std::process::Command::new(BIN)
            .arg("migrate")
            .envs(db.env_vars())
            .output()
            .expect("run migrate")
    };
    let first = run();
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let out = String::from_utf8_lossy(&first.stdout);
    assert!(out.contains("migrations applied: [1, 2, 3]"), "{out}");
    let second = run();
    assert!(second.status.success());
    let out = String::from_utf8_lossy(&second.stdout);
    assert!(
        out.contains("migrations applied: []; partitions created: 0"),
        "{out}"
    );
}

#[tokio::test]
async fn the_daemon_serves_health_and_metrics_and_stops_on_sigterm() {
    let db = TestDb::migrated().await;
    let mut d = Daemon::start(BIN, &db.env_vars()).await;
    let (status, body) = http_get(&d.ops_addr, "/readyz").await.expect("readyz");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"pools\""), "{body}");
    let (status, metrics) = http_get(&d.ops_addr, "/metrics").await.expect("metrics");
    assert_eq!(status, 200);
    assert!(
        metrics.contains("sluice_maintenance_runs_total{job=\"partitions\",outcome=\"success\"} 0"),
        "{metrics}"
    );
    assert!(
        metrics.contains("sluice_db_pool_connections{pool=\"write\""),
        "{metrics}"
    );
    let status = d
        .terminate(Duration::from_secs(10))
        .expect("exits after SIGTERM");
    assert!(status.success(), "{status:?}");
}

#[tokio::test]
async fn the_daemon_refuses_an_unmigrated_database() {
    let db = TestDb::empty().await;
    let out = std::process::Command::new(BIN)
        .envs(db.env_vars())
        .env(
            "METRICS_ADDR",
            format!("127.0.0.1:{}", shared::testing::free_port()),
        )
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("run `maintenance-worker migrate` first"),
        "{err}"
    );
}
