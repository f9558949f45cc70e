//! The stats routes against events that went through the real pipeline: exact counts from the
//! summary and what is not folded yet, each app's own data only, bad queries.

use std::time::Duration;

use chrono::{Duration as ChronoDuration, Utc};
use maintenance_worker::clock::Clock;
use maintenance_worker::jobs::{self, Job, JobCtx};
use shared::db::Pools;

use super::{days_path, get};
use crate::helpers::{writer, Gateway};

async fn refresh(gw: &Gateway) {
    let ctx = JobCtx {
        db: Pools::new(&gw.db.config()).expect("pools").write,
        clock: Clock::System,
        retention_months: 12,
        premake_months: 6,
        dedupe_window: Duration::from_secs(86_400),
    };
    jobs::run(Job::Views, &ctx).await.expect("refresh");
}

async fn stored(gw: &Gateway, n: i64) {
    let c = gw.db.client().await;
    let ok = testkit::wait_for(Duration::from_secs(10), || async {
        let got: i64 = c
            .query_one("SELECT count(*) FROM analytics_events", &[])
            .await
            .ok()?
            .get(0);
        (got >= n).then_some(())
    })
    .await;
    assert!(ok.is_some(), "the writer stored {n} events");
}

/// Posts, for the gateway's app: 3 signups yesterday (users u1, u1, u2; sessions s1, s2, s3),
/// 2 page views yesterday, and 4 signups today (users u1..u4, one session).
async fn seed(gw: &Gateway) {
    let y = (Utc::now() - ChronoDuration::days(1)).to_rfc3339();
    let body = format!(
        r#"[{{"event_name":"signup","timestamp":"{y}","user_id":"u1","session_id":"s1"}},
            {{"event_name":"signup","timestamp":"{y}","user_id":"u1","session_id":"s2"}},
            {{"event_name":"signup","timestamp":"{y}","user_id":"u2","session_id":"s3"}},
            {{"event_name":"page_view","timestamp":"{y}","user_id":"u1","session_id":"s1"}},
            {{"event_name":"page_view","timestamp":"{y}","user_id":"u1","session_id":"s1"}}]"#
    );
    assert_eq!(gw.post(body).await.status, 202);
    let today: Vec<String> = (1..=4)
        .map(|i| format!(r#"{{"event_name":"signup","user_id":"u{i}","session_id":"t1"}}"#))
        .collect();
    assert_eq!(gw.post(format!("[{}]", today.join(","))).await.status, 202);
}

#[tokio::test]
async fn every_day_counts_exactly_from_the_summary_and_what_is_not_folded_yet() {
    let gw = Gateway::start(&[]).await;
    let stop = writer(&gw).await;
    // Folded first; then events that are not folded yet: a new user, ids already counted today,
    // and a late event for yesterday with ids yesterday already has.
    let y = (Utc::now() - ChronoDuration::days(1)).date_naive();
    let today = Utc::now().date_naive();
    seed(&gw).await;
    stored(&gw, 9).await;
    refresh(&gw).await;
    let late = format!(
        r#"[{{"event_name":"signup","user_id":"u9","session_id":"t2"}},
            {{"event_name":"signup","user_id":"u1","session_id":"t1"}},
            {{"event_name":"signup","timestamp":"{}","user_id":"u2","session_id":"s3"}}]"#,
        (Utc::now() - ChronoDuration::days(1)).to_rfc3339()
    );
    assert_eq!(gw.post(late).await.status, 202);
    stored(&gw, 12).await;

    let r = get(&gw, &gw.app.read_key, &days_path(y, today, "")).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["app_id"], gw.app.app_id.as_str());
    let days = r.body["days"].as_array().expect("days");
    let find = |day: chrono::NaiveDate, name: &str| {
        days.iter()
            .find(|d| d["day"] == day.to_string().as_str() && d["event_name"] == name)
            .cloned()
            .unwrap_or_default()
    };
    let s = find(y, "signup");
    assert_eq!(
        (
            s["events"].as_i64(),
            s["unique_users"].as_i64(),
            s["unique_sessions"].as_i64()
        ),
        (Some(4), Some(2), Some(3))
    );
    let p = find(y, "page_view");
    assert_eq!(
        (
            p["events"].as_i64(),
            p["unique_users"].as_i64(),
            p["unique_sessions"].as_i64()
        ),
        (Some(2), Some(1), Some(1))
    );
    let t = find(today, "signup");
    assert_eq!(
        (
            t["events"].as_i64(),
            t["unique_users"].as_i64(),
            t["unique_sessions"].as_i64()
        ),
        (Some(6), Some(5), Some(2))
    );
    assert_eq!(days.len(), 3);

    let r = get(
        &gw,
        &gw.app.read_key,
        &days_path(y, today, "&event_name=page_view"),
    )
    .await;
    assert_eq!(r.body["days"].as_array().map(Vec::len), Some(1));

    let r = get(
        &gw,
        &gw.app.read_key,
        &format!("/v1/stats/top-events?from={y}&to={today}&limit=1"),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        r.body["events"],
        serde_json::json!([{"event_name": "signup", "events": 10}])
    );
    let r = get(
        &gw,
        &gw.app.read_key,
        &format!("/v1/stats/top-events?from={y}&to={today}"),
    )
    .await;
    assert_eq!(
        r.body["events"][1],
        serde_json::json!({"event_name": "page_view", "events": 2})
    );
    stop.cancel();
    gw.stop().await;
}

