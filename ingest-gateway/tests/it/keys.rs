//! Keys that work at once and stop within a second on every gateway, and a flood of bad keys
//! that costs bounded database work; the key and app management commands.

use std::time::{Duration, Instant};

use http::Method;
use shared::testing::{http_get, wait_for, TestDb};
use tokio_util::sync::CancellationToken;

use crate::helpers::Gateway;

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

/// A second gateway on the first one's database and streams.
async fn second(first: &Gateway) -> (String, CancellationToken) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let ops = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let stop = CancellationToken::new();
    tokio::spawn(ingest_gateway::run(
        first.config.clone(),
        listener,
        ops,
        stop.clone(),
    ));
    let up = wait_for(Duration::from_secs(10), || http_get(&addr, "/healthz")).await;
    assert!(up.is_some(), "second gateway up");
    (addr, stop)
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

#[tokio::test]
async fn a_flood_of_bad_keys_costs_a_bounded_number_of_database_lookups() {
    let g = Gateway::start(&[]).await;
    let addr = g.addr.to_string();
    let ops = g.ops.to_string();
    let before = http_get(&ops, "/metrics").await.expect("metrics").1;
    let looked = |m: &str| lookups(m, "unknown") + lookups(m, "live") + lookups(m, "revoked");
    let started = Instant::now();
    let mut tasks = Vec::new();
    for t in 0..50 {
        let addr = addr.clone();
        tasks.push(tokio::spawn(async move {
            let mut refused = 0;
            for i in 0..200 {
                // Well-formed keys nobody issued, all different; and one in ten malformed.
                let key = if i % 10 == 0 {
                    format!("garbage-{t}-{i}")
                } else {
                    format!("sk_ingest_{:064x}", (t as u128) << 64 | i as u128)
                };
                if post(&addr, &key).await.0 == 401 {
                    refused += 1;
                }
            }
            refused
        }));
    }
    let mut refused = 0;
    for t in tasks {
        refused += t.await.expect("task");
    }
    let secs = started.elapsed().as_secs() + 1;
    assert_eq!(refused, 10_000, "every bad key is refused");
    let after = http_get(&ops, "/metrics").await.expect("metrics").1;
    let n = looked(&after) - looked(&before);
    let bound = ingest_gateway::auth::LOOKUPS_PER_SEC as u64 * (secs + 1);
    assert!(n <= bound, "{n} lookups in {secs} s (bound {bound})");
    assert!(lookups(&after, "over_budget") > 0, "the budget was reached");
    // The app's real key still works during and after the flood.
    assert_eq!(g.post(r#"{"event_name":"after"}"#).await.status, 202);
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
