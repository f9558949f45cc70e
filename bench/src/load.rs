//! An HTTP load generator for `POST /v1/events`: closed-loop (as fast as possible with C
//! connections) or open-loop at a fixed rate, recording each request's latency.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use testkit::HttpSender;

use crate::client_event_json;

/// A progress line on the terminal: elapsed time, events accepted and the current rate.
pub struct Progress {
    accepted: Arc<AtomicU64>,
    bar: indicatif::ProgressBar,
    ticker: tokio::task::JoinHandle<()>,
}

impl Progress {
    pub fn spawn(duration: Duration) -> Self {
        let bar = indicatif::ProgressBar::new(duration.as_secs().max(1));
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{elapsed_precise} [{bar:40}] {pos}/{len} s  {msg}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        let accepted = Arc::new(AtomicU64::new(0));
        let (a, b) = (accepted.clone(), bar.clone());
        let started = Instant::now();
        let ticker = tokio::spawn(async move {
            let mut last = (0u64, Instant::now());
            loop {
                tokio::time::sleep(Duration::from_millis(500)).await;
                let now = a.load(Ordering::Relaxed);
                let rate = (now - last.0) as f64 / last.1.elapsed().as_secs_f64();
                last = (now, Instant::now());
                b.set_position(started.elapsed().as_secs());
                b.set_message(format!("{now} events accepted, {rate:.0}/s"));
            }
        });
        Self {
            accepted,
            bar,
            ticker,
        }
    }

    pub fn finish(&self) {
        self.ticker.abort();
        self.bar.finish();
    }
}

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

/// A load for `duration` with a progress line: at `rate` requests per second when it is above
/// zero, else as fast as `connections` concurrent requests go.
pub async fn run_with_progress(
    target: &Target,
    bodies: &[Bytes],
    events_per_body: u64,
    rate: f64,
    connections: usize,
    duration: Duration,
) -> LoadResult {
    let progress = Progress::spawn(duration);
    let result = if rate > 0.0 {
        fixed_rate_with(
            target,
            bodies,
            events_per_body,
            rate,
            duration,
            Some(&progress),
        )
        .await
    } else {
        closed_loop_with(
            target,
            bodies,
            events_per_body,
            connections,
            duration,
            Some(&progress),
        )
        .await
    };
    progress.finish();
    result
}

/// As fast as possible with `connections` concurrent requests, for `duration`.
pub async fn closed_loop(
    target: &Target,
    bodies: &[Bytes],
    events_per_body: u64,
    connections: usize,
    duration: Duration,
) -> LoadResult {
    closed_loop_with(target, bodies, events_per_body, connections, duration, None).await
}

