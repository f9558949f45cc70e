use std::time::Duration;

use testkit::{free_port, http_get, Daemon, TestDb};

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
    assert!(d.wait_ready(Duration::from_secs(20)).await, "{}", d.logs());
    for target in [&d.ops_addr, &addr] {
        let (status, body) = http_get(target, "/readyz").await.expect("readyz");
        assert_eq!(status, 200, "{target}: {body}");
        let (status, _) = http_get(target, "/healthz").await.expect("healthz");
        assert_eq!(status, 200);
    }
    let (_, metrics) = http_get(&d.ops_addr, "/metrics").await.expect("metrics");
    for name in [
        "sluice_events_accepted_total{api=\"native\"} 0",
        "sluice_events_accepted_total{api=\"segment\"} 0",
        "sluice_events_rejected_total{api=\"posthog\",reason=\"invalid_event\"} 0",
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

#[tokio::test]
async fn secrets_never_reach_the_logs() {
    let db = TestDb::migrated().await;
    let pools = shared::db::Pools::new(&db.config()).expect("pools");
    let app = ingest_gateway::apps::create_app(&pools.write, "secret")
        .await
        .expect("app");
    let addr = format!("127.0.0.1:{}", free_port());
    let password = "pw-never-log-7f3a9c";
    let mut env = db.env_vars();
    env.retain(|(k, _)| k != "DB_PASSWORD");
    env.extend(
        [
            ("GATEWAY_ADDR", addr.as_str()),
            ("REDIS_URL", "redis://127.0.0.1:6379/"),
            ("STREAM_PREFIX", "test-secrets"),
            ("DB_PASSWORD", password),
            ("RUST_LOG", "trace"),
            ("LOG_FORMAT", "json"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string())),
    );
    let mut d = Daemon::start(BIN, &env).await;
    // Traffic with the keys in every place a key can be, good and bad.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    for (path, header) in [
        (
            format!("/v1/events?api_key={}", app.ingest_key),
            String::new(),
        ),
        (
            "/v1/events".to_owned(),
            format!("Authorization: Bearer {}\r\n", app.ingest_key),
        ),
        (
            "/v1/events".to_owned(),
            format!("X-API-Key: {}\r\n", app.read_key),
        ),
        (
            "/v1/events".to_owned(),
            "X-API-Key: sk_ingest_wrong-key-5e1d\r\n".to_owned(),
        ),
    ] {
        let mut s = tokio::net::TcpStream::connect(&addr)
            .await
            .expect("connect");
        let body = r#"{"event_name":"a"}"#;
        let req = format!(
            "POST {path} HTTP/1.0\r\nHost: x\r\n{header}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        s.write_all(req.as_bytes()).await.expect("write");
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out).await;
    }
    let _ = d.terminate(Duration::from_secs(10));
    let logs = d.logs();
    assert!(logs.len() > 100, "the daemon logged something: {logs}");
    for secret in [password, &app.ingest_key, &app.read_key, "wrong-key-5e1d"] {
        assert!(!logs.contains(secret), "a secret reached the logs");
    }
    testkit::redis_cleanup("redis://127.0.0.1:6379/", "test-secrets").await;
}

