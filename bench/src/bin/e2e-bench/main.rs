//! End-to-end benchmark: brings up the gateway, N batch writers and the maintenance worker as
//! their own release processes on the local PostgreSQL and Redis, drives HTTP load for a set time,
//! waits for the drain, and reports accepted and stored events/s, end-to-end latency (receive to
//! commit), each daemon's peak memory and CPU per million events, beside baselines of the same rows
//! measured in the same run: one raw binary COPY, the fair limit (`--fair-streams` concurrent raw
//! COPY streams committing every 1000 rows; the writers' own stream count, 2 a writer, is the
//! one the drain is held to) and the original design's multi-row INSERT. The drain rate is the
//! writers' alone: the events stored after the load stopped over the time they took. Writes the
//! figures as JSON and a chart (SVG) of throughput and latency over time.
//!
//! `cargo build --release --bins && target/release/e2e-bench --seconds 30`
//! Sustained: `target/release/e2e-bench --seconds 900 --rate 100` (100 requests/s of 100 events).

use std::time::{Duration, Instant};

use bench::load::{self, Target};
use clap::Parser;
use testkit::{cpu_seconds, peak_rss_mib, Stack, StackBuilder, TestDb};

mod baselines;
mod chart;
mod metrics;
mod report;
mod sampler;

use baselines::Baselines;
use metrics::{buckets, metric, quantile, scrape};
use report::Figures;

#[derive(Parser)]
struct Args {
    #[arg(long, default_value_t = 30)]
    seconds: u64,
    /// Batch-writer processes.
    #[arg(long, default_value_t = 1)]
    writers: usize,
    #[arg(long, default_value_t = 32)]
    connections: usize,
    /// Events per request.
    #[arg(long, default_value_t = 100)]
    batch: usize,
    /// Requests per second; 0 is as fast as possible.
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    #[arg(long, default_value = "docs/benchmarks/e2e.json")]
    json: String,
    #[arg(long, default_value = "docs/benchmarks/e2e.svg")]
    chart: String,
    /// Stream counts of the fair raw COPY limit (commits of 1000 rows, the writer's batch).
    #[arg(long, value_delimiter = ',', default_value = "2,3,4")]
    fair_streams: Vec<usize>,
    /// Skip the baselines (for long sustained runs).
    #[arg(long)]
    no_baselines: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let db = TestDb::migrated().await;
    let pools = shared::db::Pools::new(&db.config())?;
    let app = ingest_gateway::apps::create_app(&pools.write, "e2e").await?;
    let prefix = format!("bench-{}", uuid::Uuid::new_v4().simple());
    let stack = StackBuilder::new(db.env_vars(), REDIS, &prefix)
        .pools(8, 2, 4, 1)
        .var("QUEUE_HIGH_WATER", "50000000")
        .writers(args.writers, "e2e-")
        .maintenance(1)
        .start()
        .await?;
    let writer_ops: Vec<String> = stack
        .writers
        .iter()
        .flatten()
        .map(|w| w.ops_addr.clone())
        .collect();

    // One sample a second, until told to stop.
    let started = Instant::now();
    let stop = tokio_util::sync::CancellationToken::new();
    let sources = sampler::Sources {
        pids: stack.named().iter().map(|(_, d)| d.child.id()).collect(),
        gateway_ops: stack.running_gateway().ops_addr.clone(),
        writer_ops: writer_ops.clone(),
    };
    let sampler = sampler::spawn(sources, started, stop.clone());

    let duration = Duration::from_secs(args.seconds);
    let target = Target::new(&stack.gateway_addr, &app.ingest_key, args.connections);
    let plan = load::Plan::new(args.batch, args.rate, args.connections, duration);
    let load_started = Instant::now();
    let result = plan.run(&target).await;
    eprintln!("Load done; waiting for the drain...");
    let accepted = result.events_accepted as f64;
    let written = || async { metric(&scrape(&writer_ops).await.concat(), WRITTEN) };
    let written_at_load_end = written().await;
    let drain_started = Instant::now();
    let drained = testkit::wait_for(Duration::from_secs(600), || async {
        (written().await >= accepted).then_some(())
    })
    .await;
    anyhow::ensure!(drained.is_some(), "the writers did not drain");
    let stored_secs = load_started.elapsed().as_secs_f64();
    let drain_rate = (accepted - written_at_load_end) / drain_started.elapsed().as_secs_f64();
    stop.cancel();
    let samples = sampler.await?;

    let latency = latency(&writer_ops).await;
    let client = db.client().await;
    check_stored(&client, result.events_accepted).await?;
    let per_daemon = per_daemon(&stack, accepted);
    // Dropping the stack kills the daemons.
    drop(stack);

    let baselines = if args.no_baselines {
        Baselines::default()
    } else {
        baselines::measure(&client, &args.fair_streams).await?
    };
    let fig = Figures {
        result,
        stored_secs,
        drain_rate,
        latency,
        baselines,
        per_daemon,
        samples,
    };
    report::print(&args, &fig);
    if let Some(dir) = std::path::Path::new(&args.json).parent() {
        std::fs::create_dir_all(dir)?;
    }
    let doc = report::json(&args, &fig);
    std::fs::write(&args.json, serde_json::to_string_pretty(&doc)?)?;
    chart::chart(&args.chart, &fig.samples)?;
    eprintln!("Wrote {} and {}.", args.json, args.chart);
    testkit::redis_cleanup(REDIS, &prefix).await;
    Ok(())
}

/// The Redis the daemons queue on.
const REDIS: &str = "redis://127.0.0.1:6379/";
const WRITTEN: &str = "sluice_events_written_total";

/// End-to-end latency over the whole run, from the writers' histograms: p50 and p99 (bucket
/// bounds) and the max, seconds.
async fn latency(writer_ops: &[String]) -> (f64, f64, f64) {
    let each = scrape(writer_ops).await;
    let max_latency = each
        .iter()
        .map(|m| metric(m, "sluice_end_to_end_latency_max_seconds"))
        .fold(0.0, f64::max);
    let all = buckets(&each.concat());
    (
        quantile(&all, 0.5).unwrap_or(0.0),
        quantile(&all, 0.99).unwrap_or(0.0),
        max_latency,
    )
}

/// Every accepted event is stored, once.
async fn check_stored(client: &tokio_postgres::Client, accepted: u64) -> anyhow::Result<()> {
    let rows: i64 = client
        .query_one("SELECT count(*) FROM analytics_events", &[])
        .await?
        .get(0);
    let distinct: i64 = client
        .query_one("SELECT count(DISTINCT event_id) FROM analytics_events", &[])
        .await?
        .get(0);
    anyhow::ensure!(
        rows as u64 == accepted && distinct == rows,
        "stored {rows} ({distinct} distinct) of {accepted} accepted"
    );
    Ok(())
}

/// Each daemon's name, peak RSS (MiB) and CPU seconds per million events accepted.
fn per_daemon(stack: &Stack, accepted: f64) -> Vec<(String, f64, f64)> {
    stack
        .named()
        .into_iter()
        .map(|(name, d)| {
            let pid = d.child.id();
            let cpu = cpu_seconds(pid).unwrap_or(0.0) / (accepted / 1e6);
            (name, peak_rss_mib(pid).unwrap_or(0.0), cpu)
        })
        .collect()
}
