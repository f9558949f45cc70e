use clap::Parser;
use maintenance_worker::cli::Cli;
use maintenance_worker::clock::Clock;
use maintenance_worker::MaintenanceConfig;
use shared::config::Env;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let config = MaintenanceConfig::from_env(&Env::from_process())?;
    shared::telemetry::init(&config.log);
    match cli.command {
        None => {
            let listener = tokio::net::TcpListener::bind(config.metrics_addr).await?;
            let shutdown = shared::shutdown::on_signals();
            maintenance_worker::run(config, listener, shutdown, Clock::System).await
        }
        Some(command) => maintenance_worker::cli::run(config, command).await,
    }
}
