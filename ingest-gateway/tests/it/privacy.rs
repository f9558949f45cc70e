//! Erasure requests and suppression at the gateway: who may ask, what a request may hold, that
//! an app only ever sees its own requests, that a suppressed user's events are answered as
//! accepted and never queued on any gateway, and that a finished erasure retires the app's
//! cached read answers.

use std::time::{Duration, Instant};

use chrono::Utc;
use http::Method;
use ingest_gateway::apps::{self, KeyKind};
use shared::db::Pools;
use shared::privacy::user_digest;
use testkit::wait_for;

use crate::helpers::{post_at, request_at, second_gateway, Gateway, Reply};

async fn admin_key(gw: &Gateway, app: &str) -> String {
    let pools = Pools::new(&gw.config.db).expect("pools");
    apps::create_key(&pools.write, app, KeyKind::Admin)
        .await
        .expect("admin key")
        .key
}

async fn erase(addr: &str, key: &str, body: impl Into<bytes::Bytes>) -> Reply {
    let auth = format!("Bearer {key}");
    request_at(
        addr,
        Method::POST,
        "/v1/privacy/erasures",
        &[
            ("authorization", &auth),
            ("content-type", "application/json"),
        ],
        body,
    )
    .await
}

async fn status_of(addr: &str, key: &str, id: &str) -> Reply {
    let auth = format!("Bearer {key}");
    request_at(
        addr,
        Method::GET,
        &format!("/v1/privacy/erasures/{id}"),
        &[("authorization", &auth)],
        "",
    )
    .await
}

fn code(r: &Reply) -> (u16, Option<&str>) {
    (r.status, r.body["error"].as_str())
}

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

#[tokio::test]
async fn a_finished_erasure_retires_the_apps_cached_answers_on_every_gateway() {
    // Cached answers would otherwise live an hour.
    let g1 = Gateway::start(&[("CACHE_TTL_LIVE_SECS", "3600")]).await;
    let (g2, stop2) = second_gateway(&g1).await;
    let today = Utc::now().date_naive();
    let path = format!("/v1/stats/daily?from={today}&to={today}");
    let auth = format!("Bearer {}", g1.app.read_key);
    let events = |addr: String| {
        let (path, auth) = (path.clone(), auth.clone());
        async move {
            let r = request_at(&addr, Method::GET, &path, &[("authorization", &auth)], "").await;
            assert_eq!(r.status, 200, "{}", r.body);
            let days = r.body["days"].as_array().cloned().unwrap_or_default();
            days.iter()
                .map(|d| d["events"].as_i64().unwrap_or(0))
                .sum::<i64>()
        }
    };
    let a1 = g1.addr.to_string();
    assert_eq!(events(a1.clone()).await, 0);
    assert_eq!(events(g2.clone()).await, 0);
    let client = g1.db.client().await;
    client
        .execute(
            "INSERT INTO analytics_events (event_id, app_id, event_name, occurred_at, received_at) \
             VALUES (gen_random_uuid(), $1, 'e', now(), now())",
            &[&g1.app.app_id],
        )
        .await
        .expect("an event");
    assert_eq!(events(a1.clone()).await, 0, "cached");
    // What the maintenance worker commits when an erasure of this app is done.
    client
        .execute(
            "INSERT INTO privacy_epochs (app_id, erasures_done) VALUES ($1, 1)",
            &[&g1.app.app_id],
        )
        .await
        .expect("bump");
    let done = Instant::now();
    for addr in [a1, g2] {
        let fresh = wait_for(Duration::from_secs(3), || {
            let addr = addr.clone();
            let events = &events;
            async move { (events(addr).await == 1).then_some(()) }
        })
        .await;
        assert!(fresh.is_some(), "{addr} retired its cached answer");
    }
    assert!(
        done.elapsed() < Duration::from_secs(1),
        "{:?}",
        done.elapsed()
    );
    stop2.cancel();
    g1.stop().await;
}

