use batch_writer::WriterConfig;
use clap::Parser;
use shared::config::Env;

/// Sluice batch writer: Redis Streams to PostgreSQL with binary COPY, exactly once.
#[derive(Parser)]
#[command(version, about)]
struct Cli {}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _cli = Cli::parse();
    let config = WriterConfig::from_env(&Env::from_process())?;
    shared::telemetry::init(&config.log);
    let listener = tokio::net::TcpListener::bind(config.metrics_addr).await?;
    let shutdown = shared::shutdown::on_signals();
    batch_writer::run(config, listener, shutdown).await
}
