use clap::Parser;
use ingest_gateway::commands::{self, Command};
use ingest_gateway::GatewayConfig;
use shared::config::Env;
use tokio::net::TcpListener;

/// Sluice ingest gateway: POST /v1/events to Redis Streams, and the analytics read API.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let config = GatewayConfig::from_env(&Env::from_process())?;
    shared::telemetry::init(&config.log);
    if let Some(command) = cli.command {
        return commands::run(&config, command).await;
    }
    let listener = TcpListener::bind(config.addr).await?;
    let ops = TcpListener::bind(config.metrics_addr).await?;
    let shutdown = shared::shutdown::on_signals();
    ingest_gateway::run(config, listener, ops, shutdown).await
}
