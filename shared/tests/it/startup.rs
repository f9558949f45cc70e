//! A daemon's start-up against a server that refuses it: the pool waits, not ready, with the
//! server's own message and SQLSTATE in its log, its `/readyz` detail and its metric, and
//! starts as soon as the server accepts.

use std::time::Duration;

use shared::daemon::{self, Startup};
use shared::metrics::PoolName;
use testkit::{connect, wait_for, TestDb};
use tokio_util::sync::CancellationToken;

#[tokio::test]
#[tracing_test::traced_test]
async fn a_refused_pool_waits_not_ready_and_starts_once_the_server_accepts() {
    let metrics = shared::metrics::install();
    let db = TestDb::migrated().await;
    // A database that does not exist yet: the server refuses every connection (3D000).
    let later = format!("{}_later", db.name);
    let mut config = db.config();
    config.primary.dbname = later.clone();
    let pool = daemon::pool(&config, PoolName::Write).expect("pool");
    let startup = Startup::default();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn({
        let (pool, startup, shutdown) = (pool.clone(), startup.clone(), shutdown.clone());
        async move { daemon::connect(&pool, &startup, &shutdown).await }
    });

    let check = startup.ready_check();
    let refusal = wait_for(Duration::from_secs(20), || async {
        let r = check().await;
        let e = r.detail["database_error"].as_str()?.to_owned();
        (!r.ready).then_some(e)
    })
    .await
    .expect("/readyz shows the refusal");
    assert!(
        refusal.contains("warm pool")
            && refusal.contains("does not exist")
            && refusal.contains("SQLSTATE 3D000"),
        "the operation, the server's message and SQLSTATE: {refusal}"
    );
    assert!(logs_contain("SQLSTATE 3D000") && logs_contain("not ready, retrying"));
    let rendered = metrics.render();
    assert!(
        rendered.contains(r#"sluice_db_connect_errors_total{pool="write",sqlstate="3D000"}"#),
        "{rendered}"
    );
    assert!(!task.is_finished(), "the pool keeps waiting");

    connect("postgres")
        .await
        .batch_execute(&format!("CREATE DATABASE {later} TEMPLATE {}", db.name))
        .await
        .expect("create the database");
    let started = tokio::time::timeout(Duration::from_secs(30), task)
        .await
        .expect("connects once the server accepts")
        .expect("task")
        .expect("no start error");
    assert!(started);
    assert_eq!(pool.status().size, 1, "the minimum is warm");
    startup.started(daemon::pool_ready(pool.clone()));
    assert!(check().await.ready);
    drop(pool);
    let _ = connect("postgres")
        .await
        .batch_execute(&format!("DROP DATABASE {later} WITH (FORCE)"))
        .await;
}

#[tokio::test]
async fn a_starting_pool_gives_up_on_shutdown() {
    let db = TestDb::migrated().await;
    let mut config = db.config();
    config.primary.dbname = format!("{}_never", db.name);
    let pool = daemon::pool(&config, PoolName::Write).expect("pool");
    let shutdown = CancellationToken::new();
    shutdown.cancel();
    let started = daemon::connect(&pool, &Startup::default(), &shutdown)
        .await
        .expect("no start error");
    assert!(!started);
}
