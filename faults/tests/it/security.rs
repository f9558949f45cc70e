//! Redis with AUTH and TLS (`rediss://`): the gateway and a writer move events through a Redis
//! that only speaks TLS and wants a password, verifying its certificate against a CA given with
//! `SSL_CERT_FILE`; a wrong password keeps the gateway unready and never shows in its logs.

use std::process::{Command, Stdio};
use std::time::Duration;

use testkit::{free_port, http_get, wait_for, Daemon, TestDb};

/// A CA and a server certificate for localhost, made with the openssl command.
fn certificates(dir: &std::path::Path) {
    let run = |args: &str| {
        let ok = Command::new("sh")
            .arg("-c")
            .arg(format!("cd {} && {args}", dir.display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("openssl")
            .success();
        assert!(ok, "{args}");
    };
    run("openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.pem -days 2 -subj /CN=sluice-test-ca");
    run("openssl req -newkey rsa:2048 -nodes -keyout server.key -out server.csr -subj /CN=localhost");
    run("printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\\n' > ext.cnf && openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out server.pem -days 2 -extfile ext.cnf");
}

/// Starts a gateway that Redis does not take (a wrong password, a certificate nobody trusts):
/// not ready. The gateway has tried Redis and says so; only then is its 503 an answer. Its
/// logs; it is stopped.
async fn refused_gateway(bin: &str, env: &[(String, String)]) -> String {
    let gw = Daemon::start(bin, env).await;
    let tried = wait_for(Duration::from_secs(15), || async {
        gw.logs().contains("unreachable").then_some(())
    })
    .await;
    assert!(tried.is_some(), "{}", gw.logs());
    assert!(matches!(
        http_get(&gw.ops_addr, "/readyz").await,
        Some((503, _))
    ));
    gw.logs()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pipeline_runs_over_redis_with_auth_and_tls_and_a_wrong_password_stays_out_of_logs() {
    let dir = std::env::temp_dir().join(format!("sluice-tls-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).expect("dir");
    certificates(&dir);
    let port = free_port();
    let p = |f: &str| dir.join(f).to_string_lossy().into_owned();
    let mut redis = Command::new("redis-server")
        .args([
            "--port",
            "0",
            "--tls-port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
        ])
        .args([
            "--tls-cert-file",
            &p("server.pem"),
            "--tls-key-file",
            &p("server.key"),
        ])
        .args([
            "--tls-ca-cert-file",
            &p("ca.pem"),
            "--tls-auth-clients",
            "no",
        ])
        .args([
            "--requirepass",
            "s3cret-Redis-pw",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .stdout(Stdio::null())
        .spawn()
        .expect("redis-server");

    let db = TestDb::migrated().await;
    let pools = shared::db::Pools::new(&db.config()).expect("pools");
    let app = ingest_gateway::apps::create_app(&pools.write, "tls")
        .await
        .expect("app");
    let bins = testkit::bin_dir().expect("binaries");
    let gateway_addr = format!("127.0.0.1:{}", free_port());
    let mut env = db.env_vars();
    env.extend(
        [
            (
                "STREAM_PREFIX",
                format!("tls-{}", uuid::Uuid::new_v4().simple()),
            ),
            ("GATEWAY_ADDR", gateway_addr.clone()),
            ("SSL_CERT_FILE", p("ca.pem")),
            ("BATCH_LINGER_MS", "50".into()),
        ]
        .map(|(k, v)| (k.to_owned(), v)),
    );
    let bin = |b: &str| bins.join(b).to_string_lossy().into_owned();

    // A wrong password: not ready, and the password is nowhere in the logs.
    let mut bad = env.clone();
    bad.push((
        "REDIS_URL".into(),
        format!("rediss://:Wrong-pw-123@localhost:{port}/"),
    ));
    let logs = refused_gateway(&bin("ingest-gateway"), &bad).await;
    assert!(!logs.contains("Wrong-pw-123"), "{logs}");

    // The right password but a certificate nobody trusts (no SSL_CERT_FILE): not ready either.
    let mut untrusted: Vec<(String, String)> = env
        .iter()
        .filter(|(k, _)| k != "SSL_CERT_FILE")
        .cloned()
        .collect();
    untrusted.push((
        "REDIS_URL".into(),
        format!("rediss://:s3cret-Redis-pw@localhost:{port}/"),
    ));
    refused_gateway(&bin("ingest-gateway"), &untrusted).await;

    env.push((
        "REDIS_URL".into(),
        format!("rediss://:s3cret-Redis-pw@localhost:{port}/"),
    ));
    let gw = Daemon::start(&bin("ingest-gateway"), &env).await;
    let mut wenv = env.clone();
    wenv.push(("WRITER_CONSUMER_NAME".into(), "tls-writer".into()));
    let writer = Daemon::start(&bin("batch-writer"), &wenv).await;
    let ready = wait_for(Duration::from_secs(20), || async {
        matches!(http_get(&gw.ops_addr, "/readyz").await, Some((200, _))).then_some(())
    })
    .await;
    assert!(ready.is_some(), "gateway ready over TLS: {}", gw.logs());

    let sender = faults::load::Sender::new(&gateway_addr, &app.ingest_key);
    for _ in 0..10 {
        assert!(sender.send(10).await.is_some(), "202 over TLS");
    }
    let client = db.client().await;
    let stored = wait_for(Duration::from_secs(20), || async {
        let n: i64 = client
            .query_one("SELECT count(*) FROM analytics_events", &[])
            .await
            .ok()?
            .get(0);
        (n == 100).then_some(n)
    })
    .await;
    assert_eq!(stored, Some(100), "writer logs: {}", writer.logs());
    for d in [&gw, &writer] {
        assert!(!d.logs().contains("s3cret-Redis-pw"));
    }
    drop((gw, writer));
    let _ = redis.kill();
    let _ = redis.wait();
    let _ = std::fs::remove_dir_all(&dir);
}
