//! The command line: the daemon by default, or one of the one-shot commands (`migrate`,
//! `adopt`, `run-once`, `stats`, `erasures run-once`), each on a small pool of its own.

use clap::{Args, Parser, Subcommand};
use shared::daemon;
use shared::db::Db;

use crate::clock::Clock;
use crate::{adopt, erasure, migrate, stats, MaintenanceConfig, RunOnce};

/// Sluice maintenance worker: partitions, retention, views, ANALYZE and VACUUM on schedules.
#[derive(Parser)]
#[command(version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Subcommand)]
pub enum Command {
    /// Apply migrations/ (idempotent, safe to run concurrently).
    Migrate,
    /// Upgrade an installation of the original design in place: move its plain
    /// analytics_events aside, migrate, copy its rows month by month (resumable), verify them.
    Adopt(AdoptArgs),
    /// Run the maintenance jobs once: partitions, views and analyze by default.
    RunOnce(RunOnceArgs),
    /// Print table, partition and index sizes, row estimates, dead tuples, quarantine and the
    /// buffer cache hit ratio.
    Stats,
    /// Erasure requests.
    Erasures {
        #[command(subcommand)]
        command: ErasuresCommand,
    },
}

#[derive(Args)]
pub struct RunOnceArgs {
    #[arg(long)]
    no_create_partitions: bool,
    #[arg(long)]
    no_refresh_views: bool,
    #[arg(long)]
    no_analyze: bool,
    /// Also detach and drop partitions past RETENTION_MONTHS (and prune dedupe bookkeeping).
    #[arg(long)]
    drop_old_partitions: bool,
    /// Also VACUUM (ANALYZE) the tables with many dead tuples.
    #[arg(long)]
    vacuum: bool,
}

impl From<RunOnceArgs> for RunOnce {
    fn from(a: RunOnceArgs) -> Self {
        RunOnce {
            create_partitions: !a.no_create_partitions,
            refresh_views: !a.no_refresh_views,
            analyze: !a.no_analyze,
            drop_old_partitions: a.drop_old_partitions,
            vacuum: a.vacuum,
        }
    }
}

#[derive(Args)]
pub struct AdoptArgs {
    /// Old rows copied per statement.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(i64).range(100..=1_000_000))]
    batch_rows: i64,
}

#[derive(Subcommand)]
pub enum ErasuresCommand {
    /// Advance the open requests, oldest first, until they are done or the oldest must wait
    /// (for the queue, or a views fold running elsewhere); prints where each was left.
    RunOnce,
}

/// Runs one command to its end, printing its report on stdout.
pub async fn run(config: MaintenanceConfig, command: Command) -> anyhow::Result<()> {
    match command {
        Command::Migrate => migrate_command(&config).await,
        Command::Adopt(args) => adopt_command(&config, args).await,
        Command::RunOnce(args) => run_once_command(&config, args.into()).await,
        Command::Stats => {
            print!("{}", stats::report(&pool(&config, 2).await?).await?);
            Ok(())
        }
        Command::Erasures {
            command: ErasuresCommand::RunOnce,
        } => erasures_run_once(&config).await,
    }
}

async fn migrate_command(config: &MaintenanceConfig) -> anyhow::Result<()> {
    let report = migrate::run(config).await?;
    println!(
        "migrations applied: {:?}; partitions created: {}; schema version {}",
        report.applied,
        report.partitions_created,
        shared::schema::expected_version()
    );
    Ok(())
}

async fn adopt_command(config: &MaintenanceConfig, args: AdoptArgs) -> anyhow::Result<()> {
    let options = adopt::Options {
        batch_rows: args.batch_rows,
    };
    let report = adopt::run(config, options).await?;
    println!("{}", serde_json::to_string(&report)?);
    anyhow::ensure!(
        report.complete,
        "a month's copy does not match its original rows (see the report); run adopt again"
    );
    Ok(())
}

async fn run_once_command(config: &MaintenanceConfig, what: RunOnce) -> anyhow::Result<()> {
    let ctx = crate::job_ctx(config, pool(config, 2).await?, Clock::System);
    for report in crate::run_once(&ctx, what).await? {
        println!("{}", serde_json::to_string(&report)?);
    }
    Ok(())
}

/// A write pool of at most `max` connections, none kept open, on a schema this build expects.
async fn pool(config: &MaintenanceConfig, max: usize) -> anyhow::Result<Db> {
    let mut db_config = config.db.clone();
    db_config.primary.pool_min = 0;
    db_config.primary.pool_max = max;
    let db = daemon::session_pool(&db_config)?;
    daemon::check_schema(&db).await?;
    Ok(db)
}

async fn erasures_run_once(config: &MaintenanceConfig) -> anyhow::Result<()> {
    // An erasure holds its lock while the views fold it runs holds two more.
    let db = pool(config, 3).await?;
    let ctx = crate::job_ctx(config, db, Clock::System);
    let ctx = erasure::ErasureCtx::new(ctx, shared::shutdown::on_signals());
    for p in erasure::run_open(&ctx).await? {
        println!("{}", serde_json::to_string(&p)?);
    }
    Ok(())
}
