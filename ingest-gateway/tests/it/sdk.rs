//! The real analytics SDKs (npm and PyPI packages, installed by `scripts/sdk-deps`) pointed at
//! a real gateway and writer: each reports no delivery error, and each call lands in
//! `analytics_events` as the mapping in `docs/sdks.md` says, exactly once.

use std::path::PathBuf;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn segment_analytics_node_delivers_every_call_type() {
    with_pipeline(|gw| async move {
        let run = run_id();
        drive(
            "node",
            &["sdk.js", "segment", &host(&gw), &gw.app.ingest_key, &run],
            &[],
        )
        .await;
        segment_format(&gw, "segment", &run, false).await;
        gw
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rudderstack_node_delivers_gzip_labelled_as_a_form() {
    with_pipeline(|gw| async move {
        let run = run_id();
        drive(
            "node",
            &["sdk.js", "rudder", &host(&gw), &gw.app.ingest_key, &run],
            &[],
        )
        .await;
        segment_format(&gw, "rudder", &run, false).await;
        let track = rows(&gw, 6).await;
        assert_eq!(find(&track, "$identify").meta["channel"], "server");
        gw
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn segment_python_delivers_every_call_type() {
    with_pipeline(|gw| async move {
        let run = run_id();
        let key = gw.app.ingest_key.clone();
        drive(
            "python",
            &["sdk.py", "segment", &host(&gw), &key, &run, "gzip"],
            &[],
        )
        .await;
        segment_format(&gw, "segment", &run, false).await;
        gw
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rudderstack_python_gets_exactly_200_and_delivers() {
    with_pipeline(|gw| async move {
        let run = run_id();
        drive(
            "python",
            &["sdk.py", "rudder", &host(&gw), &gw.app.ingest_key, &run],
            &[],
        )
        .await;
        // rudder-sdk-python puts identify traits only in context.traits.
        segment_format(&gw, "rudder", &run, true).await;
        gw
    })
    .await;
}

/// PostHog: the calls of posthog-node (6) or posthog-python (7, `$set` and `$set_once`).
async fn posthog_format(gw: &Gateway, which: &str, run: &str, python: bool) {
    let rows = rows(gw, if python { 7 } else { 6 }).await;
    let user = format!("u_{which}_{run}");
    let track = find(&rows, "Order Completed");
    assert_eq!(
        track.event_id.to_string(),
        format!("01890000-0000-7000-8000-{}", &run[run.len() - 12..])
    );
    assert_eq!(track.user.as_deref(), Some(user.as_str()));
    assert_eq!(
        track.session.as_deref(),
        Some(format!("sess_{run}").as_str())
    );
    about_an_hour_ago(track.at);
    props_ok(&track.meta);
    assert_eq!(
        find(&rows, "$pageview").meta["properties"]["$current_url"],
        "https://example.com/docs"
    );
    let alias = find(&rows, "$create_alias");
    let group = find(&rows, "$groupidentify");
    assert_eq!(
        group.meta["properties"]["$group_key"],
        format!("g_{run}").as_str()
    );
    assert_eq!(
        find(&rows, "Group Event").meta["properties"]["$groups"]["company"],
        format!("g_{run}").as_str()
    );
    if python {
        // posthog-python: alias(previous_id=P, distinct_id=U) sends distinct_id P.
        assert_eq!(alias.user.as_deref(), Some(format!("prev_{run}").as_str()));
        let set = find(&rows, "$set");
        let traits = set
            .meta
            .get("$set")
            .unwrap_or(&set.meta["properties"]["$set"]);
        assert_eq!(traits["email"], "jane@example.com", "{}", set.meta);
        find(&rows, "$set_once");
    } else {
        assert_eq!(
            alias.meta["properties"]["alias"],
            format!("prev_{run}").as_str()
        );
        let identify = find(&rows, "$identify");
        assert_eq!(
            identify.meta["properties"]["$set"]["email"],
            "jane@example.com"
        );
    }
    for r in &rows {
        assert!(r.meta["properties"].get("token").is_none());
    }
    containment_finds(gw, "Order Completed").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn posthog_node_delivers_gzip_batches() {
    with_pipeline(|gw| async move {
        let run = run_id();
        drive(
            "node",
            &["sdk.js", "posthog", &host(&gw), &gw.app.ingest_key, &run],
            &[],
        )
        .await;
        posthog_format(&gw, "posthog", &run, false).await;
        gw
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn posthog_node_v1_gets_its_results_map() {
    with_pipeline(|gw| async move {
        let run = run_id();
        let args = ["sdk.js", "posthog-v1", &host(&gw), &gw.app.ingest_key, &run];
        drive("node", &args, &[("POSTHOG_CAPTURE_MODE", "v1")]).await;
        posthog_format(&gw, "posthog-v1", &run, false).await;
        gw
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn posthog_python_delivers_v0_and_v1_with_zstd() {
    with_pipeline(|gw| async move {
        let run = run_id();
        let key = gw.app.ingest_key.clone();
        drive(
            "python",
            &["sdk.py", "posthog", &host(&gw), &key, &run],
            &[],
        )
        .await;
        posthog_format(&gw, "posthog", &run, true).await;
        gw.db
            .client()
            .await
            .batch_execute("TRUNCATE analytics_events")
            .await
            .expect("truncate");
        let run = run_id();
        drive(
            "python",
            &["sdk.py", "posthog-v1", &host(&gw), &key, &run, "zstd"],
            &[],
        )
        .await;
        posthog_format(&gw, "posthog-v1", &run, true).await;
        gw
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jitsu_delivers_with_an_id_secret_key_on_both_routes() {
    with_pipeline(|gw| async move {
        for (i, which) in ["jitsu", "jitsu-s2s"].into_iter().enumerate() {
            let run = run_id();
            drive(
                "node",
                &["sdk.js", which, &host(&gw), &gw.app.ingest_key, &run],
                &[],
            )
            .await;
            let rows = rows(&gw, 4 * (i + 1)).await;
            let user = format!("u_{which}_{run}");
            let mine: Vec<&Row> = rows
                .iter()
                .filter(|r| r.user.as_deref() == Some(&user))
                .collect();
            let names: Vec<&str> = mine.iter().map(|r| r.name.as_str()).collect();
            assert_eq!(
                names,
                vec!["$group", "$identify", "$page", "Order Completed"],
                "{rows:#?}"
            );
            let track = mine[3];
            props_ok(&track.meta);
            assert_eq!(track.meta["context"]["library"]["name"], "@jitsu/js");
            assert!(
                track.meta["messageId"].is_string(),
                "Jitsu's base-36 id is kept"
            );
            assert_eq!(mine[1].meta["traits"]["email"], "jane@example.com");
            assert_eq!(mine[0].meta["groupId"], format!("g_{run}").as_str());
        }
        gw
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn posthog_js_in_chromium_sends_across_origins() {
    with_pipeline(|gw| async move {
        let run = run_id();
        let report = drive(
            "node",
            &["browser.js", &host(&gw), &gw.app.ingest_key, &run],
            &[],
        )
        .await;
        let rows = rows(&gw, 3).await;
        let user = format!("browser_user_{run}");
        for name in ["$identify", "browser_event", "beacon_event"] {
            let r = find(&rows, name);
            assert_eq!(r.user.as_deref(), Some(user.as_str()), "{r:?}");
            assert!(r.meta["properties"].get("token").is_none());
            assert_eq!(r.event_id.get_version_num(), 7, "posthog-js's own uuid");
        }
        assert_eq!(
            find(&rows, "browser_event").meta["properties"]["plan"],
            "pro"
        );
        let answers = report["answers"].as_array().expect("answers");
        // The browser's fetch (CORS) and its sendBeacon ("ping"), both answered 200.
        for kind in ["fetch", "ping"] {
            assert!(
                answers
                    .iter()
                    .any(|a| a["status"] == 200 && a["kind"] == kind),
                "{kind}: {report}"
            );
        }
        gw
    })
    .await;
}

/// A proxy in front of the gateway that passes the first request on but drops the gateway's
/// answer (the client sees a broken connection after the events were queued), then passes
/// everything through. Returns its address and a counter of the requests it saw.
async fn answer_dropping_proxy(
    to: std::net::SocketAddr,
) -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let seen = std::sync::Arc::new(AtomicUsize::new(0));
    let counter = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            let n = counter.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let Ok(mut server) = tokio::net::TcpStream::connect(to).await else {
                    return;
                };
                if n > 0 {
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    return;
                }
                // The first connection: forward one whole request, wait for the whole answer,
                // then close the client's connection without it.
                let request = read_message(&mut client).await;
                if server.write_all(&request).await.is_err() {
                    return;
                }
                let answer = read_message(&mut server).await;
                assert!(
                    answer.starts_with(b"HTTP/1.1 200"),
                    "{}",
                    String::from_utf8_lossy(&answer)
                );
            });
        }
    });
    (addr, seen)
}

/// One HTTP/1.1 message with a Content-Length body.
async fn read_message(s: &mut tokio::net::TcpStream) -> Vec<u8> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 65536];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            if buf.len() >= end + 4 + len {
                return buf;
            }
        }
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => return buf,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_retries_after_a_lost_answer_are_stored_once() {
    with_pipeline(|gw| async move {
        let (proxy, seen) = answer_dropping_proxy(gw.addr).await;
        let via = format!("http://{proxy}");
        let run = run_id();
        drive(
            "node",
            &["sdk.js", "segment", &via, &gw.app.ingest_key, &run],
            &[],
        )
        .await;
        assert!(
            seen.load(std::sync::atomic::Ordering::SeqCst) >= 2,
            "the SDK retried"
        );
        segment_format(&gw, "segment", &run, false).await;
        gw.db
            .client()
            .await
            .batch_execute("TRUNCATE analytics_events")
            .await
            .expect("truncate");
        let (proxy, seen) = answer_dropping_proxy(gw.addr).await;
        let via = format!("http://{proxy}");
        let run = run_id();
        let key = gw.app.ingest_key.clone();
        drive("python", &["sdk.py", "rudder", &via, &key, &run], &[]).await;
        assert!(
            seen.load(std::sync::atomic::Ordering::SeqCst) >= 2,
            "the SDK retried"
        );
        segment_format(&gw, "rudder", &run, true).await;
        gw
    })
    .await;
}