/// [`closed_loop`], reporting to a progress line.
pub async fn closed_loop_with(
    target: &Target,
    bodies: &[Bytes],
    events_per_body: u64,
    connections: usize,
    duration: Duration,
    progress: Option<&Progress>,
) -> LoadResult {
    let shared_count = progress.map(|p| p.accepted.clone());
    let started = Instant::now();
    let accepted = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(AtomicU64::new(0));
    let tasks: Vec<_> = (0..connections)
        .map(|c| {
            let t = target.clone();
            let bodies = bodies.to_vec();
            let (accepted, failures) = (accepted.clone(), failures.clone());
            let shown = shared_count.clone();
            tokio::spawn(async move {
                let mut lat = Vec::new();
                let mut i = c;
                while started.elapsed() < duration {
                    let body = bodies[i % bodies.len()].clone();
                    i += 1;
                    let t0 = Instant::now();
                    match t.send(body, events_per_body).await {
                        Some(n) => {
                            accepted.fetch_add(n, Ordering::Relaxed);
                            if let Some(s) = &shown {
                                s.fetch_add(n, Ordering::Relaxed);
                            }
                        }
                        None => {
                            failures.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    lat.push(t0.elapsed());
                }
                lat
            })
        })
        .collect();
    let mut latencies = Vec::new();
    for t in tasks {
        latencies.extend(t.await.unwrap_or_default());
    }
    LoadResult::new(latencies, &accepted, &failures, started.elapsed())
}

/// Open loop: `rate` requests per second for `duration`, whatever the answers' latency.
pub async fn fixed_rate(
    target: &Target,
    bodies: &[Bytes],
    events_per_body: u64,
    rate: f64,
    duration: Duration,
) -> LoadResult {
    fixed_rate_with(target, bodies, events_per_body, rate, duration, None).await
}

/// [`fixed_rate`], reporting to a progress line.
pub async fn fixed_rate_with(
    target: &Target,
    bodies: &[Bytes],
    events_per_body: u64,
    rate: f64,
    duration: Duration,
    progress: Option<&Progress>,
) -> LoadResult {
    let total = (rate * duration.as_secs_f64()) as u64;
    let started = Instant::now();
    let accepted = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(AtomicU64::new(0));
    let mut handles = Vec::with_capacity(total as usize);
    for i in 0..total {
        let at = started + Duration::from_secs_f64(i as f64 / rate);
        tokio::time::sleep_until(at.into()).await;
        let t = target.clone();
        let body = bodies[i as usize % bodies.len()].clone();
        let (accepted, failures) = (accepted.clone(), failures.clone());
        let shown = progress.map(|p| p.accepted.clone());
        handles.push(tokio::spawn(async move {
            let t0 = Instant::now();
            match t.send(body, events_per_body).await {
                Some(n) => {
                    accepted.fetch_add(n, Ordering::Relaxed);
                    if let Some(s) = shown {
                        s.fetch_add(n, Ordering::Relaxed);
                    }
                }
                None => {
                    failures.fetch_add(1, Ordering::Relaxed);
                }
            };
            t0.elapsed()
        }));
    }
    let mut latencies = Vec::with_capacity(handles.len());
    for h in handles {
        if let Ok(d) = h.await {
            latencies.push(d);
        }
    }
    LoadResult::new(latencies, &accepted, &failures, started.elapsed())
}

/// A load that runs until `stop`: at `rate` requests per second when it is above zero, else as
/// fast as `connections` concurrent requests go. A refused request (a full queue answers 503)
/// makes its connection wait `backoff` before the next, as an SDK would, so a load bounded by
/// the gateway's high water costs little CPU in refusals. Returns the accepted events and the
/// failures so far, readable while it runs, and the task (which ends soon after `stop`).
pub fn until_stopped(
    target: &Target,
    bodies: &[Bytes],
    events_per_body: u64,
    rate: f64,
    connections: usize,
    backoff: Duration,
    stop: tokio_util::sync::CancellationToken,
) -> (Arc<AtomicU64>, Arc<AtomicU64>, tokio::task::JoinHandle<()>) {
    let accepted = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(AtomicU64::new(0));
    let send = {
        let (accepted, failures) = (accepted.clone(), failures.clone());
        let target = target.clone();
        move |body: Bytes| {
            let (t, accepted, failures) = (target.clone(), accepted.clone(), failures.clone());
            async move {
                match t.send(body, events_per_body).await {
                    Some(n) => {
                        accepted.fetch_add(n, Ordering::Relaxed);
                    }
                    None => {
                        failures.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(backoff).await;
                    }
                }
            }
        }
    };
    let bodies = bodies.to_vec();
    let task = tokio::spawn(async move {
        if rate > 0.0 {
            let started = Instant::now();
            let mut i = 0u64;
            loop {
                let at = started + Duration::from_secs_f64(i as f64 / rate);
                tokio::select! {
                    _ = tokio::time::sleep_until(at.into()) => {}
                    _ = stop.cancelled() => return,
                }
                tokio::spawn(send(bodies[i as usize % bodies.len()].clone()));
                i += 1;
            }
        }
        let tasks: Vec<_> = (0..connections)
            .map(|c| {
                let (send, bodies, stop) = (send.clone(), bodies.clone(), stop.clone());
                tokio::spawn(async move {
                    let mut i = c;
                    while !stop.is_cancelled() {
                        send(bodies[i % bodies.len()].clone()).await;
                        i += 1;
                    }
                })
            })
            .collect();
        for t in tasks {
            let _ = t.await;
        }
    });
    (accepted, failures, task)
}

/// Raw pipelined XADD rate of a Redis: `conns` connections, `depth` commands a pipeline, one
/// 200-byte field, for `duration`. The ceiling any gateway can reach on that Redis.
pub async fn raw_xadd(
    url: &str,
    key: &str,
    conns: usize,
    depth: usize,
    duration: Duration,
) -> anyhow::Result<f64> {
    let client = redis::Client::open(url)?;
    let payload = vec![b'x'; 200];
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..conns {
        let mut conn = client.get_multiplexed_async_connection().await?;
        let payload = payload.clone();
        let key = key.to_owned();
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            while started.elapsed() < duration {
                let mut pipe = redis::pipe();
                for _ in 0..depth {
                    pipe.cmd("XADD")
                        .arg(&key)
                        .arg("*")
                        .arg("d")
                        .arg(&payload)
                        .ignore();
                }
                if pipe.query_async::<()>(&mut conn).await.is_err() {
                    break;
                }
                n += depth as u64;
            }
            n
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap_or(0);
    }
    let rate = total as f64 / started.elapsed().as_secs_f64();
    let mut conn = client.get_multiplexed_async_connection().await?;
    let _: () = redis::cmd("DEL").arg(key).query_async(&mut conn).await?;
    Ok(rate)
}
