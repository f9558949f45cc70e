use batch_writer::cli::Cli;
use batch_writer::WriterConfig;
use clap::Parser;
use shared::config::Env;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let config = WriterConfig::from_env(&Env::from_process())?;
    shared::telemetry::init(&config.log);
    match cli.command {
        None => {
            let listener = tokio::net::TcpListener::bind(config.metrics_addr).await?;
            let shutdown = shared::shutdown::on_signals();
            batch_writer::run(config, listener, shutdown).await
        }
        Some(command) => batch_writer::cli::run(config, command).await,
    }
}
