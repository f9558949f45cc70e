use std::time::{Duration, Instant};

use shared::config::DbConfig;
use shared::db::{DbError, Pools};
use testkit::TestDb;

#[tokio::test]
async fn the_read_pool_falls_back_to_the_primary_and_health_reports_both() {
    let db = TestDb::migrated().await;
    let config = db.config();
    assert!(config.replica.is_none());
    let pools = Pools::new(&config).expect("pools");
    pools.write.warm().await.expect("warm write");
    pools.read.warm().await.expect("warm read");
    let row = pools
        .read
        .query_one("which database", "SELECT current_database()", &[])
        .await
        .expect("read");
    assert_eq!(row.get::<_, String>(0), db.name);

    let health = pools.health().await;
    assert_eq!(health.len(), 2);
    assert_eq!(health[0].pool, "write");
    assert_eq!(health[1].pool, "read");
    for h in &health {
        assert!(h.reachable, "{h:?}");
        assert!(h.size >= 1, "{h:?}");
        assert!(h.idle <= h.size, "{h:?}");
        assert_eq!(h.waiting, 0);
        assert_eq!(h.max, 4);
        assert!(h.error.is_none());
    }
}

#[tokio::test]
async fn the_health_check_reports_an_unreachable_server() {
    let mut config = TestDb::migrated().await.config();
    config.primary.port = closed_port();
    config.connect_timeout = Duration::from_millis(500);
    let pools = Pools::new(&config).expect("pools");
    let health = pools.health().await;
    assert!(!health[0].reachable);
    assert!(health[0].error.as_deref().unwrap_or("").contains("write"));
    assert!(
        pools.write.warm().await.is_err(),
        "warming an unreachable pool fails"
    );
}

#[tokio::test]
async fn the_minimum_is_kept_warm_and_old_connections_are_retired() {
    let db = TestDb::migrated().await;
    let mut config = db.config();
    config.primary.pool_min = 3;
    let pools = Pools::new(&config).expect("pools");
    pools.write.warm().await.expect("warm");
    assert_eq!(pools.write.status().size, 3);
    assert_eq!(pools.write.status().available, 3);
    assert_eq!(pools.write.retire_old(), 0, "young connections stay");

    config.max_lifetime = Duration::from_millis(1);
    let pools = Pools::new(&config).expect("pools");
    pools.write.warm().await.expect("warm");
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(pools.write.retire_old(), 3);
    assert_eq!(pools.write.status().size, 0);
    pools.write.warm().await.expect("re-warm");
    assert_eq!(pools.write.status().size, 3);
}

#[tokio::test]
#[tracing_test::traced_test]
async fn a_query_over_slow_query_ms_is_logged_with_its_duration() {
    let db = TestDb::migrated().await;
    let mut config: DbConfig = db.config();
    config.slow_query = Duration::from_millis(100);
    let pools = Pools::new(&config).expect("pools");
    pools
        .write
        .query("quick probe", "SELECT 1", &[])
        .await
        .expect("quick");
    assert!(!logs_contain("Slow query"));
    pools
        .write
        .query("sleepy probe", "SELECT pg_sleep(0.3)", &[])
        .await
        .expect("slow");
    assert!(logs_contain("Slow query"));
    assert!(logs_contain("sleepy probe"));
    assert!(logs_contain("duration_ms"));
}

#[tokio::test]
async fn the_statement_timeout_cancels_a_long_query() {
    let db = TestDb::migrated().await;
    let mut config = db.config();
    config.statement_timeout = Duration::from_millis(300);
    let pools = Pools::new(&config).expect("pools");
    let started = Instant::now();
    let err = pools
        .write
        .query("long sleep", "SELECT pg_sleep(31)", &[])
        .await
        .expect_err("cancelled");
    assert!(err.is_statement_timeout(), "{err}");
    assert!(err.to_string().starts_with("long sleep:"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(10));
    // The connection survives and serves the next query.
    pools
        .write
        .query("after", "SELECT 1", &[])
        .await
        .expect("usable");
}

#[tokio::test]
async fn the_transaction_helper_commits_on_ok_and_rolls_back_on_err() {
    let db = TestDb::migrated().await;
    let pools = Pools::new(&db.config()).expect("pools");
    pools
        .write
        .transaction("add app", |tx| {
            Box::pin(async move {
                tx.execute("INSERT INTO apps (app_id, name) VALUES ('a1', 'one')", &[])
                    .await
                    .map_err(DbError::query("add app"))?;
                Ok(())
            })
        })
        .await
        .expect("commit");
    let err = pools
        .write
        .transaction("add two apps", |tx| {
            Box::pin(async move {
                tx.execute("INSERT INTO apps (app_id, name) VALUES ('a2', 'two')", &[])
                    .await
                    .map_err(DbError::query("add app"))?;
                tx.execute("INSERT INTO apps (app_id, name) VALUES ('a1', 'dup')", &[])
                    .await
                    .map_err(DbError::query("add duplicate app"))?;
                Ok(())
            })
        })
        .await
        .expect_err("duplicate key");
    assert_eq!(err.sql_state(), Some("23505"));
    let rows = pools
        .read
        .query("list apps", "SELECT app_id FROM apps ORDER BY 1", &[])
        .await
        .expect("list");
    let ids: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
    assert_eq!(ids, vec!["a1"], "the failed transaction left nothing");
}

fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

/// Whether the pool's connection is encrypted, or the error when it cannot connect.
async fn ssl_in_use(config: &DbConfig) -> Result<bool, String> {
    let pools = Pools::new(config).map_err(|e| e.to_string())?;
    pools
        .write
        .query_one(
            "ssl in use",
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .map(|r| r.get::<_, bool>(0))
        .map_err(|e| e.to_string())
}

#[tokio::test]
async fn db_sslmode_encrypts_and_verifies_as_libpq_does() {
    use shared::config::SslMode;
    // The local server's certificate is Debian's self-signed "snakeoil" one, issued for localhost.
    let snakeoil = "/etc/ssl/certs/ssl-cert-snakeoil.pem";
    let db = TestDb::migrated().await;
    let mut config = db.config();
    config.connect_timeout = Duration::from_secs(3);
    config.acquire_timeout = Duration::from_secs(3);
    let with = |mode, root: Option<&str>, host: &str| {
        let mut c = config.clone();
        c.tls.mode = mode;
        c.tls.root_cert = root.map(str::to_owned);
        c.primary.host = host.to_owned();
        c
    };
    assert_eq!(
        ssl_in_use(&with(SslMode::Disable, None, "127.0.0.1")).await,
        Ok(false)
    );
    assert_eq!(
        ssl_in_use(&with(SslMode::Prefer, None, "127.0.0.1")).await,
        Ok(true)
    );
    assert_eq!(
        ssl_in_use(&with(SslMode::Require, None, "127.0.0.1")).await,
        Ok(true)
    );
    // Trusted through DB_SSLROOTCERT; verify-ca ignores the name, verify-full does not.
    let root = Some(snakeoil);
    assert_eq!(
        ssl_in_use(&with(SslMode::VerifyCa, root, "127.0.0.1")).await,
        Ok(true)
    );
    assert!(ssl_in_use(&with(SslMode::VerifyFull, root, "127.0.0.1"))
        .await
        .is_err());
    assert_eq!(
        ssl_in_use(&with(SslMode::VerifyFull, root, "localhost")).await,
        Ok(true)
    );
}
