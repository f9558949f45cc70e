//! One sample a second of the running pipeline: events accepted and written, queue lag, each
//! daemon's memory and the latency histogram.

use std::time::{Duration, Instant};

use testkit::rss_mib;
use tokio_util::sync::CancellationToken;

use crate::metrics::{buckets, metric, scrape};

/// One second of the run.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Sample {
    pub t: f64,
    pub accepted: f64,
    pub written: f64,
    pub lag: f64,
    pub rss_mib: Vec<f64>,
    /// Cumulative end-to-end latency histogram over all writers: (upper bound s, count).
    #[serde(skip)]
    pub buckets: Vec<(f64, f64)>,
}

/// What the sampler reads: the daemons' processes and ops addresses.
pub struct Sources {
    pub pids: Vec<u32>,
    pub gateway_ops: String,
    pub writer_ops: Vec<String>,
}

/// Takes one sample a second from `started` on, until `stop`; the samples.
pub fn spawn(
    sources: Sources,
    started: Instant,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<Vec<Sample>> {
    tokio::spawn(async move {
        let mut samples = Vec::new();
        loop {
            samples.push(sample(&sources, started).await);
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = stop.cancelled() => return samples,
            }
        }
    })
}

async fn sample(s: &Sources, started: Instant) -> Sample {
    let g = scrape(std::slice::from_ref(&s.gateway_ops)).await.concat();
    let each = scrape(&s.writer_ops).await;
    let text = each.concat();
    let written = metric(&text, "sluice_events_written_total");
    let lag = each
        .iter()
        .map(|m| metric(m, "sluice_queue_lag_events"))
        .fold(0.0, f64::max);
    Sample {
        t: started.elapsed().as_secs_f64(),
        accepted: metric(&g, "sluice_events_accepted_total"),
        written,
        lag,
        rss_mib: s.pids.iter().map(|p| rss_mib(*p).unwrap_or(0.0)).collect(),
        buckets: buckets(&text),
    }
}
