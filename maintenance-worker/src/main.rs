use clap::{Parser, Subcommand};
use maintenance_worker::clock::Clock;
use maintenance_worker::{migrate, MaintenanceConfig, RunOnce};
use shared::config::Env;
use shared::db::Pools;

/// Sluice maintenance worker: partitions, retention, views, ANALYZE and VACUUM on schedules.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Apply migrations/ (idempotent, safe to run concurrently).
    Migrate,
    /// Run the maintenance jobs once: partitions, views and analyze by default.
    RunOnce {
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
    },
    /// Print table, partition and index sizes, row estimates, dead tuples, quarantine and the
    /// buffer cache hit ratio.
    Stats,
    /// Erasure requests.
    Erasures {
        #[command(subcommand)]
        command: ErasuresCommand,
    },
}

#[derive(Subcommand)]
enum ErasuresCommand {
    /// Advance the open requests, oldest first, until they are done or the oldest must wait
    /// (for the queue, or a views fold running elsewhere); prints where each was left.
    RunOnce,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let mut config = MaintenanceConfig::from_env(&Env::from_process())?;
    shared::telemetry::init(&config.log);
    let command = match cli.command {
        None => {
            let listener = tokio::net::TcpListener::bind(config.metrics_addr).await?;
            let shutdown = shared::shutdown::on_signals();
            return maintenance_worker::run(config, listener, shutdown, Clock::System).await;
        }
        Some(Command::Migrate) => {
            let report = migrate::run(&config).await?;
            println!(
                "migrations applied: {:?}; partitions created: {}; schema version {}",
                report.applied,
                report.partitions_created,
                shared::schema::expected_version()
            );
            return Ok(());
        }
        Some(c) => c,
    };
    config.db.primary.pool_min = 0;
    // An erasure holds its lock while the views fold it runs holds two more.
    config.db.primary.pool_max = match command {
        Command::Erasures { .. } => 3,
        _ => 2,
    };
    let db = Pools::new(&config.db)?.write;
    shared::daemon::check_schema(&db).await?;
    match command {
        Command::RunOnce {
            no_create_partitions,
            no_refresh_views,
            no_analyze,
            drop_old_partitions,
            vacuum,
        } => {
            let what = RunOnce {
                create_partitions: !no_create_partitions,
                refresh_views: !no_refresh_views,
                analyze: !no_analyze,
                drop_old_partitions,
                vacuum,
            };
            let ctx = maintenance_worker::job_ctx(&config, db, Clock::System);
            for report in maintenance_worker::run_once(&ctx, what).await? {
                println!("{}", serde_json::to_string(&report)?);
            }
        }
        Command::Stats => print!("{}", maintenance_worker::stats::report(&db).await?),
        Command::Erasures {
            command: ErasuresCommand::RunOnce,
        } => {
            let ctx = maintenance_worker::job_ctx(&config, db, Clock::System);
            let stop = shared::shutdown::on_signals();
            let ctx = maintenance_worker::erasure::ErasureCtx::new(ctx, stop);
            for p in maintenance_worker::erasure::run_open(&ctx).await? {
                println!("{}", serde_json::to_string(&p)?);
            }
        }
        Command::Migrate => unreachable!("handled above"),
    }
    Ok(())
}
