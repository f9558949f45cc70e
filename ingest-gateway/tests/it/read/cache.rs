//! The read cache: answers cached and invalidated, queries answered while it is down, one
//! computation for concurrent misses, refresh-ahead, failures never cached, and its counters.

use std::time::Duration;

use chrono::Utc;

use super::{days_path, get};
use crate::helpers::{Gateway, REDIS};

#[tokio::test]
async fn answers_are_cached_then_invalidated() {
    let gw = Gateway::start(&[("CACHE_STATS_INTERVAL_MS", "200")]).await;
    let today = Utc::now().date_naive();
    let path = days_path(today, today, "");
    let first = get(&gw, &gw.app.read_key, &path).await;
    assert_eq!(first.headers["x-cache"], "MISS");
    // The answer is cached once the gateway's cache connection is up (it connects in the
    // background, and a put that finds it down is skipped): asked again until it is a hit.
    let mut misses: u64 = 1;
    let second = loop {
        let r = get(&gw, &gw.app.read_key, &path).await;
        if r.headers["x-cache"] == "HIT" {
            break r;
        }
        misses += 1;
        assert!(misses < 50, "never cached");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(first.body, second.body);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ingest-gateway"))
        .args(["cache", "invalidate", "--app", &gw.app.app_id])
        .envs(gw.db.env_vars())
        .env("REDIS_URL", REDIS)
        .env("STREAM_PREFIX", &gw.prefix)
        .output()
        .expect("invalidate");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("Deleted 1"));
    assert_eq!(
        get(&gw, &gw.app.read_key, &path).await.headers["x-cache"],
        "MISS"
    );
    // The gateway adds its counts to Redis every CACHE_STATS_INTERVAL_MS.
    let stats = || {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_ingest-gateway"))
            .args(["cache", "stats"])
            .envs(gw.db.env_vars())
            .env("REDIS_URL", REDIS)
            .env("STREAM_PREFIX", &gw.prefix)
            .output()
            .expect("stats");
        serde_json::from_slice::<serde_json::Value>(&out.stdout).expect("JSON")
    };
    let s = testkit::wait_for(Duration::from_secs(10), || async {
        let s = stats();
        (s["hits"].as_u64() == Some(1) && s["misses"].as_u64() == Some(misses + 1)).then_some(s)
    })
    .await
    .unwrap_or_else(stats);
    assert_eq!(
        (s["hits"].as_u64(), s["misses"].as_u64(), s["keys"].as_u64()),
        (Some(1), Some(misses + 1), Some(1))
    );
    assert!(s["memory_bytes"].as_u64().unwrap_or(0) > 0);
    let (_, m) = testkit::http_get(&gw.ops.to_string(), "/metrics")
        .await
        .expect("metrics");
    assert!(
        m.contains("sluice_cache_hits_total 1")
            && m.contains(&format!("sluice_cache_misses_total {}", misses + 1)),
        "{m}"
    );
    gw.stop().await;
}

#[tokio::test]
async fn queries_still_answer_when_the_cache_is_down() {
    let port = testkit::free_port();
    let url = format!("redis://127.0.0.1:{port}/");
    let gw = Gateway::start(&[("CACHE_REDIS_URL", &url)]).await;
    let today = Utc::now().date_naive();
    let started = std::time::Instant::now();
    for _ in 0..2 {
        let r = get(&gw, &gw.app.read_key, &days_path(today, today, "")).await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.headers["x-cache"], "MISS");
    }
    assert!(started.elapsed() < Duration::from_secs(3));
    gw.stop().await;
}

#[tokio::test]
async fn a_failed_computation_reaches_every_waiter_and_is_not_cached() {
    use ingest_gateway::cache::ComputeFailed;
    let cache = ingest_gateway::cache::Cache::new(
        shared::secret::Secret::new(REDIS.into()),
        &format!("test-{}", uuid::Uuid::new_v4().simple()),
        Duration::from_secs(1),
    );
    assert!(cache.connect().await);
    let key = format!("{}:v1:app:f", cache.prefix());
    let calls = (0..5).map(|_| {
        let (cache, key) = (cache.clone(), key.clone());
        async move {
            cache
                .get_or_compute(&key, Duration::from_secs(30), || async {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    Err(ComputeFailed)
                })
                .await
        }
    });
    let answers = futures::future::join_all(calls).await;
    assert!(
        answers.iter().all(|a| *a == Err(ComputeFailed)),
        "{answers:?}"
    );
    let next = cache
        .get_or_compute(&key, Duration::from_secs(30), || async {
            Ok("after".to_owned())
        })
        .await;
    assert_eq!(
        next,
        Ok(("after".to_owned(), false)),
        "the failure was not cached"
    );
    let err: ingest_gateway::error::ApiError = ComputeFailed.into();
    assert_eq!(err.parts().0, http::StatusCode::SERVICE_UNAVAILABLE);
}

