//! The real analytics SDKs (npm and PyPI packages, installed by `scripts/sdk-deps`) pointed at
//! a real gateway and writer: each reports no delivery error, and each call lands in
//! `analytics_events` as the mapping in `docs/sdks.md` says, exactly once. This module holds
//! what the SDK families' tests share: running a driver script, and reading and checking rows.

mod posthog;
mod retries;
mod segment;

use std::path::PathBuf;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use uuid::Uuid;

use crate::helpers::{writer, Gateway};

/// Where the SDK packages and the driver scripts are.
fn sdk_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/sdk");
    assert!(
        dir.join("node_modules/@segment/analytics-node").exists()
            && dir.join("venv/bin/python").exists(),
        "the SDK packages are not installed: run scripts/sdk-deps"
    );
    dir
}

/// Runs a driver script; its last stdout line is `{"errors": [...]}`.
async fn drive(program: &str, args: &[&str], env: &[(&str, &str)]) -> Value {
    let dir = sdk_dir();
    let exe = match program {
        "python" => dir.join("venv/bin/python").to_string_lossy().into_owned(),
        other => other.to_owned(),
    };
    let mut cmd = tokio::process::Command::new(exe);
    cmd.args(args).current_dir(&dir).kill_on_drop(true);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = tokio::time::timeout(Duration::from_secs(180), cmd.output())
        .await
        .expect("the SDK finished within 3 minutes")
        .expect("the SDK runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let last = stdout
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .unwrap_or("");
    let report: Value = serde_json::from_str(last)
        .unwrap_or_else(|_| panic!("no report from {args:?}:\n{stdout}\n{stderr}"));
    assert!(
        out.status.success() && report["errors"].as_array().is_some_and(Vec::is_empty),
        "{args:?} reported delivery errors: {report}\n{stderr}"
    );
    report
}

fn run_id() -> String {
    format!("{:012}", rand::random::<u64>() % 1_000_000_000_000)
}

/// One stored row.
#[derive(Debug)]
struct Row {
    event_id: Uuid,
    name: String,
    user: Option<String>,
    session: Option<String>,
    at: DateTime<Utc>,
    meta: Value,
}

/// Waits until the app has `n` rows and the queue is empty (every queued entry written and
/// acknowledged, so a doubled event would be there too), then returns the rows by event name.
async fn rows(gw: &Gateway, n: usize) -> Vec<Row> {
    let c = gw.db.client().await;
    let depths = gw.keys().all_depths();
    let got = testkit::wait_for(Duration::from_secs(30), || async {
        let count: i64 = c
            .query_one("SELECT count(*) FROM analytics_events", &[])
            .await
            .ok()?
            .get(0);
        let mut r = crate::helpers::redis_conn().await;
        let queued: Vec<Option<i64>> = redis::cmd("MGET")
            .arg(&depths)
            .query_async(&mut r)
            .await
            .ok()?;
        let queued: i64 = queued.into_iter().flatten().sum();
        (count as usize >= n && queued == 0).then_some(())
    })
    .await;
    assert!(got.is_some(), "{n} rows were stored");
    let rows = c
        .query(
            "SELECT event_id, event_name, user_id, session_id, occurred_at, \
             coalesce(metadata, '{}'::jsonb) FROM analytics_events ORDER BY event_name",
            &[],
        )
        .await
        .expect("rows");
    let rows: Vec<Row> = rows
        .iter()
        .map(|r| Row {
            event_id: r.get(0),
            name: r.get(1),
            user: r.get(2),
            session: r.get(3),
            at: r.get(4),
            meta: r.get(5),
        })
        .collect();
    assert_eq!(rows.len(), n, "exactly once: {rows:#?}");
    for r in &rows {
        let text = r.meta.to_string();
        assert!(
            !text.contains(&gw.app.ingest_key) && r.meta.get("writeKey").is_none(),
            "a key was stored: {text}"
        );
    }
    rows
}

fn find<'a>(rows: &'a [Row], name: &str) -> &'a Row {
    rows.iter()
        .find(|r| r.name == name)
        .unwrap_or_else(|| panic!("no {name} row in {rows:#?}"))
}

