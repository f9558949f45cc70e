//! The daemons and the load of a run, and its windows: baselines, and erasures requested over
//! HTTP and polled until done.

use std::time::{Duration, Instant};

use anyhow::Context;
use bench::load::{self, Target};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use ingest_gateway::apps::{self, KeyKind};
use testkit::{http_get, HttpSender, Stack, StackBuilder};
use tokio_postgres::Client;

use crate::figures::{folds, metric, phases_text, window, Erasure, Snapshot, Window};
use crate::history::{pool, user_events, Loaded};
use crate::{Args, REDIS};

/// The daemons and the load, running.
pub struct Run {
    daemons: Stack,
    /// The daemons' stream prefix.
    prefix: String,
    /// The privacy routes, with the admin key.
    erasures: HttpSender,
    stop: tokio_util::sync::CancellationToken,
    accepted: std::sync::Arc<std::sync::atomic::AtomicU64>,
    refused: std::sync::Arc<std::sync::atomic::AtomicU64>,
    load: tokio::task::JoinHandle<()>,
}

/// What the daemons used, read before they stop.
pub struct RunParts {
    pub cpu: Vec<(String, f64)>,
}

/// The gateway, the writers and the maintenance worker, started, ready and leading. The
/// maintenance worker logs JSON at info: its log tells what each scheduled views fold did.
async fn start_daemons(args: &Args) -> anyhow::Result<Stack> {
    let writers = args.writers;
    eprintln!("Starting the gateway, {writers} writers and the maintenance worker...");
    let stack = StackBuilder::new(testkit::db_env(&args.db), REDIS, &args.db)
        .pools(8, 2, 4, 1)
        .var("QUEUE_HIGH_WATER", args.queue_high_water.to_string())
        .writers(writers, "privacy-")
        .maintenance(1)
        .maintenance_var("LOG_LEVEL", "info")
        .maintenance_var("LOG_FORMAT", "json")
        .start()
        .await?;
    for d in stack.gateway.iter().chain(stack.writers.iter().flatten()) {
        anyhow::ensure!(
            d.wait_ready(Duration::from_secs(60)).await,
            "a daemon is not ready"
        );
    }
    let maintenance = stack.running_maintenance();
    let leads = testkit::wait_for(Duration::from_secs(60), || async {
        let m = http_get(&maintenance.ops_addr, "/metrics").await?.1;
        (metric(&m, "sluice_maintenance_leader", "") == 1.0).then_some(())
    })
    .await;
    anyhow::ensure!(
        leads.is_some(),
        "the maintenance worker did not become leader"
    );
    Ok(stack)
}

/// Waits until no erasure is open (one an interrupted run left is carried out first).
async fn wait_no_open_erasure(c: &Client, timeout: Duration) -> anyhow::Result<()> {
    let open = || async {
        c.query_one(
            "SELECT count(*) FROM erasures WHERE status IN ('pending', 'running')",
            &[],
        )
        .await
        .map(|r| r.get::<_, i64>(0))
        .ok()
    };
    if open().await == Some(0) {
        return Ok(());
    }
    eprintln!("Waiting for the erasures an earlier run left open...");
    let closed = testkit::wait_for(timeout, || async {
        (open().await == Some(0)).then_some(())
    })
    .await;
    anyhow::ensure!(closed.is_some(), "earlier erasures are still open");
    Ok(())
}

