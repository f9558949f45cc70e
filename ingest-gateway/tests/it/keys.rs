//! Keys that work at once and stop within a second on every gateway, and a flood of bad keys
//! that costs bounded database work; the key and app management commands.

use std::time::{Duration, Instant};

use http::Method;
use testkit::{http_get, wait_for, TestDb};

use crate::helpers::{second_gateway as second, Gateway};

const BIN: &str = env!("CARGO_BIN_EXE_ingest-gateway");

fn cli(db: &TestDb, args: &[&str]) -> serde_json::Value {
    let out = std::process::Command::new(BIN)
        .args(args)
        .envs(db.env_vars())
        .output()
        .expect("run ingest-gateway");
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    serde_json::Value::Array(lines)
}

/// POSTs one event to `addr` with `key`: the status and the message.
async fn post(addr: &str, key: &str) -> (u16, String) {
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Full<bytes::Bytes>>();
    let req = http::Request::builder()
        .method(Method::POST)
        .uri(format!("http://{addr}/v1/events"))
        .header("authorization", format!("Bearer {key}"))
        .header("content-type", "application/json")
        .body(http_body_util::Full::new(bytes::Bytes::from_static(
            br#"{"event_name":"k"}"#,
        )))
        .expect("request");
    let resp = client.request(req).await.expect("response");
    let status = resp.status().as_u16();
    let body = http_body_util::BodyExt::collect(resp.into_body())
        .await
        .expect("body")
        .to_bytes();
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    (status, v["message"].as_str().unwrap_or_default().to_owned())
}

