use batch_writer::{dead_letter, WriterConfig};
use clap::{Parser, Subcommand};
use shared::config::Env;
use shared::db::Pools;
use shared::queue::Keys;

/// Sluice batch writer: Redis Streams to PostgreSQL with binary COPY, exactly once.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Inspect and replay dead letters.
    DeadLetter {
        #[command(subcommand)]
        command: DeadLetterCommand,
    },
}

#[derive(Subcommand)]
enum DeadLetterCommand {
    /// Print every dead letter as one JSON object per line.
    List,
    /// Put dead letters back on the queue and remove them from the table.
    Replay {
        /// Replay every dead letter.
        #[arg(long, conflicts_with = "ids")]
        all: bool,
        /// Ids from `dead-letter list`.
        #[arg(required_unless_present = "all")]
        ids: Vec<i64>,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let mut config = WriterConfig::from_env(&Env::from_process())?;
    shared::telemetry::init(&config.log);
    let Some(Command::DeadLetter { command }) = cli.command else {
        let listener = tokio::net::TcpListener::bind(config.metrics_addr).await?;
        let shutdown = shared::shutdown::on_signals();
        return batch_writer::run(config, listener, shutdown).await;
    };
    config.db.primary.pool_min = 0;
    config.db.primary.pool_max = 1;
    let db = Pools::new(&config.db)?.write;
    shared::daemon::check_schema(&db).await?;
    match command {
        DeadLetterCommand::List => {
            for dl in dead_letter::list(&db).await? {
                println!("{}", serde_json::to_string(&dl)?);
            }
        }
        DeadLetterCommand::Replay { all, ids } => {
            let mut redis =
                shared::redis_conn::connect(&config.redis.url, std::time::Duration::from_secs(5))
                    .await?;
            let keys = Keys::new(&config.stream_prefix, config.stream_shards);
            let ids = (!all).then_some(ids.as_slice());
            let n = dead_letter::replay(&db, &mut redis, &keys, ids).await?;
            eprintln!("Replayed {n} events.");
        }
    }
    Ok(())
}