/// Sends one event over a new connection; the status line's code.
async fn post_event(addr: &str, key: &str) -> Option<u16> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
    let body = r#"{"event_name":"after_the_crowd"}"#;
    s.write_all(
        format!(
            "POST /v1/events HTTP/1.0\r\nHost: t\r\nAuthorization: Bearer {key}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    )
    .await
    .ok()?;
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.ok()?;
    String::from_utf8_lossy(&out)
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_idle_connections_do_not_exhaust_the_gateway() {
    const IDLE: usize = 10_000;
    // This process holds the idle sockets; the gateway (its own process, inheriting the limit)
    // holds their other ends.
    let limit = rlimit::increase_nofile_limit(u64::MAX).expect("raise the open-files limit");
    assert!(
        limit >= IDLE as u64 + 1000,
        "the open-files hard limit ({limit}) is too low for {IDLE} connections"
    );
    let db = TestDb::migrated().await;
    let pools = shared::db::Pools::new(&db.config()).expect("pools");
    let app = ingest_gateway::apps::create_app(&pools.write, "crowd")
        .await
        .expect("app");
    let addr = format!("127.0.0.1:{}", free_port());
    let prefix = format!("test-idle-{}", std::process::id());
    let mut env = db.env_vars();
    env.push(("GATEWAY_ADDR".into(), addr.clone()));
    env.push(("REDIS_URL".into(), "redis://127.0.0.1:6379/".into()));
    env.push(("STREAM_PREFIX".into(), prefix.clone()));
    // Idle connections are not cut off during the test.
    env.push(("HEADER_READ_TIMEOUT_MS".into(), "120000".into()));
    let d = Daemon::start(BIN, &env).await;

    let mut idle = Vec::with_capacity(IDLE);
    while idle.len() < IDLE {
        let batch: Vec<_> = (0..500)
            .map(|_| tokio::net::TcpStream::connect(addr.clone()))
            .collect();
        for s in futures::future::join_all(batch).await {
            idle.push(s.expect("an idle connection is accepted"));
        }
    }
    // With all of them open and silent, others are still served, and health answers.
    for _ in 0..5 {
        assert_eq!(post_event(&addr, &app.ingest_key).await, Some(202));
    }
    assert!(matches!(
        http_get(&d.ops_addr, "/readyz").await,
        Some((200, _))
    ));
    let rss_kib = testkit::proc_status_kib(d.child.id(), "VmRSS:").unwrap_or(0);
    eprintln!(
        "gateway RSS with {IDLE} idle connections: {} MiB",
        rss_kib / 1024
    );
    drop(idle);
    testkit::redis_cleanup("redis://127.0.0.1:6379/", &prefix).await;
}

#[tokio::test]
async fn a_database_that_refuses_delays_readiness_and_never_stops_the_gateway() {
    let db = TestDb::migrated().await;
    // A database that does not exist yet: PostgreSQL refuses every connection (3D000).
    let later = format!("{}_later", db.name);
    let addr = format!("127.0.0.1:{}", free_port());
    let mut env: Vec<(String, String)> = db
        .env_vars()
        .into_iter()
        .filter(|(k, _)| k != "DB_NAME")
        .collect();
    env.push(("DB_NAME".into(), later.clone()));
    env.push(("GATEWAY_ADDR".into(), addr));
    env.push(("REDIS_URL".into(), "redis://127.0.0.1:6379/".into()));
    env.push((
        "STREAM_PREFIX".into(),
        format!("test-refused-{}", std::process::id()),
    ));
    let mut d = Daemon::start(BIN, &env).await;
    let refused = testkit::wait_for(Duration::from_secs(20), || async {
        let (status, body) = http_get(&d.ops_addr, "/readyz").await?;
        (status == 503 && body.contains("SQLSTATE 3D000")).then_some(body)
    })
    .await;
    assert!(refused.is_some(), "{}", d.logs());
    assert!(
        d.logs().contains("does not exist (SQLSTATE 3D000"),
        "{}",
        d.logs()
    );
    assert!(
        d.child.try_wait().expect("status").is_none(),
        "still running"
    );

    testkit::connect("postgres")
        .await
        .batch_execute(&format!("CREATE DATABASE {later} TEMPLATE {}", db.name))
        .await
        .expect("create the database");
    assert!(d.wait_ready(Duration::from_secs(30)).await, "{}", d.logs());
    let status = d.terminate(Duration::from_secs(10)).expect("exits");
    assert!(status.success(), "{status:?}");
    let _ = testkit::connect("postgres")
        .await
        .batch_execute(&format!("DROP DATABASE {later} WITH (FORCE)"))
        .await;
}
