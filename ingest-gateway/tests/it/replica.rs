//! A real streaming replica (made by pg_basebackup) serves the read API; when it goes down the
//! API fails clearly (503) instead of hanging or answering 500.

use std::time::Duration;

use chrono::Utc;
use http::Method;
use testkit::{Replica, TestDb};

use crate::helpers::Gateway;

#[tokio::test]
async fn a_streaming_replica_serves_the_reads_and_its_loss_is_a_clear_503() {
    let port = testkit::free_port();
    let replica = match Replica::start(port).await {
        Ok(r) => r,
        Err(e) => panic!("cannot make a streaming replica: {e}"),
    };
    // The test's database is created on the primary after the replica started: it replicates.
    let db = TestDb::migrated().await;
    let name = db.name.clone();
    let on_replica = testkit::wait_for(Duration::from_secs(90), || {
        let name = name.clone();
        async move {
            let (c, conn) = tokio_postgres::Config::new()
                .host("127.0.0.1")
                .port(port)
                .user("postgres")
                .dbname(&name)
                .connect(tokio_postgres::NoTls)
                .await
                .ok()?;
            tokio::spawn(conn);
            let n: i64 = c
                .query_one("SELECT count(*) FROM sluice_schema_migrations", &[])
                .await
                .ok()?
                .get(0);
            (n > 0).then_some(())
        }
    })
    .await;
    assert!(
        on_replica.is_some(),
        "the test database reached the replica"
    );
    let port_s = port.to_string();
    let gw = Gateway::start_on(
        db,
        &[("DB_READ_HOST", "127.0.0.1"), ("DB_READ_PORT", &port_s)],
    )
    .await
    .expect("gateway on a replica");
    // The read pool is the replica's.
    let mut config = gw.db.config();
    config.replica = Some(shared::config::PgEndpoint {
        port,
        host: "127.0.0.1".into(),
        ..config.primary.clone()
    });
    let pools = shared::db::Pools::new(&config).expect("pools");
    let in_recovery: bool = pools
        .read
        .query_one("replica check", "SELECT pg_is_in_recovery()", &[])
        .await
        .expect("query")
        .get(0);
    assert!(in_recovery, "reads go to the replica");

    // Rows written on the primary appear in the API, read from the replica.
    let c = gw.db.client().await;
    c.batch_execute(&format!(
        "INSERT INTO analytics_events (event_id, app_id, event_name, occurred_at, received_at, user_id) \
         SELECT gen_random_uuid(), '{}', 'view', now(), now(), 'u' || i FROM generate_series(1, 7) i",
        gw.app.app_id
    ))
    .await
    .expect("rows");
    let today = Utc::now().date_naive();
    let auth = format!("Bearer {}", gw.app.read_key);
    let path = format!("/v1/stats/top-events?from={today}&to={today}");
    let seen = testkit::wait_for(Duration::from_secs(10), || async {
        let r = gw
            .request(Method::GET, &path, &[("authorization", &auth)], "")
            .await;
        (r.body["events"][0]["events"] == 7).then_some(r)
    })
    .await;
    assert!(seen.is_some(), "the replica served the new rows");
    erasure_waits_for_the_replica(&gw, port, &path, &auth).await;

    replica.stop();
    let started = std::time::Instant::now();
    let r = gw
        .request(
            Method::GET,
            &format!("/v1/stats/daily?from={today}&to={today}"),
            &[("authorization", &auth)],
            "",
        )
        .await;
    assert_eq!(
        (r.status, r.body["error"].as_str()),
        (503, Some("db_unavailable")),
        "{}",
        r.body
    );
    assert!(r.headers.contains_key("retry-after"));
    assert!(started.elapsed() < Duration::from_secs(15));
    gw.stop().await;
}

/// An erasure's summary fold must reach the replica before the cache generation moves: with
/// the replica's replay paused, the request waits in `summary`; resumed, it finishes, and the
/// stats read from the replica right after `done` no longer count the user.
async fn erasure_waits_for_the_replica(gw: &Gateway, port: u16, path: &str, auth: &str) {
    use maintenance_worker::erasure::{self, ErasureCtx, State};
    let jobs = maintenance_worker::jobs::JobCtx {
        db: shared::db::Pools::new(&gw.db.config())
            .expect("pools")
            .write,
        clock: maintenance_worker::clock::Clock::System,
        retention_months: 12,
        premake_months: 6,
        dedupe_window: Duration::from_secs(86_400),
    };
    let ctx = ErasureCtx::new(jobs.clone(), tokio_util::sync::CancellationToken::new());
    ingest_gateway::privacy::create_erasure(&jobs.db, &gw.app.app_id, &["u1".into()], false)
        .await
        .expect("request");
    let (replica, conn) = tokio_postgres::Config::new()
        .host("127.0.0.1")
        .port(port)
        .user("postgres")
        .dbname("postgres")
        .connect(tokio_postgres::NoTls)
        .await
        .expect("replica");
    tokio::spawn(conn);
    replica
        .batch_execute("SELECT pg_wal_replay_pause()")
        .await
        .expect("pause");
    let held = testkit::wait_for(Duration::from_secs(20), || async {
        let p = erasure::tick(&ctx).await.expect("tick")?;
        (p.state == State::Summary && p.waiting).then_some(())
    })
    .await;
    replica
        .batch_execute("SELECT pg_wal_replay_resume()")
        .await
        .expect("resume");
    assert!(
        held.is_some(),
        "the request waits for the replica in summary"
    );
    let done = testkit::wait_for(Duration::from_secs(20), || async {
        let p = erasure::tick(&ctx).await.expect("tick")?;
        (p.state == State::Done).then_some(())
    })
    .await;
    assert!(done.is_some(), "done once the replica replayed the fold");
    let r = gw
        .request(Method::GET, path, &[("authorization", auth)], "")
        .await;
    assert_eq!(r.body["events"][0]["events"], 6, "{}", r.body);
}
