//! Sluice's PostHog route beside PostHog's own capture service, on the same `POST /batch/`
//! bodies: the capture binary (`--posthog-capture PATH`, built as docs/benchmarks.md says) runs
//! with its print sink, its output discarded, and the two take alternating phases.

use std::process::Stdio;
use std::time::{Duration, Instant};

use bytes::Bytes;

use bench::load::bytes_per_event;
use bench::load::{Phases, Target};
use bench::posthog::{batch_bodies, Size};

use crate::meter::{median, spread, Meter, Metered};

/// The project token capture's bodies carry: capture refuses a token over 64 bytes, and Sluice's
/// keys are longer, so its bodies are Sluice's with this token in the key's place.
const CAPTURE_TOKEN: &str = "phc_sluiceBenchmarkToken0123456789abcdefghijk";

/// `bodies` with every `key` replaced by `token`.
fn with_token(bodies: &[Bytes], key: &str, token: &str) -> Vec<Bytes> {
    bodies
        .iter()
        .map(|b| {
            let text = std::str::from_utf8(b).expect("bench bodies are UTF-8");
            Bytes::from(text.replace(key, token))
        })
        .collect()
}

/// A running PostHog capture process; killed when dropped.
pub struct Capture {
    child: tokio::process::Child,
    pub addr: String,
}

impl Capture {
    /// Starts `path` on a free loopback port and waits until it accepts a batch.
    pub async fn start(path: &str) -> anyhow::Result<Self> {
        let addr = free_addr()?;
        let child = tokio::process::Command::new(path)
            .env("ADDRESS", &addr)
            .env("PRINT_SINK", "true")
            .env("KAFKA_HOSTS", "127.0.0.1:9092")
            .env("REDIS_URL", "redis://127.0.0.1:6379/")
            // Unset, it logs errors only and skips formatting each event for its debug line.
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| anyhow::anyhow!("cannot start PostHog capture {path}: {e}"))?;
        let capture = Self { child, addr };
        capture.wait_ready().await?;
        Ok(capture)
    }

    pub fn pid(&self) -> u32 {
        self.child.id().unwrap_or(0)
    }

    async fn wait_ready(&self) -> anyhow::Result<()> {
        let target = Target::posthog(&self.addr, 1);
        let body = batch_bodies(Size::Small, CAPTURE_TOKEN, 1, 1).remove(0);
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if target.send(body.clone(), 1).await.is_some() {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        anyhow::bail!(
            "PostHog capture at {} did not accept a batch within 30 s",
            self.addr
        )
    }
}

fn free_addr() -> anyhow::Result<String> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.to_string())
}

/// The servers one comparison runs against: Sluice's gateway, and PostHog's capture if given.
pub struct Servers<'a> {
    pub gateway_addr: &'a str,
    pub gateway_pid: u32,
    pub key: &'a str,
    pub capture: Option<&'a Capture>,
}

/// One event size: Sluice's median round and, when capture ran, capture's.
pub struct Comparison {
    pub size: Size,
    pub bytes_per_event: f64,
    pub sluice: Metered,
    pub sluice_spread: String,
    pub capture: Option<(Metered, String)>,
}

/// `rounds` alternating phases of batches of 100 `size` events against each server.
pub async fn compare(
    meter: &Meter,
    phases: &Phases,
    rounds: usize,
    servers: &Servers<'_>,
    size: Size,
) -> Comparison {
    let bodies = batch_bodies(size, servers.key, 100, 16);
    let capture_bodies = with_token(&bodies, servers.key, CAPTURE_TOKEN);
    let sluice_target = Target::posthog(servers.gateway_addr, phases.connections);
    let capture_target = servers
        .capture
        .map(|c| (c.pid(), Target::posthog(&c.addr, phases.connections)));
    let (mut sluice, mut capture) = (Vec::new(), Vec::new());
    for round in 1..=rounds {
        eprintln!(
            "Round {round}/{rounds}: PostHog /batch/, {} events, Sluice...",
            size.label()
        );
        let run = phases.closed(&sluice_target, &bodies, 100);
        sluice.push(meter.phase(servers.gateway_pid, run).await);
        if let Some((pid, target)) = &capture_target {
            eprintln!(
                "Round {round}/{rounds}: PostHog /batch/, {} events, PostHog capture...",
                size.label()
            );
            capture.push(
                meter
                    .phase(*pid, phases.closed(target, &capture_bodies, 100))
                    .await,
            );
        }
    }
    let sluice_spread = spread(&sluice);
    let capture = (!capture.is_empty()).then(|| {
        let s = spread(&capture);
        (median(capture), s)
    });
    Comparison {
        size,
        bytes_per_event: bytes_per_event(&bodies, 100),
        sluice: median(sluice),
        sluice_spread,
        capture,
    }
}

impl Comparison {
    /// The table rows: Sluice's, then capture's.
    pub fn rows(&self) -> Vec<Vec<String>> {
        let what = format!(
            "PostHog /batch/, 100 {} events ({:.0} B/event)",
            self.size.label(),
            self.bytes_per_event
        );
        let mut rows = vec![self.sluice.row(&format!("Sluice: {what}"))];
        if let Some((c, _)) = &self.capture {
            rows.push(c.row(&format!("PostHog capture (print sink): {what}")));
        }
        rows
    }

    /// The verdict line: CPU per million events and events/s, Sluice against capture.
    pub fn verdict(&self) -> String {
        let s = &self.sluice;
        let mut line = format!(
            "PostHog {} events: Sluice gateway + Redis {:.2} CPU-s per million events ({:.2} + {:.2}), events/s over the rounds {}",
            self.size.label(),
            s.total_per_million(),
            s.per_million(s.server_cpu),
            s.per_million(s.redis_cpu),
            self.sluice_spread,
        );
        if let Some((c, spread)) = &self.capture {
            line += &format!(
                "; PostHog capture {:.2} CPU-s per million (itself {:.2}), events/s {spread}; Sluice / capture: CPU {:.2}x, events/s {:.2}x",
                c.total_per_million(),
                c.per_million(c.server_cpu),
                s.total_per_million() / c.total_per_million().max(1e-9),
                s.load.events_per_sec() / c.load.events_per_sec().max(1.0),
            );
        }
        line
    }

    pub fn summary(&self) -> serde_json::Value {
        serde_json::json!({
            "size": self.size.label(),
            "bytes_per_event": self.bytes_per_event,
            "sluice": self.sluice.summary(),
            "posthog_capture": self.capture.as_ref().map(|(c, _)| c.summary()),
        })
    }
}
