//! Back-pressure and Redis trouble: the rate limit, a full queue, Redis unreachable and back,
//! and an evicting Redis refused at start.

use std::time::{Duration, Instant};

use super::events;
use crate::helpers::{redis_conn, Gateway};

#[tokio::test]
async fn the_rate_limit_answers_429_with_retry_after() {
    let gw = Gateway::start(&[("RATE_LIMIT_EVENTS_PER_SEC", "5")]).await;
    // Align to the start of a second so the window does not roll over mid-test.
    let ms = chrono::Utc::now().timestamp_subsec_millis();
    if ms > 500 {
        tokio::time::sleep(Duration::from_millis(1010 - ms as u64)).await;
    }
    assert_eq!(gw.post(events(5)).await.status, 202, "at the limit");
    let r = gw.post(events(1)).await;
    assert_eq!(
        (r.status, r.body["error"].as_str()),
        (429, Some("rate_limited"))
    );
    assert_eq!(r.headers["retry-after"], "1");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(gw.post(events(1)).await.status, 202, "a new second");
    assert_eq!(gw.queued().await.len(), 6);
    gw.stop().await;
}

#[tokio::test]
async fn a_full_queue_answers_503_and_turns_readyz_503() {
    let gw = Gateway::start(&[("QUEUE_HIGH_WATER", "10")]).await;
    assert_eq!(gw.post(events(10)).await.status, 202, "at the mark");
    let started = Instant::now();
    let r = loop {
        let r = gw.post(events(1)).await;
        if r.status != 202 || started.elapsed() > Duration::from_secs(2) {
            break r;
        }
    };
    assert_eq!(
        (r.status, r.body["error"].as_str()),
        (503, Some("queue_full")),
        "{}",
        r.body
    );
    assert!(r.headers.contains_key("retry-after"));
    let (status, body) = testkit::http_get(&gw.addr.to_string(), "/readyz")
        .await
        .expect("readyz");
    assert_eq!(status, 503, "{body}");
    let (status, _) = testkit::http_get(&gw.ops.to_string(), "/readyz")
        .await
        .expect("ops readyz");
    assert_eq!(status, 503);
    // Draining the queue (the writer's job) makes it ready again.
    let mut conn = redis_conn().await;
    for k in gw.keys().all_depths() {
        let _: () = redis::cmd("SET")
            .arg(k)
            .arg(0)
            .query_async(&mut conn)
            .await
            .expect("set");
    }
    let ready = testkit::wait_for(Duration::from_secs(3), || async {
        testkit::http_get(&gw.addr.to_string(), "/readyz")
            .await
            .filter(|(s, _)| *s == 200)
    })
    .await;
    assert!(ready.is_some());
    assert_eq!(gw.post(events(1)).await.status, 202);
    gw.stop().await;
}

#[tokio::test]
async fn an_unreachable_redis_gets_503_fast_and_readyz_503() {
    let port = testkit::free_port();
    let url = format!("redis://127.0.0.1:{port}/");
    let gw = Gateway::start(&[("REDIS_URL", &url)]).await;
    let started = Instant::now();
    let r = gw.post(r#"{"event_name":"a"}"#).await;
    assert_eq!(
        (r.status, r.body["error"].as_str()),
        (503, Some("queue_unavailable"))
    );
    assert!(r.headers.contains_key("retry-after"));
    assert!(started.elapsed() < Duration::from_secs(3));
    let (status, _) = testkit::http_get(&gw.addr.to_string(), "/readyz")
        .await
        .expect("readyz");
    assert_eq!(status, 503);
    assert_eq!(
        testkit::http_get(&gw.addr.to_string(), "/healthz")
            .await
            .map(|r| r.0),
        Some(200)
    );
    gw.stop().await;
}

#[tokio::test]
async fn the_gateway_reconnects_when_redis_comes_back() {
    let port = testkit::free_port();
    let url = format!("redis://127.0.0.1:{port}/");
    let gw = Gateway::start(&[("REDIS_URL", &url)]).await;
    assert_eq!(gw.post(r#"{"event_name":"a"}"#).await.status, 503);
    let mut redis = crate::helpers::spawn_redis(port, "noeviction");
    let ok = testkit::wait_for(Duration::from_secs(10), || async {
        (gw.post(r#"{"event_name":"a"}"#).await.status == 202).then_some(())
    })
    .await;
    assert!(ok.is_some(), "never accepted after Redis came back");
    let _ = redis.kill();
    let _ = redis.wait();
    let r = gw.post(r#"{"event_name":"a"}"#).await;
    assert_eq!(r.status, 503, "Redis gone again: 503, not a hang or a 500");
    gw.shutdown.cancel();
    let _ = gw.task.await;
}

#[tokio::test]
async fn an_evicting_redis_is_refused_at_start() {
    let port = testkit::free_port();
    let mut redis = crate::helpers::spawn_redis(port, "allkeys-lru");
    let url = format!("redis://127.0.0.1:{port}/");
    testkit::wait_for(Duration::from_secs(5), || async {
        redis::Client::open(url.as_str())
            .ok()?
            .get_multiplexed_async_connection()
            .await
            .ok()
    })
    .await
    .expect("test redis up");
    let db = testkit::TestDb::migrated().await;
    let err = match Gateway::start_on(db, &[("REDIS_URL", &url)]).await {
        Ok(gw) => panic!("the gateway started on {} with an evicting Redis", gw.addr),
        Err(e) => e.to_string(),
    };
    assert!(
        err.contains("noeviction") || err.contains("allkeys-lru"),
        "{err}"
    );
    let _ = redis.kill();
    let _ = redis.wait();
}
