//! `GET /` in a real browser (Debian's headless Chromium): the page loads with nothing on the
//! console (no error, no refused resource), and shows, for the read key in its fragment, the
//! events the test just sent through the real pipeline: the 30-day chart, the top events and
//! today's live table. A screenshot is kept at `target/page-screenshot.png`.

use std::time::Duration;

use crate::helpers::{writer, Gateway};

fn chromium(args: &[&str]) -> (String, String) {
    let out = std::process::Command::new("chromium")
        .args([
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--enable-logging=stderr",
            "--v=0",
            "--virtual-time-budget=15000",
        ])
        .args(args)
        .output()
        .expect("chromium is installed (scripts/test installs Debian's package)");
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_shows_the_events_just_posted_with_nothing_on_the_console() {
    let gw = Gateway::start(&[]).await;
    let stop = writer(&gw).await;
    let mut events = Vec::new();
    for i in 0..5 {
        events.push(serde_json::json!({"event_name": "page_view", "user_id": format!("u{i}")}));
    }
    for i in 0..3 {
        events.push(serde_json::json!({"event_name": "signup", "user_id": format!("u{i}")}));
    }
    let r = gw.post(serde_json::to_vec(&events).expect("json")).await;
    assert_eq!(r.status, 202);
    let c = gw.db.client().await;
    let stored = testkit::wait_for(Duration::from_secs(15), || async {
        let n: i64 = c
            .query_one("SELECT count(*) FROM analytics_events", &[])
            .await
            .ok()?
            .get(0);
        (n == 8).then_some(())
    })
    .await;
    assert!(stored.is_some(), "the pipeline stored the events");

    let (status, page) = testkit::http_get(&gw.addr.to_string(), "/")
        .await
        .expect("page");
    assert_eq!(status, 200);
    assert!(page.starts_with("<!doctype html>"));

    // The console check can fail: a page that logs is caught.
    let (_, log) = chromium(&[
        "--dump-dom",
        "data:text/html,<script>console.error('self-check')</script>",
    ]);
    assert!(
        log.contains(":CONSOLE") && log.contains("self-check"),
        "{log}"
    );

    let url = format!("http://{}/#key={}", gw.addr, gw.app.read_key);
    let (dom, log) = chromium(&["--dump-dom", &url]);
    let console: Vec<&str> = log.lines().filter(|l| l.contains(":CONSOLE")).collect();
    assert!(console.is_empty(), "the console: {console:?}");
    for needle in [
        "Showing the app of this key",
        "<svg",
        "page_view (5)",
        "signup (3)",
        "<td>page_view</td><td class=\"n\">5</td>",
        "<td>signup</td><td class=\"n\">3</td><td class=\"n\">3</td>",
    ] {
        assert!(dom.contains(needle), "the page shows {needle:?}:\n{dom}");
    }
    assert!(
        !dom.contains(&gw.app.read_key[8..]),
        "the key is not left in the page"
    );

    // A wrong key says so, and the page stays usable.
    let bad = format!("http://{}/#key=sk_read_{}", gw.addr, "0".repeat(64));
    let (dom, _) = chromium(&["--dump-dom", &bad]);
    assert!(dom.contains("the API key is unknown"), "{dom}");

    let shot = format!(
        "{}/../target/page-screenshot.png",
        env!("CARGO_MANIFEST_DIR")
    );
    let _ = std::fs::remove_file(&shot);
    chromium(&[
        &format!("--screenshot={shot}"),
        "--window-size=1280,800",
        "--hide-scrollbars",
        &url,
    ]);
    let size = std::fs::metadata(&shot).map(|m| m.len()).unwrap_or(0);
    assert!(size > 10_000, "a screenshot at {shot} ({size} bytes)");
    stop.cancel();
    gw.stop().await;
}