fn about_an_hour_ago(at: DateTime<Utc>) {
    let off = (Utc::now() - chrono::Duration::hours(1) - at)
        .num_seconds()
        .abs();
    assert!(off < 120, "the track call's time is kept: {at}");
}

fn props_ok(meta: &Value) {
    assert_eq!(meta["properties"]["plan"], "pro", "{meta}");
    assert_eq!(meta["properties"]["amount"], 42.5);
    assert_eq!(meta["properties"]["nested"]["k"], "v");
    assert_eq!(meta["properties"]["tags"], json!(["a", "b"]));
    assert_eq!(meta["properties"]["unicode"], "héllo ✓");
}

/// The containment query the GIN index serves finds the track call by its properties.
async fn containment_finds(gw: &Gateway, name: &str) {
    let c = gw.db.client().await;
    let n: i64 = c
        .query_one(
            "SELECT count(*) FROM analytics_events \
             WHERE metadata @> '{\"properties\": {\"plan\": \"pro\"}}' AND event_name = $1",
            &[&name],
        )
        .await
        .expect("query")
        .get(0);
    assert_eq!(n, 1);
}

/// Segment, RudderStack: six calls, one row each.
async fn segment_format(gw: &Gateway, which: &str, run: &str, identify_traits_in_context: bool) {
    let rows = rows(gw, 6).await;
    let user = format!("u_{which}_{run}");
    for r in &rows {
        assert_eq!(r.user.as_deref(), Some(user.as_str()), "{r:?}");
    }
    let track = find(&rows, "Order Completed");
    let message_id = format!("msg-{which}-track-{run}");
    assert_eq!(
        track.event_id,
        Uuid::new_v5(
            &ingest_gateway::sdk::map::SDK_NAMESPACE,
            format!("{}:{message_id}", gw.app.app_id).as_bytes()
        )
    );
    assert_eq!(track.meta["messageId"], message_id.as_str());
    assert_eq!(track.meta["type"], "track");
    assert_eq!(
        track.session.as_deref(),
        Some(format!("sess_{run}").as_str())
    );
    assert_eq!(track.meta["context"]["ip"], "203.0.113.7");
    assert_eq!(track.meta["anonymousId"], format!("anon_{run}").as_str());
    assert_eq!(track.meta["integrations"]["Mixpanel"], false);
    about_an_hour_ago(track.at);
    props_ok(&track.meta);
    let identify = find(&rows, "$identify");
    let traits = if identify_traits_in_context {
        &identify.meta["context"]["traits"]
    } else {
        &identify.meta["traits"]
    };
    assert_eq!(traits["email"], "jane@example.com", "{}", identify.meta);
    let page = find(&rows, "$page");
    assert_eq!(page.meta["name"], "Getting Started");
    assert_eq!(page.meta["category"], "Docs");
    assert_eq!(page.meta["properties"]["url"], "https://example.com/docs");
    assert_eq!(find(&rows, "$screen").meta["name"], "Home");
    let group = find(&rows, "$group");
    assert_eq!(group.meta["groupId"], format!("g_{run}").as_str());
    assert_eq!(group.meta["traits"]["employees"], 120);
    assert_eq!(
        find(&rows, "$alias").meta["previousId"],
        format!("prev_{run}").as_str()
    );
    for r in &rows {
        assert!(r.meta["context"]["library"]["name"].is_string(), "{r:?}");
    }
    containment_finds(gw, "Order Completed").await;
}

async fn with_pipeline<F, Fut>(f: F)
where
    F: FnOnce(Gateway) -> Fut,
    Fut: std::future::Future<Output = Gateway>,
{
    let gw = Gateway::start(&[]).await;
    let stop = writer(&gw).await;
    let gw = f(gw).await;
    stop.cancel();
    gw.stop().await;
}

fn host(gw: &Gateway) -> String {
    format!("http://{}", gw.addr)
}
