//! The loops that drive a [`Target`]: closed (as fast as `connections` concurrent requests go),
//! open at a fixed rate, and until stopped; each records every request's latency.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::{LoadResult, Progress, Target};

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