impl Run {
    pub async fn start(c: &Client, l: &Loaded, args: &Args) -> anyhow::Result<Self> {
        let db = pool(&args.db)?;
        let ingest = apps::create_key(&db, &l.app_id, KeyKind::Ingest).await?;
        let admin = apps::create_key(&db, &l.app_id, KeyKind::Admin).await?;
        // A queue an interrupted run left behind would be drained into this database.
        testkit::redis_cleanup(REDIS, &args.db).await;
        let daemons = start_daemons(args).await?;
        let addr = &daemons.gateway_addr;
        wait_no_open_erasure(c, Duration::from_secs(args.max_erasure_seconds)).await?;
        let target = Target::new(addr, &ingest.key, args.connections);
        let bodies = load::bodies(args.batch, 32);
        let stop = tokio_util::sync::CancellationToken::new();
        let (accepted, refused, load) = load::until_stopped(
            &target,
            &bodies,
            args.batch as u64,
            args.rate,
            args.connections,
            Duration::from_millis(100),
            stop.clone(),
        );
        let erasures = HttpSender::new(
            format!("http://{addr}/v1/privacy/erasures"),
            format!("Bearer {}", admin.key),
            1,
        );
        eprintln!("Load on; {} s of warm-up...", args.warmup);
        tokio::time::sleep(Duration::from_secs(args.warmup)).await;
        Ok(Self {
            daemons,
            prefix: args.db.clone(),
            erasures,
            stop,
            accepted,
            refused,
            load,
        })
    }

    async fn snapshot(&self) -> Snapshot {
        let mut written = 0.0;
        for w in self.daemons.writers.iter().flatten() {
            let m = http_get(&w.ops_addr, "/metrics")
                .await
                .map(|r| r.1)
                .unwrap_or_default();
            written += metric(&m, "sluice_events_written_total", "");
        }
        let m = http_get(&self.daemons.running_maintenance().ops_addr, "/metrics")
            .await
            .map(|r| r.1)
            .unwrap_or_default();
        let views = "job=\"views\"";
        Snapshot {
            at: Instant::now(),
            written,
            accepted: self.accepted.load(std::sync::atomic::Ordering::Relaxed) as f64,
            refused: self.refused.load(std::sync::atomic::Ordering::Relaxed),
            folds: metric(&m, "sluice_maintenance_duration_seconds_count", views),
            fold_seconds: metric(&m, "sluice_maintenance_duration_seconds_sum", views),
        }
    }

    async fn baseline(&self, seconds: u64) -> Window {
        let a = self.snapshot().await;
        tokio::time::sleep(Duration::from_secs(seconds)).await;
        window(&a, &self.snapshot().await)
    }

    /// Baselines and erasures, alternating, and a last baseline.
    pub async fn rounds(
        &self,
        c: &Client,
        l: &Loaded,
        args: &Args,
        offset: i64,
    ) -> anyhow::Result<(Vec<Window>, Vec<Erasure>)> {
        let (mut baselines, mut erasures) = (Vec::new(), Vec::new());
        for r in 0..args.rounds {
            eprintln!("Round {}: baseline {} s...", r + 1, args.seconds);
            baselines.push(self.baseline(args.seconds).await);
            let user = format!("hist_user_{}", (offset + r as i64) % args.users);
            eprintln!("Round {}: erasing {user}...", r + 1);
            let e = self.erase(c, l, &user, args).await?;
            eprintln!(
                "  done in {:.1} s ({}), removed {}",
                e.seconds,
                phases_text(&e.phases),
                e.removed
            );
            erasures.push(e);
        }
        eprintln!("Closing baseline {} s...", args.seconds);
        baselines.push(self.baseline(args.seconds).await);
        Ok((baselines, erasures))
    }

