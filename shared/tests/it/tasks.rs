//! A background task that dies makes the daemon's `/healthz` and `/readyz` answer 503 and is
//! counted on `/metrics`; one stopped on purpose does not.

use std::time::Duration;

use shared::daemon::Ops;
use shared::metrics::Daemon;
use shared::ops::always_ready;
use shared::tasks::Tasks;
use testkit::http_get;
use tokio_util::sync::CancellationToken;

#[tokio::test]
async fn a_dead_background_task_turns_health_and_readiness_503() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let shutdown = CancellationToken::new();
    let tasks = Tasks::new(CancellationToken::new());
    let ops = Ops::start(
        Daemon::Writer,
        listener,
        always_ready(),
        shutdown.clone(),
        &tasks,
    );
    let (status, _) = http_get(&addr, "/healthz").await.expect("healthz");
    assert_eq!(status, 200);
    let stop = tasks.stop_token();
    tasks.spawn("keeps_going", async move { stop.cancelled().await });
    tasks
        .spawn("key_refresh", async {
            tokio::time::sleep(Duration::from_millis(10)).await;
            panic!("lost the database for good")
        })
        .await
        .expect("recorded");
    let (status, body) = http_get(&addr, "/healthz").await.expect("healthz");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("key_refresh"), "{body}");
    assert!(!body.contains("keeps_going"), "{body}");
    let (status, body) = http_get(&addr, "/readyz").await.expect("readyz");
    assert_eq!(status, 503, "{body}");
    let (_, metrics) = http_get(&addr, "/metrics").await.expect("metrics");
    assert!(
        metrics.contains("sluice_background_task_deaths_total{task=\"key_refresh\"} 1"),
        "{metrics}"
    );
    shutdown.cancel();
    ops.stop().await;
}
