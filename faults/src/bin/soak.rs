//! The soak run: `cargo run --release -p sluice-faults --bin soak -- --minutes 30`.
//! Prints a sample row every `--every` seconds and, at the end, the table, the audit and whether
//! memory and the backlog stayed flat; exits 1 when they did not or an event was lost or doubled.
//! The load is the fault suite's: poison events, client retries, dead-letter replays.

use std::time::Duration;

use clap::Parser;
use faults::scenario::Servers;
use faults::soak;
use faults::stack::Stack;

#[derive(Parser)]
struct Args {
    #[arg(long, default_value_t = 30.0)]
    minutes: f64,
    /// Seconds between samples.
    #[arg(long, default_value_t = 60)]
    every: u64,
    /// Concurrent senders (each sends 20 events, then pauses `--pause-ms`).
    #[arg(long, default_value_t = 4)]
    connections: usize,
    #[arg(long, default_value_t = 10)]
    pause_ms: u64,
    /// Also write the table to this file.
    #[arg(long)]
    markdown: Option<String>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let servers = Servers::start(false).await?;
    let prefix = format!("soak-{}", uuid::Uuid::new_v4().simple());
    let mut stack = Stack::start(&servers.pg, &servers.redis.url(), "soak", &prefix).await?;
    let (samples, end) = soak::run(
        &mut stack,
        Duration::from_secs_f64(args.minutes * 60.0),
        Duration::from_secs(args.every),
        args.connections,
        Duration::from_millis(args.pause_ms),
    )
    .await?;
    let table = soak::table(&samples);
    let books = &stack.sender.books;
    let summary =
        format!(
        "{:?}; client retries {}, poison requests {}, replays {}, dead letters left {}, healthy {}",
        end.audit,
        books.retries_sent.load(std::sync::atomic::Ordering::Relaxed),
        books.poison_sent.load(std::sync::atomic::Ordering::Relaxed),
        end.replays,
        end.dead_letters_left,
        end.healthy
    );
    println!("{table}");
    println!("{summary}");
    if let Some(path) = args.markdown {
        std::fs::write(path, format!("{table}\n{summary}\n"))?;
    }
    drop(stack);
    drop(servers);
    let verdict = soak::flat(&samples, 0.2);
    println!("flat: {verdict:?}");
    if verdict.is_err()
        || !end.healthy
        || end.dead_letters_left != 0
        || end.audit.lost != 0
        || end.audit.doubled != 0
    {
        std::process::exit(1);
    }
    Ok(())
}
