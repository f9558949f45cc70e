//! Suppression: a suppressed user's events are answered as accepted and never queued, on the
//! gateway that took the request at once and on the others within a second.

use std::time::{Duration, Instant};

use http::Method;
use ingest_gateway::apps;
use shared::db::Pools;
use shared::privacy::user_digest;

use super::{admin_key, erase};
use crate::helpers::{post_at, request_at, second_gateway, Gateway};

#[tokio::test]
async fn suppressed_users_events_are_accepted_and_never_queued_on_any_gateway() {
    let g1 = Gateway::start(&[]).await;
    let (g2, stop2) = second_gateway(&g1).await;
    let a1 = g1.addr.to_string();
    let pools = Pools::new(&g1.config.db).expect("pools");
    let other = apps::create_app(&pools.write, "other").await.expect("app");
    let admin = admin_key(&g1, &g1.app.app_id).await;
    let key = g1.app.ingest_key.clone();

    let r = erase(&a1, &admin, r#"{"user_ids":["gone"],"suppress":true}"#).await;
    assert_eq!(r.status, 202, "{}", r.body);
    let asked = Instant::now();

    // The gateway that took the request filters at once.
    let batch = r#"[{"event_name":"a","user_id":"gone"},{"event_name":"b","user_id":"kept"},
                    {"event_name":"c"}]"#;
    let r = post_at(&a1, &key, batch.to_owned()).await;
    assert_eq!(
        (r.status, r.body["accepted"].as_u64()),
        (202, Some(3)),
        "{}",
        r.body
    );
    let r = request_at(
        &a1,
        Method::POST,
        "/v1/batch",
        &[("x-write-key", &key), ("content-type", "application/json")],
        format!(
            r#"{{"writeKey":"{key}","batch":[{{"type":"track","event":"s","userId":"gone"}}]}}"#
        ),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);

    // The other gateway within a second: each probe is answered 202; the first one not queued
    // marks the moment the suppression reached it.
    let mut probes_queued = 0;
    let reached = loop {
        let id = uuid::Uuid::now_v7();
        let body = format!(r#"{{"event_name":"probe","user_id":"gone","event_id":"{id}"}}"#);
        let r = post_at(&g2, &key, body).await;
        assert_eq!(r.status, 202, "{}", r.body);
        if !g1.queued().await.iter().any(|e| e.event_id == id) {
            break asked.elapsed();
        }
        probes_queued += 1;
        assert!(
            asked.elapsed() < Duration::from_secs(3),
            "never reached gateway 2"
        );
    };
    assert!(reached < Duration::from_secs(1), "took {reached:?}");

    // Another app's user of the same id is not suppressed; a gateway started later filters
    // from its first request.
    let r = post_at(
        &a1,
        &other.ingest_key,
        r#"{"event_name":"x","user_id":"gone"}"#.to_owned(),
    )
    .await;
    assert_eq!(r.status, 202);
    let (g3, stop3) = second_gateway(&g1).await;
    let r = post_at(
        &g3,
        &key,
        r#"{"event_name":"late","user_id":"gone"}"#.to_owned(),
    )
    .await;
    assert_eq!(r.status, 202);

    let queued = g1.queued().await;
    let gone: Vec<_> = queued
        .iter()
        .filter(|e| e.user_id.as_deref() == Some("gone"))
        .collect();
    assert_eq!(
        gone.iter().filter(|e| e.app_id == g1.app.app_id).count(),
        probes_queued,
        "only probes sent before the suppression reached gateway 2: {gone:?}"
    );
    assert_eq!(gone.iter().filter(|e| e.app_id == other.app_id).count(), 1);
    assert!(queued.iter().any(|e| e.user_id.as_deref() == Some("kept")));
    let metrics = testkit::http_get(&g1.ops.to_string(), "/metrics")
        .await
        .expect("metrics")
        .1;
    assert!(
        metrics.lines().any(
            |l| l.starts_with("sluice_events_suppressed_total{api=\"native\"}")
                && !l.ends_with(" 0")
        ),
        "{metrics}"
    );
    assert!(metrics.contains("sluice_events_suppressed_total{api=\"segment\"} 1"));
    let hashes: Vec<Vec<u8>> = g1
        .db
        .client()
        .await
        .query("SELECT user_hash FROM suppressed_users", &[])
        .await
        .expect("list")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        hashes,
        vec![user_digest(&g1.app.app_id, "gone").to_vec()],
        "digests only"
    );
    stop2.cancel();
    stop3.cancel();
    g1.stop().await;
}
