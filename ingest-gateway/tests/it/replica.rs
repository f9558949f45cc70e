//! A real streaming replica (made by pg_basebackup) serves the read API; when it goes down the
//! API fails clearly (503) instead of hanging or answering 500.

use std::time::Duration;

use chrono::Utc;
use http::Method;
use shared::testing::{Replica, TestDb};

use crate::helpers::Gateway;

#[tokio::test]
async fn a_streaming_replica_serves_the_reads_and_its_loss_is_a_clear_503() {
    let port = shared::testing::free_port();
    let replica = match Replica::start(port).await {
        Ok(r) => r,
        Err(e) => panic!("cannot make a streaming replica: {e}"),
    };
    // The test's database is created on the primary after the replica started: it replicates.
    let db = TestDb::migrated().await;
    let name = db.name.clone();
    let on_replica = shared::testing::wait_for(Duration::from_secs(90), || {
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
    let seen = shared::testing::wait_for(Duration::from_secs(10), || async {
        let r = gw
            .request(Method::GET, &path, &[("authorization", &auth)], "")
            .await;
        (r.body["events"][0]["events"] == 7).then_some(r)
    })
    .await;
    assert!(seen.is_some(), "the replica served the new rows");

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
