//! PostHog's SDKs: posthog-node (v0 and v1 capture), posthog-python (v0 and v1, zstd) and
//! posthog-js in Chromium across origins.

use super::{
    about_an_hour_ago, containment_finds, drive, find, host, props_ok, rows, run_id, with_pipeline,
};
use crate::helpers::Gateway;

/// PostHog: the calls of posthog-node (6) or posthog-python (7, `$set` and `$set_once`).
async fn posthog_format(gw: &Gateway, which: &str, run: &str, python: bool) {
    let rows = rows(gw, if python { 7 } else { 6 }).await;
    let user = format!("u_{which}_{run}");
    let track = find(&rows, "Order Completed");
    assert_eq!(
        track.event_id.to_string(),
        format!("01890000-0000-7000-8000-{}", &run[run.len() - 12..])
    );
    assert_eq!(track.user.as_deref(), Some(user.as_str()));
    assert_eq!(
        track.session.as_deref(),
        Some(format!("sess_{run}").as_str())
    );
    about_an_hour_ago(track.at);
    props_ok(&track.meta);
    assert_eq!(
        find(&rows, "$pageview").meta["properties"]["$current_url"],
        "https://example.com/docs"
    );
    let alias = find(&rows, "$create_alias");
    let group = find(&rows, "$groupidentify");
    assert_eq!(
        group.meta["properties"]["$group_key"],
        format!("g_{run}").as_str()
    );
    assert_eq!(
        find(&rows, "Group Event").meta["properties"]["$groups"]["company"],
        format!("g_{run}").as_str()
    );
    if python {
        // posthog-python: alias(previous_id=P, distinct_id=U) sends distinct_id P.
        assert_eq!(alias.user.as_deref(), Some(format!("prev_{run}").as_str()));
        let set = find(&rows, "$set");
        let traits = set
            .meta
            .get("$set")
            .unwrap_or(&set.meta["properties"]["$set"]);
        assert_eq!(traits["email"], "jane@example.com", "{}", set.meta);
        find(&rows, "$set_once");
    } else {
        assert_eq!(
            alias.meta["properties"]["alias"],
            format!("prev_{run}").as_str()
        );
        let identify = find(&rows, "$identify");
        assert_eq!(
            identify.meta["properties"]["$set"]["email"],
            "jane@example.com"
        );
    }
    for r in &rows {
        assert!(r.meta["properties"].get("token").is_none());
    }
    containment_finds(gw, "Order Completed").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn posthog_node_delivers_gzip_batches() {
    with_pipeline(|gw| async move {
        let run = run_id();
        drive(
            "node",
            &["sdk.js", "posthog", &host(&gw), &gw.app.ingest_key, &run],
            &[],
        )
        .await;
        posthog_format(&gw, "posthog", &run, false).await;
        gw
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn posthog_node_v1_gets_its_results_map() {
    with_pipeline(|gw| async move {
        let run = run_id();
        let args = ["sdk.js", "posthog-v1", &host(&gw), &gw.app.ingest_key, &run];
        drive("node", &args, &[("POSTHOG_CAPTURE_MODE", "v1")]).await;
        posthog_format(&gw, "posthog-v1", &run, false).await;
        gw
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn posthog_python_delivers_v0_and_v1_with_zstd() {
    with_pipeline(|gw| async move {
        let run = run_id();
        let key = gw.app.ingest_key.clone();
        drive(
            "python",
            &["sdk.py", "posthog", &host(&gw), &key, &run],
            &[],
        )
        .await;
        posthog_format(&gw, "posthog", &run, true).await;
        gw.db
            .client()
            .await
            .batch_execute("TRUNCATE analytics_events")
            .await
            .expect("truncate");
        let run = run_id();
        drive(
            "python",
            &["sdk.py", "posthog-v1", &host(&gw), &key, &run, "zstd"],
            &[],
        )
        .await;
        posthog_format(&gw, "posthog-v1", &run, true).await;
        gw
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn posthog_js_in_chromium_sends_across_origins() {
    with_pipeline(|gw| async move {
        let run = run_id();
        let report = drive(
            "node",
            &["browser.js", &host(&gw), &gw.app.ingest_key, &run],
            &[],
        )
        .await;
        let rows = rows(&gw, 3).await;
        let user = format!("browser_user_{run}");
        for name in ["$identify", "browser_event", "beacon_event"] {
            let r = find(&rows, name);
            assert_eq!(r.user.as_deref(), Some(user.as_str()), "{r:?}");
            assert!(r.meta["properties"].get("token").is_none());
            assert_eq!(r.event_id.get_version_num(), 7, "posthog-js's own uuid");
        }
        assert_eq!(
            find(&rows, "browser_event").meta["properties"]["plan"],
            "pro"
        );
        let answers = report["answers"].as_array().expect("answers");
        // The browser's fetch (CORS) and its sendBeacon ("ping"), both answered 200.
        for kind in ["fetch", "ping"] {
            assert!(
                answers
                    .iter()
                    .any(|a| a["status"] == 200 && a["kind"] == kind),
                "{kind}: {report}"
            );
        }
        gw
    })
    .await;
}
