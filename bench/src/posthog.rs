//! PostHog loads: `POST /batch/` bodies as PostHog's SDKs send them, the same bytes for Sluice's
//! PostHog route and for PostHog's own capture service, so the two are compared on identical
//! requests.
//!
//! - [`Size::Small`]: about 200 bytes an event, a posthog-node `capture` with the native load's
//!   names, users and 4-key properties;
//! - [`Size::Web`]: about 1.2 KB an event, a posthog-js `$pageview`-style event with the
//!   browser, screen, URL, session and person properties posthog-js adds to every event.

use bytes::Bytes;
use rand::Rng;

use crate::{metadata_json, zipf, EVENT_NAMES};

/// Which event shape a load sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Size {
    Small,
    Web,
}

impl Size {
    pub fn label(self) -> &'static str {
        match self {
            Size::Small => "small",
            Size::Web => "posthog-js",
        }
    }
}

/// An ISO time as posthog-node writes it (`...sssZ`).
fn now_iso() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// A posthog-node style event of about 200 bytes.
pub fn small_event_json(rng: &mut impl Rng) -> String {
    let user = rng.random_range(0..10_000);
    format!(
        r#"{{"event":"{}","distinct_id":"user_{user}","properties":{},"timestamp":"{}","uuid":"{}"}}"#,
        EVENT_NAMES[zipf(rng, EVENT_NAMES.len())],
        metadata_json(rng),
        now_iso(),
        uuid::Uuid::now_v7(),
    )
}

/// A posthog-js style event of about 1.2 KB: what the browser SDK attaches to every capture.
pub fn web_event_json(rng: &mut impl Rng, token: &str) -> String {
    let user = rng.random_range(0..10_000);
    let page = rng.random_range(0..500);
    let session = uuid::Uuid::now_v7();
    let (os, browser) = [
        ("Mac OS X", "Chrome"),
        ("Windows", "Edge"),
        ("iOS", "Mobile Safari"),
        ("Android", "Chrome"),
    ][rng.random_range(0..4)];
    let properties = format!(
        concat!(
            r#"{{"$os":"{os}","$os_version":"14.6.1","$browser":"{browser}","$device_type":"Desktop","#,
            r#""$current_url":"https://shop.example.com/products/{page}?utm_source=newsletter","#,
            r#""$host":"shop.example.com","$pathname":"/products/{page}","$raw_user_agent":"Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36","#,
            r#""$browser_version":131,"$browser_language":"en-US","$browser_language_prefix":"en","$screen_height":1117,"$screen_width":1728,"#,
            r#""$viewport_height":958,"$viewport_width":1728,"$lib":"web","$lib_version":"1.200.2","$insert_id":"{insert}","#,
            r#""$time":{time},"distinct_id":"user_{user}","$device_id":"{device}","$user_id":"user_{user}","#,
            r#""$initial_referrer":"$direct","$initial_referring_domain":"$direct","$referrer":"https://www.google.com/","#,
            r#""$referring_domain":"www.google.com","$session_id":"{session}","$window_id":"{window}","#,
            r#""$pageview_id":"{pageview}","$is_identified":true,"$process_person_profile":true,"token":"{token}","#,
            r#""path":"/products/{page}","price_cents":{price},"ab_bucket":{bucket}}}"#
        ),
        os = os,
        browser = browser,
        page = page,
        insert = &uuid::Uuid::new_v4().simple().to_string()[..16],
        time = chrono::Utc::now().timestamp_millis() as f64 / 1000.0,
        user = user,
        device = uuid::Uuid::now_v7(),
        session = session,
        window = uuid::Uuid::now_v7(),
        pageview = uuid::Uuid::now_v7(),
        token = token,
        price = rng.random_range(100..50_000),
        bucket = rng.random_range(0..4),
    );
    format!(
        r#"{{"event":"{}","distinct_id":"user_{user}","properties":{properties},"timestamp":"{}","uuid":"{}"}}"#,
        EVENT_NAMES[zipf(rng, EVENT_NAMES.len())],
        now_iso(),
        uuid::Uuid::now_v7(),
    )
}

/// `POST /batch/` bodies of `batch` events each (`variants` of them, built once), with the key
/// in the body as PostHog's SDKs send it.
pub fn batch_bodies(size: Size, key: &str, batch: usize, variants: usize) -> Vec<Bytes> {
    let mut rng = rand::rng();
    (0..variants)
        .map(|_| {
            let events: Vec<String> = (0..batch)
                .map(|_| match size {
                    Size::Small => small_event_json(&mut rng),
                    Size::Web => web_event_json(&mut rng, key),
                })
                .collect();
            Bytes::from(format!(
                r#"{{"api_key":"{key}","batch":[{}],"sent_at":"{}"}}"#,
                events.join(","),
                now_iso()
            ))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load::bytes_per_event;

    #[test]
    fn events_have_the_sizes_the_docs_give_and_parse() {
        let small = batch_bodies(Size::Small, "phc_key", 100, 2);
        let web = batch_bodies(Size::Web, "phc_key", 100, 2);
        let (s, w) = (bytes_per_event(&small, 100), bytes_per_event(&web, 100));
        assert!((170.0..260.0).contains(&s), "small events are {s} bytes");
        assert!(
            (1000.0..1400.0).contains(&w),
            "posthog-js events are {w} bytes"
        );
        for body in small.iter().chain(&web) {
            let v: serde_json::Value = serde_json::from_slice(body).unwrap();
            assert_eq!(v["api_key"], "phc_key");
            assert_eq!(v["batch"].as_array().unwrap().len(), 100);
        }
    }
}
