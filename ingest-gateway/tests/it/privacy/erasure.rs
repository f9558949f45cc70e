//! What a finished erasure changes at the gateway: every gateway retires the app's cached
//! answers, and the whole path from the queue to the summary and the stats answers.

use std::time::{Duration, Instant};

use chrono::Utc;
use http::Method;
use shared::db::Pools;
use testkit::wait_for;

use super::{admin_key, erase, status_of};
use crate::helpers::{post_at, request_at, second_gateway, Gateway};

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
