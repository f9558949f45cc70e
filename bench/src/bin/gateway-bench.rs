//! Gateway benchmark over HTTP on loopback: batches of 100 events (native and Segment's
//! `/v1/batch` with realistic analytics-node messages) and single events with many
//! connections, and a fixed 10,000 events/s, beside the raw pipelined XADD rate of the same Redis
//! measured in the same run. The gateway runs as its own release process, so its peak memory and
//! CPU are its own.
//!
//! `cargo build --release --bins && target/release/gateway-bench`

use std::time::Duration;

use bench::load::{self, Target};
use bench::{cpu_seconds, peak_rss_mib, print_table};
use clap::Parser;
use shared::testing::TestDb;

#[derive(Parser)]
struct Args {
    /// Seconds per phase.
    #[arg(long, default_value_t = 8)]
    seconds: u64,
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// Fixed rate of the latency phase, events per second (single-event requests).
    #[arg(long, default_value_t = 10_000.0)]
    rate: f64,
    #[arg(long)]
    json: Option<String>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let phase = Duration::from_secs(args.seconds);
    let db = TestDb::migrated().await;
    let pools = shared::db::Pools::new(&db.config())?;
    let app = ingest_gateway::apps::create_app(&pools.write, "bench").await?;
    let prefix = format!("bench-{}", uuid::Uuid::new_v4().simple());
    let addr = format!("127.0.0.1:{}", shared::testing::free_port());
    let exe = std::env::current_exe()?;
    let bin = exe.with_file_name("ingest-gateway");
    let mut env = db.env_vars();
    env.extend(
        [
            ("GATEWAY_ADDR", addr.as_str()),
            ("REDIS_URL", "redis://127.0.0.1:6379/"),
            ("STREAM_PREFIX", prefix.as_str()),
            ("QUEUE_HIGH_WATER", "100000000"),
            ("LOG_LEVEL", "warn"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string())),
    );
    let gw = shared::testing::Daemon::start(bin.to_str().unwrap_or("ingest-gateway"), &env).await;
    let pid = gw.child.id();

    eprintln!("Raw pipelined XADD...");
    let xadd = load::raw_xadd(
        "redis://127.0.0.1:6379/",
        &format!("{prefix}:raw"),
        4,
        64,
        phase,
    )
    .await?;

    let target = Target::new(&addr, &app.ingest_key, args.connections);
    eprintln!("Batches of 100, {} connections...", args.connections);
    let batch_bodies = load::bodies(100, 16);
    let batched = load::closed_loop(&target, &batch_bodies, 100, args.connections, phase).await;
    clear(&prefix).await;
    eprintln!(
        "Segment /v1/batch, batches of 100, {} connections...",
        args.connections
    );
    let segment_target = Target::segment(&addr, &app.ingest_key, args.connections);
    let segment_bodies = load::segment_bodies(100, 16);
    let segment = load::closed_loop(
        &segment_target,
        &segment_bodies,
        100,
        args.connections,
        phase,
    )
    .await;
    clear(&prefix).await;
    eprintln!("Single events, {} connections...", args.connections);
    let single_bodies = load::bodies(1, 64);
    let single = load::closed_loop(&target, &single_bodies, 1, args.connections, phase).await;
    clear(&prefix).await;
    eprintln!("Fixed {} events/s, single events...", args.rate);
    let paced = load::fixed_rate(&target, &single_bodies, 1, args.rate, phase).await;
    clear(&prefix).await;
    let rss = peak_rss_mib(pid).unwrap_or(0.0);
    let cpu = cpu_seconds(pid).unwrap_or(0.0);
    let total_events = batched.events_accepted
        + segment.events_accepted
        + single.events_accepted
        + paced.events_accepted;
    let bytes_per_event = |b: &[bytes::Bytes]| {
        b.iter().map(|x| x.len()).sum::<usize>() as f64 / (b.len() * 100) as f64
    };

    let rows = vec![
        vec![
            "raw pipelined XADD (4 conns, 64 deep)".into(),
            format!("{xadd:.0}"),
            "-".into(),
            "-".into(),
            "-".into(),
            "-".into(),
        ],
        batched.row(&format!(
            "/v1/events, batches of 100 ({:.0} B/event)",
            bytes_per_event(&batch_bodies)
        )),
        segment.row(&format!(
            "Segment /v1/batch, batches of 100 ({:.0} B/event)",
            bytes_per_event(&segment_bodies)
        )),
        single.row("single events"),
        paced.row(&format!("fixed {:.0} events/s, single", args.rate)),
    ];
    print_table(
        &[&["load"][..], &load::LoadResult::COLUMNS[..]].concat(),
        &rows,
    );
    println!(
        "Segment /v1/batch vs /v1/events: {:.2}x the events/s",
        segment.events_per_sec() / batched.events_per_sec().max(1.0)
    );
    println!(
        "gateway peak RSS {rss:.1} MiB; CPU {:.1} s per million events",
        cpu / (total_events as f64 / 1e6)
    );
    if let Some(path) = args.json {
        let doc = serde_json::json!({
            "raw_xadd_per_sec": xadd,
            "batched": summary(&batched),
            "segment_batched": summary(&segment),
            "single": summary(&single),
            "fixed_rate": summary(&paced),
            "fixed_rate_target": args.rate,
            "gateway_peak_rss_mib": rss,
            "gateway_cpu_s_per_million_events": cpu / (total_events as f64 / 1e6),
        });
        std::fs::write(path, serde_json::to_string_pretty(&doc)?)?;
    }
    Ok(())
}

fn summary(r: &load::LoadResult) -> serde_json::Value {
    serde_json::json!({
        "events_per_sec": r.events_per_sec(),
        "requests_per_sec": r.requests_per_sec(),
        "p50_ms": r.p(50.0).as_secs_f64() * 1000.0,
        "p99_ms": r.p(99.0).as_secs_f64() * 1000.0,
        "failures": r.failures,
    })
}

/// Deletes the queued events between phases, so Redis memory stays small.
async fn clear(prefix: &str) {
    shared::testing::redis_cleanup("redis://127.0.0.1:6379/", prefix).await
}