/// The whole path: a user with stored events on two days (summarized, the stats answer cached)
/// and events still in the queue when the request arrives. Once `done`, nothing of theirs is
/// stored, the other user's events are all there, the unique counts of both days dropped by
/// one, and the stats API, asked at once, answers so.
#[tokio::test]
async fn an_erasure_reaches_the_queue_the_summary_and_the_cached_stats() {
    use maintenance_worker::erasure::{self, ErasureCtx, State};
    use maintenance_worker::jobs::{self, Job, JobCtx};

    let gw = Gateway::start(&[("CACHE_TTL_LIVE_SECS", "3600")]).await;
    let addr = gw.addr.to_string();
    let admin = admin_key(&gw, &gw.app.app_id).await;
    let jobs_ctx = JobCtx {
        db: Pools::new(&gw.db.config()).expect("pools").write,
        clock: maintenance_worker::clock::Clock::System,
        retention_months: 12,
        premake_months: 6,
        dedupe_window: Duration::from_secs(86_400),
    };
    let client = gw.db.client().await;
    let stored = |sql: &'static str| {
        let client = &client;
        async move {
            let n: i64 = client.query_one(sql, &[]).await.expect("count").get(0);
            n
        }
    };
    let y = (Utc::now() - chrono::Duration::days(1)).to_rfc3339();
    let events = |user: &str, n: usize, ts: Option<&str>| -> Vec<String> {
        (0..n)
            .map(|i| match ts {
                Some(t) => format!(
                    r#"{{"event_name":"signup","user_id":"{user}","session_id":"{user}-{i}","timestamp":"{t}"}}"#
                ),
                None => format!(
                    r#"{{"event_name":"signup","user_id":"{user}","session_id":"{user}-{i}"}}"#
                ),
            })
            .collect()
    };
    let mut first = events("victim", 3, Some(&y));
    first.extend(events("victim", 2, None));
    first.extend(events("other", 2, Some(&y)));
    first.extend(events("other", 4, None));
    let (stop, task) = crate::helpers::writer_task(&gw).await;
    assert_eq!(
        post_at(&addr, &gw.app.ingest_key, format!("[{}]", first.join(",")))
            .await
            .status,
        202
    );
    let all_in = wait_for(Duration::from_secs(20), || async {
        (stored("SELECT count(*) FROM analytics_events").await == 11).then_some(())
    })
    .await;
    assert!(all_in.is_some(), "the writer stored the first events");
    jobs::run(Job::Views, &jobs_ctx).await.expect("fold");

    let today = Utc::now().date_naive();
    let yesterday = today - chrono::Duration::days(1);
    let path = format!("/v1/stats/daily?from={yesterday}&to={today}");
    let auth = format!("Bearer {}", gw.app.read_key);
    let uniques = || async {
        let r = request_at(&addr, Method::GET, &path, &[("authorization", &auth)], "").await;
        assert_eq!(r.status, 200, "{}", r.body);
        let days = r.body["days"].as_array().cloned().unwrap_or_default();
        let of = |d: chrono::NaiveDate| {
            days.iter()
                .find(|x| x["day"] == d.to_string())
                .map(|x| {
                    (
                        x["events"].as_i64().unwrap_or(0),
                        x["unique_users"].as_i64().unwrap_or(0),
                    )
                })
                .unwrap_or((0, 0))
        };
        (
            of(yesterday),
            of(today),
            r.headers["x-cache"].to_str().unwrap_or("").to_owned(),
        )
    };
    let before = uniques().await;
    assert_eq!((before.0, before.1), ((5, 2), (6, 2)));
    assert_eq!(uniques().await.2, "HIT", "the answer is cached");

    // The writer stops; the victim's next events wait in the queue when the request arrives.
    stop.cancel();
    task.await
        .expect("writer task")
        .expect("writer stopped cleanly");
    let queued = events("victim", 3, None).join(",");
    assert_eq!(
        post_at(&addr, &gw.app.ingest_key, format!("[{queued}]"))
            .await
            .status,
        202
    );
    assert_eq!(gw.queued().await.len(), 3);
    let r = erase(&addr, &admin, r#"{"user_ids":["victim"]}"#).await;
    assert_eq!(r.status, 202, "{}", r.body);
    let id = r.body["erasure_id"].as_str().expect("id").to_owned();

    let ctx = ErasureCtx::new(jobs_ctx.clone(), tokio_util::sync::CancellationToken::new());
    // Without a writer the request waits for the queue.
    let p = erasure::tick(&ctx)
        .await
        .expect("tick")
        .expect("an open request");
    assert_eq!((p.state, p.waiting), (State::Queue, true));
    assert_eq!(status_of(&addr, &admin, &id).await.body["phase"], "queue");
    let (stop, task) = crate::helpers::writer_task(&gw).await;
    let done = wait_for(Duration::from_secs(90), || async {
        let p = erasure::tick(&ctx).await.expect("tick")?;
        (p.state == State::Done).then_some(())
    })
    .await;
    assert!(done.is_some(), "the erasure finished");

    // Asked at once after `done`: fresh answers, without the victim.
    let got = status_of(&addr, &admin, &id).await;
    assert_eq!(got.body["status"], "done", "{}", got.body);
    assert_eq!(got.body["removed"]["events"], 8, "{}", got.body);
    let after = uniques().await;
    assert_eq!((after.0, after.1), ((2, 1), (4, 1)), "{after:?}");
    assert_eq!(
        stored("SELECT count(*) FROM analytics_events WHERE user_id = 'victim'").await,
        0
    );
    assert_eq!(
        stored("SELECT count(*) FROM analytics_events WHERE user_id = 'other'").await,
        6
    );
    assert_eq!(
        stored("SELECT count(*) FROM summary_members WHERE member LIKE 'victim%'").await,
        0,
        "neither the user nor their sessions"
    );
    assert!(gw.queued().await.is_empty(), "the queue drained");
    stop.cancel();
    let _ = task.await;
    gw.stop().await;
}
