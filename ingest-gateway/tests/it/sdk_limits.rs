//! The SDK routes' limits and bad input, each at the limit and past it: the status and body each
//! SDK family expects (`{"code", "message"}` on every error), never a 5xx for client input.

use std::io::Write;

use http::Method;
use serde_json::{json, Value};

use crate::helpers::{cleanup, Gateway, Reply};

fn basic(key: &str) -> String {
    use base64::Engine;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{key}:"))
    )
}

async fn segment(gw: &Gateway, body: impl Into<bytes::Bytes>, extra: &[(&str, &str)]) -> Reply {
    let auth = basic(&gw.app.ingest_key);
    let mut headers = vec![("authorization", auth.as_str())];
    headers.extend_from_slice(extra);
    gw.request(Method::POST, "/v1/batch", &headers, body).await
}

fn batch(n: usize) -> Value {
    let msgs: Vec<Value> = (0..n)
        .map(|i| json!({"type": "track", "event": "e", "userId": format!("u{i}")}))
        .collect();
    json!({ "batch": msgs })
}

fn is_error(r: &Reply, status: u16, code: &str) {
    assert_eq!(r.status, status, "{:?}", r.body);
    assert_eq!(r.body["code"], code, "{:?}", r.body);
    assert!(
        r.body["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{:?}",
        r.body
    );
}

/// A batch body of exactly `len` bytes: one message whose property is padded.
fn body_of(len: usize) -> Vec<u8> {
    let head = r#"{"batch":[{"type":"track","event":"e","properties":{"p":""#;
    let tail = r#""}}]}"#;
    let fill = len - head.len() - tail.len();
    format!("{head}{}{tail}", "x".repeat(fill)).into_bytes()
}

#[tokio::test]
async fn the_body_limit_holds_at_and_past_it_before_and_after_gzip() {
    let gw = Gateway::start(&[
        ("SDK_MAX_BODY_BYTES", "4096"),
        ("SDK_MAX_EVENT_BYTES", "8192"),
    ])
    .await;
    assert_eq!(segment(&gw, body_of(4096), &[]).await.status, 200);
    is_error(
        &segment(&gw, body_of(4097), &[]).await,
        413,
        "body_too_large",
    );
    let gz = |b: &[u8]| {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        e.write_all(b).expect("write");
        e.finish().expect("gzip")
    };
    // Undeclared gzip (found by its magic bytes), and declared: the limit holds after inflating.
    assert_eq!(segment(&gw, gz(&body_of(4096)), &[]).await.status, 200);
    is_error(
        &segment(&gw, gz(&body_of(4097)), &[]).await,
        413,
        "body_too_large",
    );
    let enc = [("content-encoding", "gzip")];
    is_error(
        &segment(&gw, gz(&body_of(4097)), &enc).await,
        413,
        "body_too_large",
    );
    let zst = zstd::encode_all(&body_of(4097)[..], 3).expect("zstd");
    is_error(
        &segment(&gw, zst, &[("content-encoding", "zstd")]).await,
        413,
        "body_too_large",
    );
    is_error(
        &segment(&gw, &b"\x1f\x8bnot gzip"[..], &[]).await,
        400,
        "invalid_gzip",
    );
    is_error(
        &segment(&gw, &b"nope"[..], &[("content-encoding", "zstd")]).await,
        400,
        "invalid_compression",
    );
    is_error(
        &segment(&gw, body_of(100), &[("content-encoding", "br")]).await,
        415,
        "unsupported_content_encoding",
    );
    cleanup(&gw.prefix).await;
}

#[tokio::test]
async fn the_message_limit_refuses_only_the_message_past_it() {
    let gw = Gateway::start(&[("SDK_MAX_EVENT_BYTES", "256")]).await;
    let msg = |len: usize| {
        let head = r#"{"type":"track","event":"e","properties":{"p":""#;
        let fill = len - head.len() - 3;
        serde_json::from_str::<Value>(&format!("{head}{}\"}}}}", "x".repeat(fill))).expect("json")
    };
    assert_eq!(serde_json::to_string(&msg(256)).expect("json").len(), 256);
    let body = json!({"batch": [msg(256), msg(257)]});
    let r = segment(&gw, body.to_string(), &[]).await;
    assert_eq!((r.status, &r.body), (200, &json!({"success": true})));
    assert_eq!(
        gw.queued().await.len(),
        1,
        "the message at the limit is queued"
    );
    let r = segment(&gw, json!({"batch": [msg(257)]}).to_string(), &[]).await;
    is_error(&r, 400, "invalid_events");
    assert!(r.body["rejected"][0]["error"]
        .as_str()
        .expect("error")
        .contains("256"));
    cleanup(&gw.prefix).await;
}

#[tokio::test]
async fn a_batch_holds_2500_messages_and_not_2501() {
    let gw = Gateway::start(&[]).await;
    let r = segment(&gw, batch(2500).to_string(), &[]).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(gw.queued().await.len(), 2500);
    is_error(
        &segment(&gw, batch(2501).to_string(), &[]).await,
        400,
        "too_many_events",
    );
    is_error(
        &segment(&gw, r#"{"batch": []}"#, &[]).await,
        400,
        "empty_batch",
    );
    cleanup(&gw.prefix).await;
}

#[tokio::test]
async fn bad_bodies_get_400_with_code_and_message_on_every_family() {
    let gw = Gateway::start(&[]).await;
    let key = gw.app.ingest_key.clone();
    let auth = basic(&key);
    let bearer = format!("Bearer {key}");
    let jitsu = format!("{key}:secret");
    let families: Vec<(&str, Vec<(&str, &str)>)> = vec![
        ("/v1/batch", vec![("authorization", auth.as_str())]),
        ("/v1/track", vec![("authorization", auth.as_str())]),
        (
            "/i/v1/analytics/events",
            vec![("authorization", bearer.as_str())],
        ),
        ("/api/s/track", vec![("x-write-key", jitsu.as_str())]),
    ];
    for (path, headers) in &families {
        for body in [&b"{\"batch\": ["[..], b"not json", b"", b"42"] {
            let r = gw.request(Method::POST, path, headers, body).await;
            assert_eq!(r.status, 400, "{path} {:?}", r.body);
            assert!(
                r.body["code"].is_string() && r.body["message"].is_string(),
                "{path} {:?}",
                r.body
            );
        }
    }
    is_error(
        &segment(
            &gw,
            r#"{"writeKey": "k", "sentAt": "2026-01-01T00:00:00Z"}"#,
            &[],
        )
        .await,
        400,
        "missing_batch",
    );
    // Only invalid messages: 400 naming each one.
    let r = segment(
        &gw,
        r#"{"batch": [{"type": "track"}, {"type": "merge"}, 7]}"#,
        &[],
    )
    .await;
    is_error(&r, 400, "invalid_events");
    assert_eq!(r.body["rejected"].as_array().map(Vec::len), Some(3));
    // PostHog v0 with the key in the body; a posthog-js array with the key in each event.
    let r = gw
        .request(
            Method::POST,
            "/batch/",
            &[],
            json!({"api_key": key, "batch": [{"distinct_id": "u"}]}).to_string(),
        )
        .await;
    is_error(&r, 400, "invalid_events");
    let r = gw
        .request(Method::POST, "/e/", &[], "data=%%%not-base64")
        .await;
    is_error(&r, 400, "invalid_body");
    // PostHog v1 names refused events by uuid in a 200 when others are valid.
    let r = gw
        .request(
            Method::POST,
            "/i/v1/analytics/events",
            &[("authorization", bearer.as_str())],
            json!({"batch": [
                {"event": "ok", "distinct_id": "u", "uuid": "01890000-0000-7000-8000-000000000001"},
                {"distinct_id": "u", "uuid": "01890000-0000-7000-8000-000000000002"}
            ]})
            .to_string(),
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.body["results"]["01890000-0000-7000-8000-000000000002"]["result"], "drop",
        "{:?}",
        r.body
    );
    assert!(r.body["results"]
        .get("01890000-0000-7000-8000-000000000001")
        .is_none());
    cleanup(&gw.prefix).await;
}

#[tokio::test]
async fn keys_unknown_missing_read_and_revoked_are_refused() {
    let gw = Gateway::start(&[]).await;
    let b = batch(1).to_string();
    let r = gw.request(Method::POST, "/v1/batch", &[], b.clone()).await;
    is_error(&r, 401, "missing_key");
    let unknown = basic("sk_live_0000000000000000000000000000");
    let r = gw
        .request(
            Method::POST,
            "/v1/batch",
            &[("authorization", unknown.as_str())],
            b.clone(),
        )
        .await;
    is_error(&r, 401, "invalid_key");
    let read = basic(&gw.app.read_key);
    let r = gw
        .request(
            Method::POST,
            "/v1/batch",
            &[("authorization", read.as_str())],
            b.clone(),
        )
        .await;
    is_error(&r, 403, "read_key");
    // The body's writeKey when there is no header.
    let with_key =
        json!({"batch": [{"type": "track", "event": "e"}], "writeKey": gw.app.ingest_key});
    let r = gw
        .request(Method::POST, "/v1/batch", &[], with_key.to_string())
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    // Jitsu: the key as either half of id:secret, never a half that is no key.
    for v in [
        format!("{}:x", gw.app.ingest_key),
        format!("x:{}", gw.app.ingest_key),
        gw.app.ingest_key.clone(),
    ] {
        let r = gw
            .request(
                Method::POST,
                "/api/s/track",
                &[("x-write-key", v.as_str())],
                r#"{"event":"e"}"#,
            )
            .await;
        assert_eq!((r.status, &r.body), (200, &json!({"ok": true})), "{v}");
    }
    let r = gw
        .request(
            Method::POST,
            "/api/s/track",
            &[("x-write-key", "a:b")],
            r#"{"event":"e"}"#,
        )
        .await;
    is_error(&r, 401, "invalid_key");
    // PostHog: a key of another app inside an event of this request's batch is refused.
    let r = gw
        .request(
            Method::POST,
            "/batch/",
            &[],
            json!({"api_key": gw.app.ingest_key, "batch": [
                {"event": "mine", "distinct_id": "u"},
                {"event": "theirs", "distinct_id": "u", "api_key": "sk_other"}
            ]})
            .to_string(),
        )
        .await;
    assert_eq!((r.status, &r.body), (200, &json!({"status": 1})));
    let pools = shared::db::Pools::new(&gw.config.db).expect("pools");
    ingest_gateway::apps::revoke_key(&pools.write, &gw.app.ingest_key)
        .await
        .expect("revoke");
    let auth = basic(&gw.app.ingest_key);
    let revoked = testkit::wait_for(std::time::Duration::from_secs(5), || async {
        let r = gw
            .request(
                Method::POST,
                "/v1/batch",
                &[("authorization", auth.as_str())],
                b.clone(),
            )
            .await;
        (r.status == 401).then_some(r)
    })
    .await
    .expect("the revoked key stops working");
    is_error(&revoked, 401, "invalid_key");
    cleanup(&gw.prefix).await;
}

#[tokio::test]
async fn rate_limits_and_a_full_queue_answer_with_retry_after() {
    let gw = Gateway::start(&[("RATE_LIMIT_EVENTS_PER_SEC", "5")]).await;
    // At the limit within one second, then past it. Retry until both land in the same second.
    let limited = testkit::wait_for(std::time::Duration::from_secs(10), || async {
        let first = segment(&gw, batch(5).to_string(), &[]).await;
        let second = segment(&gw, batch(1).to_string(), &[]).await;
        (first.status == 200 && second.status == 429).then_some(second)
    })
    .await
    .expect("5 events pass and the 6th in the same second is limited");
    is_error(&limited, 429, "rate_limited");
    assert!(limited.headers.contains_key("retry-after"));
    cleanup(&gw.prefix).await;

    let gw = Gateway::start(&[("QUEUE_HIGH_WATER", "3")]).await;
    assert_eq!(segment(&gw, batch(4).to_string(), &[]).await.status, 200);
    let full = segment(&gw, batch(1).to_string(), &[]).await;
    is_error(&full, 503, "queue_full");
    assert_eq!(full.headers["retry-after"], "5");
    cleanup(&gw.prefix).await;
}

#[tokio::test]
async fn methods_preflight_and_metrics_of_the_sdk_routes() {
    let gw = Gateway::start(&[]).await;
    let r = gw.request(Method::GET, "/v1/batch", &[], "").await;
    assert_eq!(r.status, 405);
    assert_eq!(r.headers["allow"], "POST, OPTIONS");
    let r = gw
        .request(
            Method::OPTIONS,
            "/e/",
            &[
                ("origin", "http://shop.example"),
                ("access-control-request-method", "POST"),
            ],
            "",
        )
        .await;
    assert_eq!(r.status, 204);
    assert_eq!(r.headers["access-control-allow-origin"], "*");
    assert!(r.headers["access-control-allow-headers"]
        .to_str()
        .expect("ascii")
        .contains("x-write-key"));
    assert_eq!(segment(&gw, batch(3).to_string(), &[]).await.status, 200);
    let r = gw
        .request(
            Method::POST,
            "/capture/",
            &[],
            json!({"api_key": gw.app.ingest_key, "event": "e", "distinct_id": "u"}).to_string(),
        )
        .await;
    assert_eq!((r.status, &r.body), (200, &json!({"status": 1})));
    segment(&gw, r#"{"batch": [{"type": "track"}]}"#, &[]).await;
    let (_, m) = testkit::http_get(&gw.ops.to_string(), "/metrics")
        .await
        .expect("metrics");
    for line in [
        "sluice_events_accepted_total{api=\"segment\"} 3",
        "sluice_events_accepted_total{api=\"posthog\"} 1",
        "sluice_events_accepted_total{api=\"native\"} 0",
        "sluice_events_rejected_total{api=\"segment\",reason=\"invalid_event\"} 1",
    ] {
        assert!(m.contains(line), "{line} in {m}");
    }
    assert!(m.contains("route=\"sdk_segment\""), "{m}");
    cleanup(&gw.prefix).await;
}
