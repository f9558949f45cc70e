use clap::{Parser, Subcommand};
use maintenance_worker::{migrate, MaintenanceConfig};
use shared::config::Env;

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
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let config = MaintenanceConfig::from_env(&Env::from_process())?;
    shared::telemetry::init(&config.log);
    match cli.command {
        Some(Command::Migrate) => {
            let report = migrate::run(&config).await?;
            println!(
                "migrations applied: {:?}; partitions created: {}; schema version {}",
                report.applied,
                report.partitions_created,
                shared::schema::expected_version()
            );
            Ok(())
        }
        None => {
            let listener = tokio::net::TcpListener::bind(config.metrics_addr).await?;
            let shutdown = shared::shutdown::on_signals();
            maintenance_worker::run(config, listener, shutdown).await
        }
    }
}
