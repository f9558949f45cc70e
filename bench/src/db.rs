//! The benchmarks' own databases: a write pool on one by name (on the admin server of
//! `testkit`), and the maintenance worker's jobs run in-process on it.

use std::time::{Duration, Instant};

use maintenance_worker::clock::Clock;
use maintenance_worker::jobs::{self, Job, JobCtx};
use shared::db::Db;

/// A write pool on database `name`.
pub fn pool(name: &str) -> anyhow::Result<Db> {
    let env = shared::config::Env::from_pairs(testkit::db_env(name));
    Ok(shared::db::Pools::new(&shared::config::DbConfig::from_env(&env)?)?.write)
}

/// Migrates a benchmark's database with the jobs' defaults (12 months kept, 6 ahead).
pub async fn migrate(c: &tokio_postgres::Client) -> anyhow::Result<()> {
    shared::schema::migrate(
        c,
        shared::schema::PartitionWindow {
            now: chrono::Utc::now(),
            retention_months: 12,
            premake_months: 6,
        },
    )
    .await?;
    Ok(())
}

/// The jobs' context with the defaults: the system clock, 12 months kept, 6 ahead, a day's
/// dedupe window.
pub fn job_ctx(db: &Db) -> JobCtx {
    JobCtx {
        db: db.clone(),
        clock: Clock::System,
        retention_months: 12,
        premake_months: 6,
        dedupe_window: Duration::from_secs(86_400),
    }
}

/// Runs one job; how long it took and its report.
pub async fn run_job(db: &Db, job: Job) -> anyhow::Result<(Duration, serde_json::Value)> {
    let t = Instant::now();
    let r = jobs::run(job, &job_ctx(db))
        .await
        .map_err(|e| anyhow::anyhow!("{}: {e}", job.name()))?;
    Ok((t.elapsed(), r.detail))
}
