//! Segment's and RudderStack's SDKs for Node and Python, and Jitsu's on both of its routes:
//! every call type delivered and stored as mapped.

use super::{drive, find, host, props_ok, rows, run_id, segment_format, with_pipeline, Row};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn segment_analytics_node_delivers_every_call_type() {
    with_pipeline(|gw| async move {
        let run = run_id();
        drive(
            "node",
            &["sdk.js", "segment", &host(&gw), &gw.app.ingest_key, &run],
            &[],
        )
        .await;
        segment_format(&gw, "segment", &run, false).await;
        gw
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rudderstack_node_delivers_gzip_labelled_as_a_form() {
    with_pipeline(|gw| async move {
        let run = run_id();
        drive(
            "node",
            &["sdk.js", "rudder", &host(&gw), &gw.app.ingest_key, &run],
            &[],
        )
        .await;
        segment_format(&gw, "rudder", &run, false).await;
        let track = rows(&gw, 6).await;
        assert_eq!(find(&track, "$identify").meta["channel"], "server");
        gw
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn segment_python_delivers_every_call_type() {
    with_pipeline(|gw| async move {
        let run = run_id();
        let key = gw.app.ingest_key.clone();
        drive(
            "python",
            &["sdk.py", "segment", &host(&gw), &key, &run, "gzip"],
            &[],
        )
        .await;
        segment_format(&gw, "segment", &run, false).await;
        gw
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rudderstack_python_gets_exactly_200_and_delivers() {
    with_pipeline(|gw| async move {
        let run = run_id();
        drive(
            "python",
            &["sdk.py", "rudder", &host(&gw), &gw.app.ingest_key, &run],
            &[],
        )
        .await;
        // rudder-sdk-python puts identify traits only in context.traits.
        segment_format(&gw, "rudder", &run, true).await;
        gw
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jitsu_delivers_with_an_id_secret_key_on_both_routes() {
    with_pipeline(|gw| async move {
        for (i, which) in ["jitsu", "jitsu-s2s"].into_iter().enumerate() {
            let run = run_id();
            drive(
                "node",
                &["sdk.js", which, &host(&gw), &gw.app.ingest_key, &run],
                &[],
            )
            .await;
            let rows = rows(&gw, 4 * (i + 1)).await;
            let user = format!("u_{which}_{run}");
            let mine: Vec<&Row> = rows
                .iter()
                .filter(|r| r.user.as_deref() == Some(&user))
                .collect();
            let names: Vec<&str> = mine.iter().map(|r| r.name.as_str()).collect();
            assert_eq!(
                names,
                vec!["$group", "$identify", "$page", "Order Completed"],
                "{rows:#?}"
            );
            let track = mine[3];
            props_ok(&track.meta);
            assert_eq!(track.meta["context"]["library"]["name"], "@jitsu/js");
            assert!(
                track.meta["messageId"].is_string(),
                "Jitsu's base-36 id is kept"
            );
            assert_eq!(mine[1].meta["traits"]["email"], "jane@example.com");
            assert_eq!(mine[0].meta["groupId"], format!("g_{run}").as_str());
        }
        gw
    })
    .await;
}
