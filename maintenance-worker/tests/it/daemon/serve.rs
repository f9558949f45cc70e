//! The daemon: health, metrics and SIGTERM, refusing an unmigrated database, leadership moving
//! between replicas, a failing job not stopping the others, readiness on the partitions ahead.

use std::time::Duration;

use testkit::{http_get, wait_for, Daemon, TestDb};
use tokio_util::sync::CancellationToken;

use super::BIN;

#[tokio::test]
async fn the_daemon_serves_health_and_metrics_and_stops_on_sigterm() {
    let db = TestDb::migrated().await;
    let mut d = Daemon::start(BIN, &db.env_vars()).await;
    assert!(d.wait_ready(Duration::from_secs(20)).await, "{}", d.logs());
    let (status, body) = http_get(&d.ops_addr, "/readyz").await.expect("readyz");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"pools\""), "{body}");
    let (status, metrics) = http_get(&d.ops_addr, "/metrics").await.expect("metrics");
    assert_eq!(status, 200);
    assert!(
        metrics.contains("sluice_maintenance_runs_total{job=\"vacuum\",outcome=\"success\"} 0"),
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
            format!("127.0.0.1:{}", testkit::free_port()),
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

async fn start_in_process(
    db: &TestDb,
    extra: &[(&str, &str)],
) -> (
    String,
    CancellationToken,
    tokio::task::JoinHandle<anyhow::Result<()>>,
) {
    let mut vars = db.env_vars();
    vars.push(("LEADER_RETRY_MS".into(), "100".into()));
    for (k, v) in extra {
        vars.push(((*k).into(), (*v).into()));
    }
    let config =
        maintenance_worker::MaintenanceConfig::from_env(&shared::config::Env::from_pairs(vars))
            .expect("config");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let stop = CancellationToken::new();
    let task = tokio::spawn(maintenance_worker::run(
        config,
        listener,
        stop.clone(),
        maintenance_worker::clock::Clock::System,
    ));
    (addr, stop, task)
}

async fn is_leader(addr: &str) -> Option<bool> {
    let (_, body) = http_get(addr, "/readyz").await?;
    let v: serde_json::Value = serde_json::from_str(&body).ok()?;
    v["detail"]["leader"].as_bool()
}

#[tokio::test]
async fn leadership_moves_to_another_replica_when_the_leader_stops() {
    let db = TestDb::migrated().await;
    let (a, stop_a, task_a) = start_in_process(&db, &[]).await;
    let led = wait_for(Duration::from_secs(5), || async {
        is_leader(&a).await.filter(|l| *l)
    })
    .await;
    assert_eq!(led, Some(true), "the first replica leads");
    let (b, stop_b, task_b) = start_in_process(&db, &[]).await;
    // B has tried for the lock at least once: its "not leader" is an answer, not a default.
    let tried = wait_for(Duration::from_secs(5), || async {
        let (_, body) = http_get(&b, "/readyz").await?;
        let v: serde_json::Value = serde_json::from_str(&body).ok()?;
        (v["detail"]["leader_attempts"].as_u64()? >= 1).then_some(())
    })
    .await;
    assert!(tried.is_some(), "B tried for leadership");
    assert_eq!(is_leader(&b).await, Some(false), "only one acts");
    stop_a.cancel();
    let _ = task_a.await;
    let started = std::time::Instant::now();
    let took = wait_for(Duration::from_secs(5), || async {
        is_leader(&b).await.filter(|l| *l)
    })
    .await;
    assert_eq!(took, Some(true), "the second replica takes over");
    assert!(started.elapsed() < Duration::from_secs(3));
    stop_b.cancel();
    let _ = task_b.await;
}

fn runs(metrics: &str, job: &str, outcome: &str) -> f64 {
    let prefix = format!("sluice_maintenance_runs_total{{job=\"{job}\",outcome=\"{outcome}\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test]
async fn a_failing_job_does_not_stop_the_others_and_runs_again() {
    let db = TestDb::migrated().await;
    // The fold upserts on the summary's key: without it the views job fails.
    db.client()
        .await
        .batch_execute(
            "ALTER TABLE daily_analytics_summary DROP CONSTRAINT daily_analytics_summary_pkey",
        )
        .await
        .expect("drop");
    let every_second = "* * * * * *";
    let (addr, stop, task) = start_in_process(
        &db,
        &[
            ("SCHEDULE_REFRESH_VIEWS", every_second),
            ("SCHEDULE_ANALYZE", every_second),
        ],
    )
    .await;
    let ok = wait_for(Duration::from_secs(15), || async {
        let (_, m) = http_get(&addr, "/metrics").await?;
        (runs(&m, "views", "failure") >= 2.0 && runs(&m, "analyze", "success") >= 2.0).then_some(m)
    })
    .await;
    assert!(
        ok.is_some(),
        "views failed twice while analyze kept succeeding"
    );
    let m = ok.unwrap_or_default();
    assert!(
        m.contains("sluice_maintenance_last_success_timestamp_seconds{job=\"analyze\"}"),
        "{m}"
    );
    assert!(
        m.contains("sluice_maintenance_duration_seconds_bucket{job=\"views\""),
        "{m}"
    );
    assert!(
        m.contains("sluice_maintenance_rows_total{job=\"views\"} 0"),
        "a failed fold touched no rows: {m}"
    );
    stop.cancel();
    let _ = task.await;
}

#[tokio::test]
async fn readyz_is_503_when_fewer_than_two_months_of_partitions_lie_ahead() {
    let db = TestDb::migrated().await;
    let (addr, stop, task) = start_in_process(&db, &[]).await;
    // Let the new leader's first partitions run finish before taking partitions away.
    wait_for(Duration::from_secs(5), || async {
        is_leader(&addr).await.filter(|l| *l)
    })
    .await;
    let ran = wait_for(Duration::from_secs(10), || async {
        let (_, m) = http_get(&addr, "/metrics").await?;
        m.lines()
            .any(|l| {
                l.starts_with(
                    "sluice_maintenance_runs_total{job=\"partitions\",outcome=\"success\"}",
                ) && !l.ends_with(" 0")
            })
            .then_some(())
    })
    .await;
    assert!(ran.is_some(), "the leader's first partitions run finished");
    let (status, body) = http_get(&addr, "/readyz").await.expect("readyz");
    assert_eq!(status, 200, "{body}");
    let client = db.client().await;
    let next = shared::schema::partitions::Month::of(chrono::Utc::now()).plus(2);
    client
        .batch_execute(&format!("DROP TABLE {}", next.partition_name()))
        .await
        .expect("drop");
    let (status, body) = http_get(&addr, "/readyz").await.expect("readyz");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("\"partitions_ahead_months\":1"), "{body}");
    stop.cancel();
    let _ = task.await;
}
