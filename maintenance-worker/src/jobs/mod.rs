//! The maintenance jobs: one file each, all run through [`run`], which takes the job's own
//! advisory lock (so a job never runs twice at once, even from `run-once` beside the daemon),
//! times it and records its outcome.

pub mod analyze;
pub mod dedupe;
pub mod partitions;
pub mod retention;
pub mod vacuum;
pub mod views;

use std::time::{Duration, Instant};

use serde::Serialize;
use shared::db::{Db, DbError};

use crate::clock::Clock;
use crate::metrics;

/// The jobs, in the order `run-once` runs them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Job {
    Partitions,
    Retention,
    Views,
    Analyze,
    Vacuum,
    Dedupe,
}

impl Job {
    pub const ALL: [Job; 6] = [
        Job::Partitions,
        Job::Retention,
        Job::Dedupe,
        Job::Views,
        Job::Analyze,
        Job::Vacuum,
    ];

    /// The `job` label value.
    pub fn name(self) -> &'static str {
        match self {
            Job::Partitions => "partitions",
            Job::Retention => "retention",
            Job::Views => "views",
            Job::Analyze => "analyze",
            Job::Vacuum => "vacuum",
            Job::Dedupe => "dedupe",
        }
    }

    /// The advisory lock a run of this job holds.
    pub fn lock_key(self) -> i64 {
        0x736c_7569_6365_1000 + self as i64
    }
}

/// What the jobs need.
#[derive(Clone, Debug)]
pub struct JobCtx {
    pub db: Db,
    pub clock: Clock,
    pub retention_months: u32,
    pub premake_months: u32,
    pub dedupe_window: Duration,
}

/// What a job did, for the log and the `run-once` output.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub job: Job,
    pub detail: serde_json::Value,
    pub duration_ms: u64,
}

/// Why a job did not complete.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("{0} is already running elsewhere")]
    Busy(&'static str),
}

/// Jobs running at once in this process, at most: each holds two connections (its lock and its
/// work), and the worker's pool is sized for two jobs (`shared::budget`); three schedules meet at
/// 02:00 daily, so the third waits for a slot rather than for a connection.
const CONCURRENT_JOBS: usize = 2;

static SLOTS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(CONCURRENT_JOBS);

/// One of the [`CONCURRENT_JOBS`] slots, for work beside the jobs that must stay within the
/// pool's budget too (an erasure tick holds one while it works, on one connection).
pub async fn slot() -> Option<tokio::sync::SemaphorePermit<'static>> {
    SLOTS.acquire().await.ok()
}

/// Runs `job` under its advisory lock, records its metrics, and logs its outcome.
pub async fn run(job: Job, ctx: &JobCtx) -> Result<Report, JobError> {
    let _slot = SLOTS.acquire().await;
    let started = Instant::now();
    let client = ctx.db.get("job lock").await?;
    let locked: bool = client
        .query_one("SELECT pg_try_advisory_lock($1)", &[&job.lock_key()])
        .await
        .map_err(DbError::query("take job lock"))?
        .get(0);
    if !locked {
        return Err(JobError::Busy(job.name()));
    }
    let out = run_unlocked(job, ctx).await;
    let _ = client
        .query_one("SELECT pg_advisory_unlock($1)", &[&job.lock_key()])
        .await;
    report(job, out, started.elapsed())
}

/// The job itself; the caller holds its lock.
async fn run_unlocked(job: Job, ctx: &JobCtx) -> Result<serde_json::Value, DbError> {
    match job {
        Job::Partitions => partitions::run(ctx).await,
        Job::Retention => retention::run(ctx).await,
        Job::Views => views::run(ctx).await,
        Job::Analyze => analyze::run(ctx).await,
        Job::Vacuum => vacuum::run(ctx).await,
        Job::Dedupe => dedupe::run(ctx).await,
    }
}

/// Records a run's metrics and logs its outcome.
fn report(
    job: Job,
    out: Result<serde_json::Value, DbError>,
    elapsed: Duration,
) -> Result<Report, JobError> {
    metrics::job_finished(job.name(), out.is_ok(), elapsed);
    match out {
        Ok(detail) => {
            metrics::job_rows(job.name(), detail["rows"].as_u64().unwrap_or(0));
            tracing::info!(job = job.name(), duration_ms = elapsed.as_millis() as u64, %detail, "Job done.");
            Ok(Report {
                job,
                detail,
                duration_ms: elapsed.as_millis() as u64,
            })
        }
        Err(e) => {
            tracing::error!(job = job.name(), error = %e, "Job failed.");
            Err(e.into())
        }
    }
}

/// Runs one DDL statement outside a transaction with a short `lock_timeout`, retrying while the
/// lock is busy, so maintenance never queues behind a long query and stalls the writers.
pub async fn ddl(db: &Db, op: &'static str, sql: &str) -> Result<(), DbError> {
    let client = db.get(op).await?;
    shared::schema::partitions::with_lock_retry(&client, op, sql).await
}
