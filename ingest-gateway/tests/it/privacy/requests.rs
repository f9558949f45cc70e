//! Erasure requests: only admin keys make them (and reach nothing else), what a request may
//! hold at and past each limit, and an app sees only its own requests.

use chrono::Utc;
use http::Method;
use ingest_gateway::apps;
use shared::db::Pools;
use shared::privacy::user_digest;

use super::{admin_key, code, erase, status_of};
use crate::helpers::{post_at, request_at, Gateway};

#[tokio::test]
async fn only_admin_keys_reach_the_privacy_routes_and_they_reach_nothing_else() {
    let gw = Gateway::start(&[]).await;
    let addr = gw.addr.to_string();
    let admin = admin_key(&gw, &gw.app.app_id).await;
    assert!(admin.starts_with("sk_admin_"), "{admin}");
    let body = r#"{"user_ids":["u1"]}"#;
    for key in [&gw.app.ingest_key, &gw.app.read_key] {
        let r = erase(&addr, key, body).await;
        assert_eq!(code(&r), (403, Some("admin_key_required")), "{}", r.body);
    }
    let r = erase(&addr, "sk_admin_unknown", body).await;
    assert_eq!(r.status, 401);
    // Never from the query string, which access logs keep.
    let r = request_at(
        &addr,
        Method::POST,
        &format!("/v1/privacy/erasures?api_key={admin}"),
        &[("content-type", "application/json")],
        body,
    )
    .await;
    assert_eq!(code(&r), (401, Some("missing_key")), "{}", r.body);

    let r = post_at(&addr, &admin, r#"{"event_name":"e"}"#.to_owned()).await;
    assert_eq!(code(&r), (403, Some("admin_key")), "{}", r.body);
    let today = Utc::now().date_naive();
    let auth = format!("Bearer {admin}");
    let r = request_at(
        &addr,
        Method::GET,
        &format!("/v1/stats/daily?from={today}&to={today}"),
        &[("authorization", &auth)],
        "",
    )
    .await;
    assert_eq!(code(&r), (403, Some("admin_key")), "{}", r.body);
    let r = request_at(
        &addr,
        Method::POST,
        "/v1/batch",
        &[
            ("x-write-key", &admin),
            ("content-type", "application/json"),
        ],
        format!(
            r#"{{"writeKey":"{admin}","batch":[{{"type":"track","event":"e","userId":"u"}}]}}"#
        ),
    )
    .await;
    assert_eq!(
        (r.status, r.body["code"].as_str()),
        (403, Some("admin_key")),
        "{}",
        r.body
    );
    assert!(
        gw.queued().await.is_empty(),
        "nothing queued with an admin key"
    );

    let r = erase(&addr, &admin, body).await;
    assert_eq!(r.status, 202, "{}", r.body);
    assert_eq!(r.body["status"], "pending");
    let id = r.body["erasure_id"]
        .as_str()
        .expect("erasure_id")
        .to_owned();
    let got = status_of(&addr, &admin, &id).await;
    assert_eq!(got.status, 200, "{}", got.body);
    assert_eq!(got.body["erasure_id"], id.as_str());
    assert_eq!(got.body["status"], "pending");
    assert_eq!(got.body["users"], 1);
    assert_eq!(got.body["suppress"], false);
    assert!(got.body["finished_at"].is_null());
    assert!(got.body["requested_at"].is_string());
    let r = status_of(&addr, &gw.app.read_key, &id).await;
    assert_eq!(code(&r), (403, Some("admin_key_required")));
    gw.stop().await;
}

#[tokio::test]
async fn erasure_requests_are_checked_at_and_past_each_limit() {
    let gw = Gateway::start(&[]).await;
    let addr = gw.addr.to_string();
    let admin = admin_key(&gw, &gw.app.app_id).await;
    let ids = |n: usize| -> Vec<String> { (0..n).map(|i| format!("user-{i}")).collect() };
    let body = |ids: Vec<String>| serde_json::json!({ "user_ids": ids }).to_string();

    let r = erase(&addr, &admin, body(ids(1000))).await;
    assert_eq!(r.status, 202, "1,000 ids: {}", r.body);
    let r = erase(&addr, &admin, body(ids(1001))).await;
    assert_eq!(code(&r), (400, Some("invalid_erasure")), "{}", r.body);
    assert!(r.body["message"]
        .as_str()
        .is_some_and(|m| m.contains("1000")));
    let r = erase(&addr, &admin, body(vec!["x".repeat(200)])).await;
    assert_eq!(r.status, 202, "a 200-byte id: {}", r.body);
    for bad in [
        body(vec!["x".repeat(201)]),
        body(vec![String::new()]),
        body(vec!["a\u{0}b".into()]),
        body(vec![]),
        r#"{"user_ids":["a"],"unknown":1}"#.into(),
        r#"{"user_ids":"a"}"#.into(),
        r#"{"user_ids":[1]}"#.into(),
        r#"{"suppress":true}"#.into(),
        r#"{"user_ids":["a"],"suppress":"yes"}"#.into(),
        "not json".into(),
        String::new(),
    ] {
        let r = erase(&addr, &admin, bad.clone()).await;
        assert_eq!(
            code(&r),
            (400, Some("invalid_erasure")),
            "{bad:?}: {}",
            r.body
        );
    }
    let auth = format!("Bearer {admin}");
    let r = request_at(
        &addr,
        Method::POST,
        "/v1/privacy/erasures",
        &[("authorization", &auth), ("content-type", "text/html")],
        body(ids(1)),
    )
    .await;
    assert_eq!(r.status, 415);
    let r = request_at(
        &addr,
        Method::POST,
        "/v1/privacy/erasures",
        &[
            ("authorization", &auth),
            ("content-type", "application/json"),
        ],
        vec![b' '; ingest_gateway::privacy::MAX_ERASURE_BODY + 1],
    )
    .await;
    assert_eq!(r.status, 413);
    let r = request_at(
        &addr,
        Method::GET,
        "/v1/privacy/erasures",
        &[("authorization", &auth)],
        "",
    )
    .await;
    assert_eq!(r.status, 405);
    let r = request_at(
        &addr,
        Method::DELETE,
        "/v1/privacy/erasures/0190a5a0-0000-7000-8000-000000000000",
        &[("authorization", &auth)],
        "",
    )
    .await;
    assert_eq!(r.status, 405);

    // Duplicates count once; only the accepted requests were recorded.
    let r = erase(&addr, &admin, body(vec!["a".into(), "a".into()])).await;
    assert_eq!(r.status, 202);
    let id = r.body["erasure_id"].as_str().expect("id").to_owned();
    assert_eq!(status_of(&addr, &admin, &id).await.body["users"], 1);
    let n: i64 = gw
        .db
        .client()
        .await
        .query_one("SELECT count(*) FROM erasures", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(n, 3);
    gw.stop().await;
}

#[tokio::test]
async fn an_app_sees_only_its_own_requests_and_names_only_its_own_users() {
    let gw = Gateway::start(&[]).await;
    let addr = gw.addr.to_string();
    let pools = Pools::new(&gw.config.db).expect("pools");
    let other = apps::create_app(&pools.write, "other").await.expect("app");
    let admin_a = admin_key(&gw, &gw.app.app_id).await;
    let admin_b = admin_key(&gw, &other.app_id).await;
    let r = erase(&addr, &admin_a, r#"{"user_ids":["u1"]}"#).await;
    let id = r.body["erasure_id"].as_str().expect("id").to_owned();
    let r = status_of(&addr, &admin_b, &id).await;
    assert_eq!(code(&r), (404, Some("erasure_not_found")), "{}", r.body);
    assert_eq!(status_of(&addr, &admin_a, &id).await.status, 200);
    for bad in ["not-a-uuid", "0190a5a0-0000-7000-8000-000000000000"] {
        let r = status_of(&addr, &admin_a, bad).await;
        assert_eq!(code(&r), (404, Some("erasure_not_found")));
    }
    let row = gw
        .db
        .client()
        .await
        .query_one(
            "SELECT e.app_id, u.user_hash, u.user_id FROM erasures e JOIN erasure_users u \
             USING (erasure_id)",
            &[],
        )
        .await
        .expect("the request");
    let (app, hash, user): (String, Vec<u8>, Option<String>) = (row.get(0), row.get(1), row.get(2));
    assert_eq!(app, gw.app.app_id);
    assert_eq!(hash, user_digest(&gw.app.app_id, "u1").to_vec());
    assert_eq!(user.as_deref(), Some("u1"), "kept in clear until done");
    gw.stop().await;
}
