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
    config.db.primary.pool_max = 2;
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
        Command::Migrate => unreachable!("handled above"),
    }
    Ok(())
}
