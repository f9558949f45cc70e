//! The maintenance worker: applies migrations, and, as a daemon, keeps partitions, retention,
//! the summary view and planner statistics in order on its own cron schedules and carries out
//! erasure requests, with one replica acting at a time.
//!
//! - [`cli`]: the command line and the one-shot commands.
//! - [`config`]: environment to [`MaintenanceConfig`], schedules parsed at start.
//! - [`migrate`]: the `migrate` command.
//! - [`adopt`]: the `adopt` command, the upgrade from the original design's table.
//! - [`jobs`]: the jobs, one file each, run under a per-job lock.
//! - [`scheduler`]: cron-driven job loops.
//! - [`erasure`]: erasure requests carried out, a phase at a time.
//! - [`leader`]: leadership by advisory lock.
//! - [`clock`]: the injectable "now" of the jobs.
//! - [`stats`]: the `stats` report.
//! - [`metrics`]: this daemon's metrics.

pub mod adopt;
pub mod cli;
pub mod clock;
pub mod config;
pub mod erasure;
pub mod jobs;
pub mod leader;
pub mod metrics;
pub mod migrate;
pub mod scheduler;
pub mod stats;

use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use shared::daemon::{self, Ops};
use shared::db::Db;
use shared::metrics::Daemon;
use shared::ops::{Readiness, ReadyCheck};
use shared::tasks::Tasks;

pub use config::MaintenanceConfig;

use clock::Clock;
use jobs::{Job, JobCtx, Report};

/// The jobs' context on `db`.
pub fn job_ctx(config: &MaintenanceConfig, db: Db, clock: Clock) -> JobCtx {
    JobCtx {
        db,
        clock,
        retention_months: config.retention_months,
        premake_months: config.premake_months,
        dedupe_window: config.dedupe_window,
    }
}

/// Which jobs `run-once` runs: partitions, views and analyze unless turned off; retention and
/// vacuum only when asked.
#[derive(Debug, Clone, Copy)]
pub struct RunOnce {
    pub create_partitions: bool,
    pub refresh_views: bool,
    pub analyze: bool,
    pub drop_old_partitions: bool,
    pub vacuum: bool,
}

impl RunOnce {
    pub fn jobs(&self) -> Vec<Job> {
        let mut jobs = Vec::new();
        if self.create_partitions {
            jobs.push(Job::Partitions);
        }
        if self.drop_old_partitions {
            jobs.push(Job::Retention);
            jobs.push(Job::Dedupe);
        }
        if self.refresh_views {
            jobs.push(Job::Views);
        }
        if self.analyze {
            jobs.push(Job::Analyze);
        }
        if self.vacuum {
            jobs.push(Job::Vacuum);
        }
        jobs
    }
}

/// Runs the chosen jobs once, in order; the first failure stops the run.
pub async fn run_once(ctx: &JobCtx, what: RunOnce) -> Result<Vec<Report>, jobs::JobError> {
    let mut reports = Vec::new();
    for job in what.jobs() {
        reports.push(jobs::run(job, ctx).await?);
    }
    Ok(reports)
}

/// Runs the daemon until `shutdown` is cancelled.
pub async fn run(
    config: MaintenanceConfig,
    ops_listener: TcpListener,
    shutdown: CancellationToken,
    clock: Clock,
) -> anyhow::Result<()> {
    let startup = daemon::Startup::default();
    let watched = Tasks::new(shutdown.clone());
    let ops = Ops::start(
        Daemon::Maintenance,
        ops_listener,
        startup.ready_check(),
        shutdown.clone(),
        &watched,
    );
    metrics::register();
    let db = daemon::session_pool(&config.db)?;
    if !daemon::connect(&db, &startup, &shutdown).await? {
        ops.stop().await;
        return Ok(());
    }
    let leader = leader::Leadership::default();
    startup.started(readiness(leader.clone(), db.clone(), clock.clone()));
    daemon::spawn_upkeep(&db, &watched);
    let tasks = spawn_work(&config, job_ctx(&config, db, clock), leader, &watched);
    tracing::info!("Maintenance worker running.");
    shutdown.cancelled().await;
    for t in tasks {
        let _ = t.await;
    }
    tracing::info!("Maintenance worker stopped.");
    ops.stop().await;
    Ok(())
}

/// Ready when the pool reaches the server and partitions are made two months ahead; the detail
/// shows quarantine and leadership too.
fn readiness(leader: leader::Leadership, db: Db, clock: Clock) -> ReadyCheck {
    Arc::new(move || {
        let (leader, db, clock) = (leader.clone(), db.clone(), clock.clone());
        Box::pin(async move {
            let health = db.health().await;
            let ahead = jobs::partitions::months_ahead(&db, clock.now()).await.ok();
            let quarantine = jobs::partitions::quarantine_rows(&db).await.ok();
            Readiness {
                ready: health.reachable && ahead.is_some_and(|a| a >= 2),
                detail: serde_json::json!({
                    "pools": [health],
                    "partitions_ahead_months": ahead,
                    "quarantine_rows": quarantine,
                    "leader": leader.is_leader(),
                    "leader_attempts": leader.attempts(),
                }),
            }
        }) as futures::future::BoxFuture<'static, Readiness>
    })
}

/// Starts the job schedules, the erasure loop and the leadership loop; returns the tasks to wait
/// for at shutdown.
fn spawn_work(
    config: &MaintenanceConfig,
    ctx: JobCtx,
    leader: leader::Leadership,
    watched: &Tasks,
) -> Vec<tokio::task::JoinHandle<()>> {
    let erasures = erasure::ErasureCtx::new(ctx.clone(), watched.stop_token());
    let mut tasks = scheduler::spawn(config.schedules.clone(), ctx, leader.clone(), watched);
    tasks.push(erasure::spawn(erasures, leader.clone(), watched));
    leader.spawn(config.db.clone(), config.leader_retry, watched);
    tasks
}