#[tokio::test]
async fn an_app_only_ever_sees_its_own_data() {
    let gw = Gateway::start(&[]).await;
    let stop = writer(&gw).await;
    seed(&gw).await;
    stored(&gw, 9).await;
    let pools = Pools::new(&gw.db.config()).expect("pools");
    let other = ingest_gateway::apps::create_app(&pools.write, "other")
        .await
        .expect("app");
    tokio::time::sleep(Duration::from_millis(5500)).await; // the key cache's refresh
    let today = Utc::now().date_naive();
    let y = today.pred_opt().expect("date");
    for path in [
        days_path(y, today, ""),
        format!("/v1/stats/top-events?from={y}&to={today}"),
    ] {
        let r = get(&gw, &other.read_key, &path).await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.body["app_id"], other.app_id.as_str());
        let list = r
            .body
            .get("days")
            .or(r.body.get("events"))
            .and_then(|v| v.as_array())
            .cloned()
            .unwrap_or_default();
        assert!(list.is_empty(), "another app's data leaked: {}", r.body);
    }
    // An ingest key cannot read, a read key cannot ingest.
    let r = get(&gw, &gw.app.ingest_key, &days_path(y, today, "")).await;
    assert_eq!(
        (r.status, r.body["error"].as_str()),
        (403, Some("ingest_key"))
    );
    let r = get(&gw, "sk_read_unknown", &days_path(y, today, "")).await;
    assert_eq!(r.status, 401);
    stop.cancel();
    gw.stop().await;
}

#[tokio::test]
async fn bad_queries_get_400() {
    let gw = Gateway::start(&[("STATS_MAX_RANGE_DAYS", "31")]).await;
    for path in [
        "/v1/stats/daily?from=2026-11-01",
        "/v1/stats/daily?from=2026-11-10&to=2026-11-01",
        "/v1/stats/daily?from=2026-02-30&to=2026-03-01",
        "/v1/stats/daily?from=2026-10-01&to=2026-11-01",
        "/v1/stats/top-events?from=2026-11-01&to=2026-11-02&limit=0",
        "/v1/stats/top-events?from=2026-11-01&to=2026-11-02&limit=101",
    ] {
        let r = get(&gw, &gw.app.read_key, path).await;
        assert_eq!(
            (r.status, r.body["error"].as_str()),
            (400, Some("invalid_query")),
            "{path}: {}",
            r.body
        );
    }
    let r = get(
        &gw,
        &gw.app.read_key,
        "/v1/stats/daily?from=2026-10-02&to=2026-11-01",
    )
    .await;
    assert_eq!(r.status, 200, "31 days is at the limit");
    gw.stop().await;
}
