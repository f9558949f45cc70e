//! Shared pieces of the benchmarks: realistic events, latency statistics and the side-by-side
//! table (process figures are `testkit`'s).

use std::time::Duration;

use rand::Rng;
use shared::queue::QueuedEvent;
use uuid::Uuid;

pub mod baseline;
pub mod db;
pub mod load;
pub mod posthog;
pub mod spent;

/// Event names with a skewed (Zipf-like) distribution: the first is the most common.
pub const EVENT_NAMES: &[&str] = &[
    "page_view",
    "click",
    "scroll",
    "session_start",
    "search",
    "add_to_cart",
    "signup",
    "login",
    "checkout_start",
    "purchase",
    "video_play",
    "share",
    "logout",
    "error",
    "refund",
];

/// Picks an index in `0..n` with probability about proportional to 1/(i+1).
pub fn zipf(rng: &mut impl Rng, n: usize) -> usize {
    let h: f64 = (1..=n).map(|i| 1.0 / i as f64).sum();
    let mut x = rng.random::<f64>() * h;
    for i in 0..n {
        x -= 1.0 / (i + 1) as f64;
        if x <= 0.0 {
            return i;
        }
    }
    n - 1
}

/// A realistic event as the gateway queues it: 50 apps, 10,000 users, skewed names, a 4-key
/// metadata object, a time-ordered id.
pub fn queued_event(rng: &mut impl Rng, now_us: i64) -> QueuedEvent {
    let app = rng.random_range(0..50);
    let user = rng.random_range(0..10_000);
    QueuedEvent {
        event_id: Uuid::now_v7(),
        app_id: format!("app_{app:02}"),
        event_name: EVENT_NAMES[zipf(rng, EVENT_NAMES.len())].to_owned(),
        occurred_at_us: now_us - rng.random_range(0..60_000_000),
        received_at_us: now_us,
        user_id: Some(format!("user_{user}")),
        session_id: Some(format!("sess_{}_{}", user, rng.random_range(0..5))),
        metadata: Some(metadata_json(rng)),
        client_id: false,
    }
}

pub fn metadata_json(rng: &mut impl Rng) -> String {
    let referrer = ["google", "direct", "newsletter", "twitter"][rng.random_range(0..4)];
    serde_json::json!({
        "path": format!("/products/{}", rng.random_range(0..500)),
        "referrer": referrer,
        "price_cents": rng.random_range(100..50_000),
        "ab_bucket": rng.random_range(0..4),
    })
    .to_string()
}

/// The same event as a client would POST it (JSON object text).
pub fn client_event_json(rng: &mut impl Rng) -> String {
    let user = rng.random_range(0..10_000);
    format!(
        r#"{{"event_name":"{}","user_id":"user_{user}","session_id":"sess_{user}","metadata":{}}}"#,
        EVENT_NAMES[zipf(rng, EVENT_NAMES.len())],
        metadata_json(rng)
    )
}

/// One Segment track message as `@segment/analytics-node` sends it (about 600 bytes): the same
/// event names, users and properties as [`client_event_json`], in Segment's envelope fields.
pub fn segment_message_json(rng: &mut impl Rng) -> String {
    let user = rng.random_range(0..10_000);
    let id = uuid::Uuid::new_v4();
    format!(
        r#"{{"timestamp":"{}","integrations":{{}},"event":"{}","type":"track","properties":{},"context":{{"ip":"203.0.113.7","sessionId":"sess_{user}","library":{{"name":"@segment/analytics-node","version":"3.1.0"}}}},"userId":"user_{user}","anonymousId":"anon_{user}","messageId":"node-next-{}-{id}","_metadata":{{"nodeVersion":"v20.20.2","jsRuntime":"node"}}}}"#,
        chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        EVENT_NAMES[zipf(rng, EVENT_NAMES.len())],
        metadata_json(rng),
        chrono::Utc::now().timestamp_millis(),
    )
}

/// Percentile of sorted samples, `p` in 0..=100.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let idx = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

/// Prints rows as an aligned table.
pub fn print_table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.len());
        }
    }
    let line = |cells: Vec<String>| {
        cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<w$}", w = widths[i]))
            .collect::<Vec<_>>()
            .join(" | ")
    };
    println!("{}", line(header.iter().map(|s| s.to_string()).collect()));
    println!(
        "{}",
        widths
            .iter()
            .map(|w| "-".repeat(*w))
            .collect::<Vec<_>>()
            .join("-|-")
    );
    for r in rows {
        println!("{}", line(r.clone()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zipf_is_skewed_and_in_range() {
        let mut rng = rand::rng();
        let mut counts = [0usize; 15];
        for _ in 0..20_000 {
            counts[zipf(&mut rng, 15)] += 1;
        }
        assert!(counts[0] > counts[5] && counts[5] > counts[14]);
    }

    #[test]
    fn percentiles() {
        let v: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile(&v, 50.0), Duration::from_millis(51));
        assert_eq!(percentile(&v, 99.0), Duration::from_millis(99));
        assert_eq!(percentile(&[], 99.0), Duration::ZERO);
    }
}