#[tokio::test]
async fn concurrent_misses_of_one_key_compute_once() {
    let cache = ingest_gateway::cache::Cache::new(
        shared::secret::Secret::new(REDIS.into()),
        &format!("test-{}", uuid::Uuid::new_v4().simple()),
        Duration::from_secs(1),
    );
    assert!(cache.connect().await);
    let computed = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    let key = format!("{}:v1:app:x", cache.prefix());
    let calls = (0..20).map(|_| {
        let (cache, computed, key) = (cache.clone(), computed.clone(), key.clone());
        async move {
            cache
                .get_or_compute(&key, Duration::from_secs(30), || async {
                    computed.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    Ok("answer".to_owned())
                })
                .await
                .map(|(v, _)| v)
                .ok()
        }
    });
    let answers = futures::future::join_all(calls).await;
    assert!(answers.iter().all(|a| a.as_deref() == Some("answer")));
    assert_eq!(computed.load(std::sync::atomic::Ordering::SeqCst), 1);
    // Refresh-ahead: once the answer is older than its TTL, one request recomputes it while the
    // others are still served the cached answer.
    let k3 = format!("{}:v1:app:z", cache.prefix());
    let ttl = Duration::from_millis(1000);
    let first = cache
        .get_or_compute(&k3, ttl, || async { Ok("v1".to_owned()) })
        .await
        .expect("first");
    assert_eq!(first, ("v1".to_owned(), false));
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let refreshes = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    let calls = (0..10).map(|_| {
        let (cache, refreshes, k3) = (cache.clone(), refreshes.clone(), k3.clone());
        async move {
            cache
                .get_or_compute(&k3, ttl, || async {
                    refreshes.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    Ok("v2".to_owned())
                })
                .await
                .expect("answer")
        }
    });
    let answers = futures::future::join_all(calls).await;
    assert_eq!(
        refreshes.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "one refresh"
    );
    let stale_hits = answers.iter().filter(|(v, hit)| v == "v1" && *hit).count();
    assert!(
        stale_hits >= 1,
        "others were served the cached answer: {answers:?}"
    );
    let now = cache
        .get_or_compute(&k3, ttl, || async { Ok("v3".to_owned()) })
        .await
        .expect("after");
    assert_eq!(
        now,
        ("v2".to_owned(), true),
        "the refreshed answer is cached"
    );
    // Get and put with TTL, counts flushed to Redis's daily counters, invalidation by prefix.
    let k2 = format!("{}:v1:app:y", cache.prefix());
    assert!(cache.put(&k2, "2", Duration::from_secs(30)).await);
    assert!(cache
        .get(&key)
        .await
        .is_some_and(|v| v.ends_with("|answer")));
    assert_eq!(cache.get(&k2).await.as_deref(), Some("2"));
    assert_eq!(cache.get("missing").await, None);
    let mut conn = crate::helpers::redis_conn().await;
    let ttl: i64 = redis::cmd("TTL")
        .arg(&k2)
        .query_async(&mut conn)
        .await
        .expect("ttl");
    assert!((1..=30).contains(&ttl));
    // 32 reads so far (20 of x, 12 of z), at least 3 of them misses (x, z, z's refresh): none in
    // Redis until a flush; a flush adds each count once.
    let before = cache.stats().await.expect("stats");
    assert_eq!((before.hits, before.misses), (0, 0));
    cache.flush_counts().await;
    let flushed = cache.stats().await.expect("stats");
    assert_eq!(flushed.hits + flushed.misses, 32, "{flushed:?}");
    assert!(flushed.misses >= 3, "{flushed:?}");
    cache.record(false);
    cache.flush_counts().await;
    cache.flush_counts().await;
    let after = cache.stats().await.expect("stats");
    assert_eq!(
        (after.hits, after.misses),
        (flushed.hits, flushed.misses + 1)
    );
    let day = Utc::now().format("%Y%m%d");
    let counter_ttl: i64 = redis::cmd("TTL")
        .arg(format!("{}:stats:hits:{day}", cache.prefix()))
        .query_async(&mut conn)
        .await
        .expect("ttl");
    assert!(
        (86_400..=2 * 86_400).contains(&counter_ttl),
        "{counter_ttl}"
    );
    assert_eq!(
        cache
            .invalidate_prefix(&format!("{}:v1:", cache.prefix()))
            .await,
        Some(3)
    );
    assert_eq!(cache.get(&key).await, None);
    testkit::redis_cleanup(REDIS, cache.prefix().trim_end_matches(":cache")).await;
}