    /// One erasure window: the request, its progress polled every 100 ms until done, the load
    /// going on for at least `--seconds`.
    async fn erase(
        &self,
        c: &Client,
        l: &Loaded,
        user: &str,
        args: &Args,
    ) -> anyhow::Result<Erasure> {
        let (events_before, days_before) = user_events(c, &l.app_id, user).await?;
        let a = self.snapshot().await;
        let body = serde_json::json!({ "user_ids": [user] }).to_string();
        let (status, answer) = self.call(http::Method::POST, "", Some(body)).await?;
        anyhow::ensure!(status == 202, "POST erasure: {status} {answer}");
        let accepted_at = Instant::now();
        let accepted_wall = Utc::now();
        let id = answer["erasure_id"].as_str().unwrap_or_default().to_owned();
        let (done, phases, pending) = self
            .poll_until_done(c, &id, accepted_at, args.max_erasure_seconds)
            .await
            .map_err(|e| e.context(format!("erasure of {user}")))?;
        let seconds = phases.last().map_or(0.0, |p| p.1);
        let window_end = a.at + Duration::from_secs(args.seconds);
        tokio::time::sleep_until(window_end.into()).await;
        let time = |k: &str| {
            done[k]
                .as_str()
                .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
        };
        let server_seconds = match (time("requested_at"), time("finished_at")) {
            (Some(a), Some(b)) => (b - a).num_milliseconds() as f64 / 1000.0,
            _ => f64::NAN,
        };
        Ok(Erasure {
            user: user.to_owned(),
            events_before,
            days_before,
            seconds,
            server_seconds,
            phases,
            pending_at_summary: pending,
            removed: done["removed"].clone(),
            folds: folds(
                &self.daemons.running_maintenance().logs(),
                accepted_wall,
                seconds,
            ),
            extended: Instant::now() > window_end + Duration::from_millis(500),
            window: window(&a, &self.snapshot().await),
        })
    }

    /// Polls the request every 100 ms (its phase in the database, its status over HTTP) until
    /// it is done; returns the last answer, each status or phase with the seconds after
    /// `accepted_at` it was first seen (`done` last), and the events waiting in
    /// `summary_pending` when the summary phase was first seen (what its fold takes besides the
    /// erased events).
    async fn poll_until_done(
        &self,
        c: &Client,
        id: &str,
        accepted_at: Instant,
        max_seconds: u64,
    ) -> anyhow::Result<(serde_json::Value, Vec<(String, f64)>, Option<i64>)> {
        let mut phases: Vec<(String, f64)> = Vec::new();
        let mut pending = None;
        let mut seen = |label: &str| {
            if phases.last().is_none_or(|p| p.0 != label) {
                phases.push((label.to_owned(), accepted_at.elapsed().as_secs_f64()));
            }
        };
        loop {
            let label: String = c
                .query_one(
                    "SELECT coalesce(CASE WHEN status = 'running' THEN phase END, status) \
                     FROM erasures WHERE erasure_id = $1::text::uuid",
                    &[&id],
                )
                .await?
                .get(0);
            if label == "summary" && pending.is_none() {
                pending = c
                    .query_one(
                        "SELECT coalesce(sum(events), 0)::bigint FROM summary_pending",
                        &[],
                    )
                    .await?
                    .get(0);
            }
            seen(&label);
            let (status, got) = self
                .call(http::Method::GET, &format!("/{id}"), None)
                .await?;
            anyhow::ensure!(status == 200, "GET: {status} {got}");
            match got["status"].as_str() {
                Some("done") => {
                    seen("done");
                    return Ok((got, phases, pending));
                }
                Some("failed") => anyhow::bail!("failed: {got}"),
                _ => {}
            }
            anyhow::ensure!(
                accepted_at.elapsed().as_secs() < max_seconds,
                "not done after {max_seconds} s: {got}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// A privacy route with the admin key: the status and the JSON answer.
    async fn call(
        &self,
        method: http::Method,
        path: &str,
        body: Option<String>,
    ) -> anyhow::Result<(u16, serde_json::Value)> {
        let body = Bytes::from(body.unwrap_or_default());
        let (status, bytes) = self
            .erasures
            .request(method, path, body)
            .await
            .context("no answer from the gateway")?;
        Ok((status, serde_json::from_slice(&bytes).unwrap_or_default()))
    }

    /// Stops the load and the daemons; returns each daemon's CPU seconds.
    pub async fn stop(self) -> RunParts {
        self.stop.cancel();
        let _ = self.load.await;
        let named = self.daemons.named();
        let cpu = named
            .into_iter()
            .map(|(n, d)| (n, testkit::cpu_seconds(d.child.id()).unwrap_or(0.0)))
            .collect();
        // Dropping a daemon kills it.
        drop(self.daemons);
        testkit::redis_cleanup(REDIS, &self.prefix).await;
        RunParts { cpu }
    }
}
