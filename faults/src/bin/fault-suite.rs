//! Runs every fault (or those named) against the real daemons under load and prints the table:
//! fault, events acknowledged, stored, lost, doubled, requests refused, recovery time, healthy.
//! Exits 1 when any event was lost or doubled, or the pipeline did not recover by itself.
//!
//! Short form (CI): `cargo run -p sluice-faults --bin fault-suite`
//! Long form: `cargo run --release -p sluice-faults --bin fault-suite -- --seconds 60 --rounds 3`

use clap::Parser;
use faults::scenario::{self, Fault, Servers, Timing};

#[derive(Parser)]
struct Args {
    /// Seconds of load before and after each fault (the long form); the short form otherwise.
    #[arg(long)]
    seconds: Option<u64>,
    /// Times to run the whole list.
    #[arg(long, default_value_t = 1)]
    rounds: usize,
    /// Only these faults.
    #[arg(long, value_enum)]
    only: Vec<Fault>,
    /// Also write the table to this file.
    #[arg(long)]
    markdown: Option<String>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let timing = args.seconds.map_or_else(Timing::short, Timing::long);
    let faults: Vec<Fault> = if args.only.is_empty() {
        Fault::ALL.to_vec()
    } else {
        args.only.clone()
    };
    let mut servers = Servers::start(faults.contains(&Fault::ClusterNodeRestart)).await?;
    let mut outcomes = Vec::new();
    for round in 0..args.rounds {
        for &f in &faults {
            eprintln!("[round {}] {} ...", round + 1, f.name());
            let o = scenario::run(&mut servers, f, timing).await?;
            eprintln!(
                "[round {}] {}: {}",
                round + 1,
                f.name(),
                if o.passed() { "ok" } else { "FAILED" }
            );
            outcomes.push(o);
        }
    }
    let table = scenario::table(&outcomes);
    println!("{table}");
    if let Some(path) = args.markdown {
        std::fs::write(path, &table)?;
    }
    // Stop the suite's servers before exiting (process::exit skips destructors).
    drop(servers);
    if outcomes.iter().all(|o| o.passed()) {
        eprintln!(
            "fault suite: every acknowledged event stored exactly once, every fault recovered."
        );
        Ok(())
    } else {
        eprintln!("fault suite: FAILED (see the table and the logs above).");
        std::process::exit(1);
    }
}
