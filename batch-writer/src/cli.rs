//! The command line: the daemon by default, or `dead-letter list|replay` on a one-connection
//! pool.

use clap::{Parser, Subcommand};
use shared::daemon;
use shared::db::Db;
use shared::metrics::PoolName;
use shared::queue::Keys;

use crate::{dead_letter, WriterConfig};

/// Sluice batch writer: Redis Streams to PostgreSQL with binary COPY, exactly once.
#[derive(Parser)]
#[command(version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Subcommand)]
pub enum Command {
    /// Inspect and replay dead letters.
    DeadLetter {
        #[command(subcommand)]
        command: DeadLetterCommand,
    },
}

#[derive(Subcommand)]
pub enum DeadLetterCommand {
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

/// Runs one command to its end, printing its output on stdout.
pub async fn run(mut config: WriterConfig, command: Command) -> anyhow::Result<()> {
    let Command::DeadLetter { command } = command;
    config.db.primary.pool_min = 0;
    config.db.primary.pool_max = 1;
    let db = daemon::pool(&config.db, PoolName::Write)?;
    daemon::check_schema(&db).await?;
    match command {
        DeadLetterCommand::List => list(&db).await,
        DeadLetterCommand::Replay { all, ids } => {
            replay(&config, &db, (!all).then_some(ids.as_slice())).await
        }
    }
}

async fn list(db: &Db) -> anyhow::Result<()> {
    for dl in dead_letter::list(db).await? {
        println!("{}", serde_json::to_string(&dl)?);
    }
    Ok(())
}

/// Replays the dead letters `ids` (every one when `None`).
async fn replay(config: &WriterConfig, db: &Db, ids: Option<&[i64]>) -> anyhow::Result<()> {
    let mut redis =
        shared::redis_conn::connect(&config.redis.url, std::time::Duration::from_secs(5)).await?;
    let keys = Keys::new(&config.stream_prefix, config.stream_shards);
    let n = dead_letter::replay(db, &mut redis, &keys, ids).await?;
    eprintln!("Replayed {n} events.");
    Ok(())
}
