//! Who may post and from where: missing, unknown, read and revoked keys, sendBeacon's key in
//! the query string, and CORS.

use std::time::{Duration, Instant};

use http::Method;

use crate::helpers::Gateway;

#[tokio::test]
async fn keys_401_and_403() {
    let gw = Gateway::start(&[]).await;
    let body = r#"{"event_name":"a"}"#;
    let ct = ("content-type", "application/json");
    let r = gw.request(Method::POST, "/v1/events", &[ct], body).await;
    assert_eq!(
        (r.status, r.body["error"].as_str()),
        (401, Some("missing_key"))
    );
    let r = gw
        .request(
            Method::POST,
            "/v1/events",
            &[ct, ("x-api-key", "sk_ingest_nope")],
            body,
        )
        .await;
    assert_eq!(
        (r.status, r.body["error"].as_str()),
        (401, Some("invalid_key"))
    );
    let r = gw
        .request(
            Method::POST,
            "/v1/events",
            &[ct, ("x-api-key", &gw.app.read_key)],
            body,
        )
        .await;
    assert_eq!(
        (r.status, r.body["error"].as_str()),
        (403, Some("read_key"))
    );
    let r = gw
        .request(
            Method::POST,
            "/v1/events",
            &[ct, ("x-api-key", &gw.app.ingest_key)],
            body,
        )
        .await;
    assert_eq!(r.status, 202);
    assert_eq!(gw.queued().await.len(), 1);
    gw.stop().await;
}

#[tokio::test]
async fn a_revoked_key_stops_working_within_the_refresh_time() {
    let gw = Gateway::start(&[("KEY_REFRESH_MS", "200")]).await;
    assert_eq!(gw.post(r#"{"event_name":"a"}"#).await.status, 202);
    let pools = shared::db::Pools::new(&gw.db.config()).expect("pools");
    ingest_gateway::apps::revoke_key(&pools.write, &gw.app.ingest_key)
        .await
        .expect("revoke");
    let started = Instant::now();
    loop {
        let r = gw.post(r#"{"event_name":"a"}"#).await;
        if r.status == 401 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "still accepted after 2 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    gw.stop().await;
}

#[tokio::test]
async fn send_beacon_form_text_plain_with_the_key_in_the_query() {
    let gw = Gateway::start(&[]).await;
    let path = format!("/v1/events?api_key={}", gw.app.ingest_key);
    let r = gw
        .request(
            Method::POST,
            &path,
            &[
                ("content-type", "text/plain;charset=UTF-8"),
                ("origin", "https://shop.example"),
            ],
            r#"[{"event_name":"page_view"}]"#,
        )
        .await;
    assert_eq!(r.status, 202, "{}", r.body);
    assert_eq!(
        r.headers
            .get("access-control-allow-origin")
            .map(|v| v.as_bytes()),
        Some(&b"*"[..])
    );
    gw.stop().await;
}

#[tokio::test]
async fn cors_preflight_and_headers_follow_the_allowed_origins() {
    let gw = Gateway::start(&[(
        "CORS_ALLOWED_ORIGINS",
        "https://a.example,https://b.example",
    )])
    .await;
    let r = gw
        .request(
            Method::OPTIONS,
            "/v1/events",
            &[
                ("origin", "https://b.example"),
                ("access-control-request-method", "POST"),
            ],
            "",
        )
        .await;
    assert_eq!(r.status, 204);
    assert_eq!(
        r.headers["access-control-allow-origin"],
        "https://b.example"
    );
    assert!(r.headers["access-control-allow-methods"]
        .to_str()
        .expect("ascii")
        .contains("POST"));
    assert!(r.headers["access-control-allow-headers"]
        .to_str()
        .expect("ascii")
        .contains("content-type"));
    let r = gw
        .request(
            Method::OPTIONS,
            "/v1/events",
            &[("origin", "https://evil.example")],
            "",
        )
        .await;
    assert_eq!(r.status, 403);
    assert!(r.headers.get("access-control-allow-origin").is_none());
    let auth = format!("Bearer {}", gw.app.ingest_key);
    let r = gw
        .request(
            Method::POST,
            "/v1/events",
            &[
                ("authorization", &auth),
                ("content-type", "application/json"),
                ("origin", "https://a.example"),
            ],
            r#"{"event_name":"a"}"#,
        )
        .await;
    assert_eq!(r.status, 202);
    assert_eq!(
        r.headers["access-control-allow-origin"],
        "https://a.example"
    );
    gw.stop().await;
}
