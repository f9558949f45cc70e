//! What is queued and answered: single events, mixed and bad batches, the batch limit, client
//! clocks and timestamps, and the metrics of accepted and rejected events.

use super::events;
use crate::helpers::{cleanup, redis_conn, Gateway};

#[tokio::test]
async fn a_single_event_is_queued_with_a_uuid_v7_and_answered_202() {
    let gw = Gateway::start(&[]).await;
    let before = chrono::Utc::now().timestamp_micros();
    let r = gw
        .post(r#"{"event_name":"signup","user_id":"u1","metadata":{"plan":"pro"}}"#)
        .await;
    assert_eq!(r.status, 202, "{}", r.body);
    assert_eq!(r.body, serde_json::json!({"accepted": 1, "rejected": []}));
    let q = gw.queued().await;
    assert_eq!(q.len(), 1);
    let e = &q[0];
    assert_eq!(e.event_id.get_version_num(), 7);
    assert_eq!(e.app_id, gw.app.app_id);
    assert_eq!(e.event_name, "signup");
    assert_eq!(e.user_id.as_deref(), Some("u1"));
    assert_eq!(e.metadata.as_deref(), Some(r#"{"plan":"pro"}"#));
    assert!(e.received_at_us >= before && e.occurred_at_us == e.received_at_us);
    let mut conn = redis_conn().await;
    let depth: i64 = redis::cmd("GET")
        .arg(gw.keys().depth(0))
        .query_async(&mut conn)
        .await
        .unwrap_or(0);
    let depth1: i64 = redis::cmd("GET")
        .arg(gw.keys().depth(1))
        .query_async(&mut conn)
        .await
        .unwrap_or(0);
    assert_eq!(depth + depth1, 1, "the depth counter follows the queue");
    gw.stop().await;
}

#[tokio::test]
async fn a_mixed_batch_queues_the_valid_events_and_reports_the_others_by_index() {
    let gw = Gateway::start(&[]).await;
    let r = gw
        .post(
            r#"[{"event_name":"a","event_id":"0192f0c1-7c4a-7b3e-8f00-000000000001"},
                {"event_name":""},
                {"event_name":"b","colour":"red"},
                {"event_name":"c"},
                "text"]"#,
        )
        .await;
    assert_eq!(r.status, 202, "{}", r.body);
    assert_eq!(r.body["accepted"], 2);
    let idx: Vec<u64> = r.body["rejected"]
        .as_array()
        .expect("rejected")
        .iter()
        .map(|x| x["index"].as_u64().expect("index"))
        .collect();
    assert_eq!(idx, vec![1, 2, 4]);
    assert!(r.body["rejected"][1]["error"]
        .as_str()
        .expect("error")
        .contains("colour"));
    let mut names: Vec<String> = gw
        .queued()
        .await
        .into_iter()
        .map(|e| e.event_name)
        .collect();
    names.sort();
    assert_eq!(names, vec!["a", "c"]);
    gw.stop().await;
}

#[tokio::test]
async fn bad_bodies_get_400_with_a_code() {
    let gw = Gateway::start(&[("MAX_EVENTS_PER_REQUEST", "3")]).await;
    for (body, code) in [
        ("not json", "invalid_json"),
        ("\"a string\"", "invalid_body"),
        ("[]", "empty_batch"),
        (
            r#"[{"event_name":"a"},{"event_name":"a"},{"event_name":"a"},{"event_name":"a"}]"#,
            "too_many_events",
        ),
        (r#"[{"event_name":""},{"x":1}]"#, "invalid_events"),
    ] {
        let r = gw.post(body.to_owned()).await;
        assert_eq!(r.status, 400, "{body}: {}", r.body);
        assert_eq!(r.body["error"], code, "{body}: {}", r.body);
        assert!(r.body["message"].is_string());
    }
    let r = gw.post(r#"[{"event_name":""},{"x":1}]"#).await;
    assert_eq!(r.body["rejected"].as_array().map(Vec::len), Some(2));
    let at_limit = gw.post(events(3)).await;
    assert_eq!(at_limit.status, 202);
    assert!(gw.queued().await.len() == 3, "nothing else was queued");
    gw.stop().await;
}

#[tokio::test]
async fn the_default_batch_limit_is_1000_events() {
    let gw = Gateway::start(&[]).await;
    assert_eq!(gw.post(events(1000)).await.status, 202);
    let r = gw.post(events(1001)).await;
    assert_eq!(
        (r.status, r.body["error"].as_str()),
        (400, Some("too_many_events"))
    );
    assert_eq!(gw.queued().await.len(), 1000);
    gw.stop().await;
}

#[tokio::test]
async fn sent_at_corrects_the_client_clock() {
    let gw = Gateway::start(&[]).await;
    let now = chrono::Utc::now();
    // The client's clock runs 2 hours behind ours.
    let client_now = now - chrono::Duration::hours(2);
    let ts = (client_now - chrono::Duration::minutes(5)).to_rfc3339();
    let body = format!(
        r#"{{"event_name":"a","timestamp":"{ts}","sent_at":"{}"}}"#,
        client_now.to_rfc3339()
    );
    assert_eq!(gw.post(body).await.status, 202);
    let e = &gw.queued().await[0];
    let want = (now - chrono::Duration::minutes(5)).timestamp_micros();
    assert!(
        (e.occurred_at_us - want).abs() < 2_000_000,
        "{} vs {want}",
        e.occurred_at_us
    );
    gw.stop().await;
}

#[tokio::test]
async fn timestamps_outside_the_window_are_rejected_per_event() {
    let gw = Gateway::start(&[]).await;
    let old = (chrono::Utc::now() - chrono::Duration::days(400)).to_rfc3339();
    let future = (chrono::Utc::now() + chrono::Duration::hours(26)).to_rfc3339();
    let body = format!(
        r#"[{{"event_name":"a","timestamp":"{old}"}},{{"event_name":"b","timestamp":"{future}"}},{{"event_name":"c"}}]"#
    );
    let r = gw.post(body).await;
    assert_eq!(r.status, 202);
    assert!(r.body["rejected"][0]["error"]
        .as_str()
        .expect("e")
        .contains("retention"));
    assert!(r.body["rejected"][1]["error"]
        .as_str()
        .expect("e")
        .contains("future"));
    gw.stop().await;
}

#[tokio::test]
async fn metrics_count_accepted_and_rejected_events() {
    let gw = Gateway::start(&[]).await;
    gw.post(r#"[{"event_name":"a"},{"event_name":""},{"event_name":"b"}]"#)
        .await;
    let (_, m) = testkit::http_get(&gw.ops.to_string(), "/metrics")
        .await
        .expect("metrics");
    assert!(
        m.contains("sluice_events_accepted_total{api=\"native\"} 2"),
        "{m}"
    );
    assert!(
        m.contains("sluice_events_rejected_total{api=\"native\",reason=\"invalid_event\"} 1"),
        "{m}"
    );
    assert!(
        m.contains("sluice_http_request_duration_seconds_bucket{route=\"events\",status=\"2xx\""),
        "{m}"
    );
    cleanup(&gw.prefix).await;
    gw.stop().await;
}
