//! An HTTP load generator for `POST /v1/events`: closed-loop (as fast as possible with C
//! connections) or open-loop at a fixed rate, recording each request's latency.
//!
//! - this module: what a run measured ([`LoadResult`]), request bodies, the [`Target`] (one
//!   `testkit::HttpSender`), [`Plan`], the load of loadgen and e2e-bench, and [`Phases`], those
//!   of gateway-bench and cluster-bench;
//! - [`drive`]: the loops (closed, fixed rate, until stopped);
//! - [`progress`]: the progress line on the terminal;
//! - [`xadd`]: the raw pipelined XADD rate of a Redis, the ceiling of any gateway on it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use testkit::HttpSender;

use crate::client_event_json;

pub mod drive;
pub mod progress;
pub mod xadd;

pub use drive::{
    closed_loop, closed_loop_with, fixed_rate, fixed_rate_with, run_with_progress, until_stopped,
};
pub use progress::Progress;
pub use xadd::raw_xadd;

/// What a load run measured.
#[derive(Debug, Clone)]
pub struct LoadResult {
    pub requests: u64,
    pub events_accepted: u64,
    pub failures: u64,
    pub elapsed: Duration,
    /// Sorted request latencies.
    pub latencies: Vec<Duration>,
}

impl LoadResult {
    fn new(
        mut latencies: Vec<Duration>,
        accepted: &AtomicU64,
        failures: &AtomicU64,
        elapsed: Duration,
    ) -> Self {
        latencies.sort();
        Self {
            requests: latencies.len() as u64,
            events_accepted: accepted.load(Ordering::Relaxed),
            failures: failures.load(Ordering::Relaxed),
            elapsed,
            latencies,
        }
    }

    pub fn events_per_sec(&self) -> f64 {
        self.events_accepted as f64 / self.elapsed.as_secs_f64()
    }

    pub fn requests_per_sec(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64()
    }

    pub fn p(&self, pct: f64) -> Duration {
        crate::percentile(&self.latencies, pct)
    }

    /// The header of [`LoadResult::row`], after the name column.
    pub const COLUMNS: [&'static str; 5] =
        ["events/s", "requests/s", "p50 ms", "p99 ms", "failures"];

    /// A table row: `name`, events/s, requests/s, p50 and p99 in ms, failures.
    pub fn row(&self, name: &str) -> Vec<String> {
        let ms = |d: Duration| format!("{:.2}", d.as_secs_f64() * 1000.0);
        vec![
            name.to_owned(),
            format!("{:.0}", self.events_per_sec()),
            format!("{:.0}", self.requests_per_sec()),
            ms(self.p(50.0)),
            ms(self.p(99.0)),
            self.failures.to_string(),
        ]
    }
}

/// Request bodies of `batch` events each (a few variants, built once so the generator costs
/// little CPU).
pub fn bodies(batch: usize, variants: usize) -> Vec<Bytes> {
    let mut rng = rand::rng();
    (0..variants)
        .map(|_| {
            let events: Vec<String> = (0..batch).map(|_| client_event_json(&mut rng)).collect();
            if batch == 1 {
                Bytes::from(events.concat())
            } else {
                Bytes::from(format!("[{}]", events.join(",")))
            }
        })
        .collect()
}

/// Mean bytes per event of `bodies` of `batch` events.
pub fn bytes_per_event(bodies: &[Bytes], batch: usize) -> f64 {
    bodies.iter().map(|b| b.len()).sum::<usize>() as f64 / (bodies.len() * batch) as f64
}

/// Segment `/v1/batch` bodies of `batch` messages each, as `@segment/analytics-node` sends them.
pub fn segment_bodies(batch: usize, variants: usize) -> Vec<Bytes> {
    let mut rng = rand::rng();
    (0..variants)
        .map(|_| {
            let msgs: Vec<String> = (0..batch)
                .map(|_| crate::segment_message_json(&mut rng))
                .collect();
            Bytes::from(format!(
                r#"{{"batch":[{}],"sentAt":"{}"}}"#,
                msgs.join(","),
                chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
            ))
        })
        .collect()
}

#[derive(Clone)]
pub struct Target {
    pub key: String,
    /// The status that means accepted.
    ok: u16,
    http: HttpSender,
}

impl Target {
    pub fn new(addr: &str, key: &str, connections: usize) -> Self {
        Self {
            key: key.to_owned(),
            ok: 202,
            http: HttpSender::new(
                format!("http://{addr}/v1/events"),
                format!("Bearer {key}"),
                connections,
            ),
        }
    }

    /// The Segment `/v1/batch` route, with Basic auth as Segment's SDKs send it.
    pub fn segment(addr: &str, key: &str, connections: usize) -> Self {
        use base64::Engine;
        let basic = base64::engine::general_purpose::STANDARD.encode(format!("{key}:"));
        Self {
            key: key.to_owned(),
            ok: 200,
            http: HttpSender::new(
                format!("http://{addr}/v1/batch"),
                format!("Basic {basic}"),
                connections,
            ),
        }
    }

    /// PostHog's v0 `POST /batch/` at `addr` (Sluice's PostHog route or PostHog's capture): the
    /// key travels in the body, and 200 means accepted.
    pub fn posthog(addr: &str, connections: usize) -> Self {
        Self {
            key: String::new(),
            ok: 200,
            http: HttpSender::new(format!("http://{addr}/batch/"), String::new(), connections),
        }
    }

    /// The URL the load goes to.
    pub fn url(&self) -> &str {
        &self.http.url
    }

    /// Sends one body; the number of accepted events, or `None` on failure.
    pub async fn send(&self, body: Bytes, events: u64) -> Option<u64> {
        let (status, _) = self.http.post(body).await?;
        (status == self.ok).then_some(events)
    }
}

// The closed-loop phases of the gateway benchmarks (gateway-bench, cluster-bench): `--seconds`
// each, with `--connections` concurrent requests. (Not a doc comment: clap would show it as the
// benchmarks' description.)
#[derive(Debug, Clone, Copy, clap::Args)]
pub struct Phases {
    /// Seconds per phase.
    #[arg(long, default_value_t = 8)]
    pub seconds: u64,
    #[arg(long, default_value_t = 64)]
    pub connections: usize,
}

impl Phases {
    pub fn duration(&self) -> Duration {
        Duration::from_secs(self.seconds)
    }

    /// One phase: `bodies` (`events` each) sent to `target` as fast as the connections go.
    pub async fn closed(&self, target: &Target, bodies: &[Bytes], events: u64) -> LoadResult {
        closed_loop(target, bodies, events, self.connections, self.duration()).await
    }
}

/// The load of loadgen and e2e-bench: requests of `batch` events (32 bodies, built once), at
/// `rate` requests per second when it is above zero, else as fast as `connections` concurrent
/// requests go, for `duration`, with a progress line.
pub struct Plan {
    pub batch: usize,
    pub rate: f64,
    pub connections: usize,
    pub duration: Duration,
    bodies: Vec<Bytes>,
}

impl Plan {
    pub fn new(batch: usize, rate: f64, connections: usize, duration: Duration) -> Self {
        Self {
            batch,
            rate,
            connections,
            duration,
            bodies: bodies(batch, 32),
        }
    }

    /// Runs the load against `target`.
    pub async fn run(&self, target: &Target) -> LoadResult {
        let events = self.batch as u64;
        let (rate, connections) = (self.rate, self.connections);
        run_with_progress(
            target,
            &self.bodies,
            events,
            rate,
            connections,
            self.duration,
        )
        .await
    }
}