fn lookups(metrics: &str, outcome: &str) -> u64 {
    let name = format!("sluice_key_lookups_total{{outcome=\"{outcome}\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&name)?.trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn a_new_key_works_at_once_and_a_revoked_one_stops_within_a_second_on_every_gateway() {
    // The periodic reload is out of the picture: an hour.
    let g1 = Gateway::start(&[("KEY_REFRESH_MS", "3600000")]).await;
    let (g2, stop2) = second(&g1).await;
    let g1_addr = g1.addr.to_string();
    let app = g1.app.app_id.clone();
    let created = cli(
        &g1.db,
        &["keys", "create", "--app", &app, "--kind", "ingest"],
    );
    let key = created[0]["key"].as_str().expect("key").to_owned();
    assert!(key.starts_with("sk_ingest_"));
    assert_eq!(post(&g1_addr, &key).await.0, 202, "gateway 1 at once");
    assert_eq!(post(&g2, &key).await.0, 202, "gateway 2 at once");

    let unknown = format!("sk_ingest_{}", "ab".repeat(32));
    let (status, message) = post(&g1_addr, &unknown).await;
    assert_eq!(status, 401);
    assert!(message.contains("unknown"), "{message}");

    cli(&g1.db, &["keys", "revoke", &key]);
    let revoked_at = Instant::now();
    for addr in [&g1_addr, &g2] {
        let refused = wait_for(Duration::from_secs(5), || async {
            let (status, message) = post(addr, &key).await;
            (status == 401).then_some(message)
        })
        .await;
        let message = refused.expect("refused");
        assert!(message.contains("revoked"), "{message}");
    }
    let took = revoked_at.elapsed();
    assert!(took < Duration::from_secs(1), "revocation took {took:?}");
    stop2.cancel();
    g1.stop().await;
}

/// Transactions committed in the test's database so far, once the count has settled (backends
/// report their counts when idle).
async fn commits(db: &TestDb) -> i64 {
    let c = db.client().await;
    let name: String = c
        .query_one("SELECT current_database()", &[])
        .await
        .expect("name")
        .get(0);
    let read = || async {
        c.query_one(
            "SELECT xact_commit FROM pg_stat_database WHERE datname = $1",
            &[&name],
        )
        .await
        .expect("stats")
        .get::<_, i64>(0)
    };
    // Polls until two reads 1.5 s apart agree (our own reads count too), for at most 20 s.
    let mut last = read().await;
    for _ in 0..13 {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let now = read().await;
        if now - last <= 2 {
            return now;
        }
        last = now;
    }
    panic!("the commit count did not settle")
}

#[tokio::test]
async fn a_key_the_cache_does_not_know_is_looked_up_once() {
    let g = Gateway::start(&[
        ("KEY_REFRESH_MS", "3600000"),
        ("PRIVACY_POLL_MS", "3600000"),
    ])
    .await;
    // The gateway has loaded its keys twice (at start, and once its key-change session
    // listened), so no reload can pick the key below up: only a lookup can.
    let ops = g.ops.to_string();
    let reloaded = wait_for(Duration::from_secs(10), || async {
        let m = http_get(&ops, "/metrics").await?.1;
        let n: u64 = m.lines().find_map(|l| {
            l.strip_prefix("sluice_key_reloads_total ")?
                .trim()
                .parse()
                .ok()
        })?;
        (n >= 2).then_some(())
    })
    .await;
    assert!(reloaded.is_some(), "the key cache loaded twice");
    // A key written with no notification (the trigger off): only the lookup can find it.
    let key = format!("sk_ingest_{}", "cd".repeat(32));
    let c = g.db.client().await;
    c.batch_execute("ALTER TABLE api_keys DISABLE TRIGGER api_keys_notify")
        .await
        .expect("trigger off");
    c.execute(
        "INSERT INTO api_keys (key_hash, app_id, kind, key_prefix) VALUES ($1, $2, 'ingest', 'sk_ingest_cdcd')",
        &[&ingest_gateway::apps::hash_key(&key).to_vec(), &g.app.app_id],
    )
    .await
    .expect("key");
    let before = lookups(
        &http_get(&ops, "/metrics").await.expect("metrics").1,
        "live",
    );
    let addr = g.addr.to_string();
    for _ in 0..5 {
        assert_eq!(post(&addr, &key).await.0, 202);
    }
    let after = lookups(
        &http_get(&ops, "/metrics").await.expect("metrics").1,
        "live",
    );
    assert_eq!(after - before, 1, "looked up once, then cached");
    g.stop().await;
}

#[tokio::test]
async fn a_flood_of_bad_keys_costs_a_bounded_number_of_database_queries() {
    let g = Gateway::start(&[
        ("KEY_REFRESH_MS", "3600000"),
        ("PRIVACY_POLL_MS", "3600000"),
    ])
    .await;
    let addr = g.addr.to_string();
    let real = g.app.ingest_key.clone();
    assert_eq!(post(&addr, &real).await.0, 202);
    let before = commits(&g.db).await;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for t in 0..50 {
        let (addr, real) = (addr.clone(), real.clone());
        tasks.push(tokio::spawn(async move {
            let (mut refused, mut real_ok) = (0, 0);
            for i in 0..200 {
                // Well-formed keys nobody issued, all different; one in ten malformed.
                let key = if i % 10 == 0 {
                    format!("garbage-{t}-{i}")
                } else {
                    format!("sk_ingest_{:064x}", (t as u128) << 64 | i as u128)
                };
                // 401 when looked up (or not shaped like a key), 503 past the lookup budget.
                if matches!(post(&addr, &key).await.0, 401 | 503) {
                    refused += 1;
                }
                // The app's real key keeps working in the middle of the flood.
                if i % 50 == 0 && post(&addr, &real).await.0 == 202 {
                    real_ok += 1;
                }
            }
            (refused, real_ok)
        }));
    }
    let (mut refused, mut real_ok) = (0, 0);
    for t in tasks {
        let (r, k) = t.await.expect("task");
        refused += r;
        real_ok += k;
    }
    let secs = started.elapsed().as_secs() + 1;
    assert_eq!(refused, 10_000, "every bad key is refused");
    assert_eq!(real_ok, 200, "the real key works during the flood");
    let queries = commits(&g.db).await - before;
    let bound = ingest_gateway::auth::LOOKUPS_PER_SEC as i64 * (secs as i64 + 1) + 20;
    assert!(
        queries <= bound,
        "{queries} database queries for 10,000 bad keys in {secs} s (bound {bound})"
    );
    let m = http_get(&g.ops.to_string(), "/metrics")
        .await
        .expect("metrics")
        .1;
    assert!(lookups(&m, "over_budget") > 0, "the budget was reached");
    g.stop().await;
}

#[tokio::test]
async fn apps_and_keys_are_listed_created_and_rotated_from_the_command_line() {
    let db = TestDb::migrated().await;
    let a = cli(&db, &["apps", "create", "--name", "shop"]);
    let b = cli(&db, &["apps", "create", "--name", "blog"]);
    let app = a[0]["app_id"].as_str().expect("app").to_owned();
    let apps = cli(&db, &["apps", "list"]);
    let names: Vec<&str> = apps
        .as_array()
        .expect("lines")
        .iter()
        .map(|v| v["name"].as_str().expect("name"))
        .collect();
    assert_eq!(names, ["shop", "blog"]);
    assert_eq!(apps[0]["live_keys"], 2);
    assert!(apps[0]["created_at"].is_string());
    assert!(apps[0]["rate_limit_events_per_sec"].is_null());

    // Rotation: a new read key, then the old one revoked.
    let new = cli(&db, &["keys", "create", "--app", &app, "--kind", "read"]);
    let new_key = new[0]["key"].as_str().expect("key");
    assert!(new_key.starts_with("sk_read_"));
    let old = a[0]["read_key"].as_str().expect("read key");
    cli(&db, &["keys", "revoke", old]);
    let keys = cli(&db, &["keys", "list", "--app", &app]);
    let keys = keys.as_array().expect("lines");
    assert_eq!(keys.len(), 3);
    let listed = serde_json::to_string(keys).expect("json");
    for clear in [new_key, old, a[0]["ingest_key"].as_str().expect("key")] {
        assert!(!listed.contains(&clear[12..]), "a key is listed in clear");
    }
    let revoked: Vec<bool> = keys.iter().map(|k| !k["revoked_at"].is_null()).collect();
    assert_eq!(revoked.iter().filter(|r| **r).count(), 1);
    assert_eq!(cli(&db, &["apps", "list"])[0]["live_keys"], 2);
    let _ = b;

    let out = std::process::Command::new(BIN)
        .args(["keys", "create", "--app", "app_nope", "--kind", "ingest"])
        .envs(db.env_vars())
        .output()
        .expect("run");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no app app_nope"));
}
