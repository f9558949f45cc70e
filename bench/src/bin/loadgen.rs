//! Load generator for `POST /v1/events`: realistic events (skewed names, many users and
//! sessions, a 4-key metadata object), at a fixed rate or as fast as possible, in batches or single
//! events, with a progress line on the terminal.
//!
//! `target/release/loadgen --addr 127.0.0.1:8080 --key sk_ingest_... --seconds 30 --batch 100`

use std::time::Duration;

use bench::load::{self, Target};
use clap::Parser;

#[derive(Parser)]
struct Args {
    #[arg(long, default_value = "127.0.0.1:8080")]
    addr: String,
    /// The app's ingest key.
    #[arg(long)]
    key: String,
    #[arg(long, default_value_t = 30)]
    seconds: u64,
    /// Events per request (1 sends single objects).
    #[arg(long, default_value_t = 100)]
    batch: usize,
    /// Requests per second; 0 sends as fast as the connections allow.
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    #[arg(long, default_value_t = 32)]
    connections: usize,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let target = Target::new(&args.addr, &args.key, args.connections);
    let duration = Duration::from_secs(args.seconds);
    let plan = load::Plan::new(args.batch, args.rate, args.connections, duration);
    let result = plan.run(&target).await;
    println!(
        "accepted {} events in {:.1} s: {:.0} events/s, {:.0} requests/s, p50 {:.2} ms, p99 {:.2} ms, {} failed requests",
        result.events_accepted,
        result.elapsed.as_secs_f64(),
        result.events_per_sec(),
        result.requests_per_sec(),
        result.p(50.0).as_secs_f64() * 1000.0,
        result.p(99.0).as_secs_f64() * 1000.0,
        result.failures
    );
    Ok(())
}
