//! Gateway benchmark over HTTP on loopback: batches of 100 events (native and Segment's
//! `/v1/batch` with realistic analytics-node messages) and single events with many
//! connections, and a fixed 10,000 events/s, beside the raw pipelined XADD rate of the same Redis
//! measured in the same run. The gateway runs as its own release process, so its peak memory and
//! CPU are its own; each phase reports the CPU seconds the gateway and Redis spent per million
//! events accepted, and the Redis memory each queued event takes.
//!
//! Then PostHog `POST /batch/` bodies of small (~200 B) and posthog-js (~1.2 KB) events, and,
//! with `--posthog-capture PATH`, the same bodies against PostHog's capture service in
//! alternating phases of the same run (`posthog`).
//!
//! `cargo build --release --bins && target/release/gateway-bench`

mod meter;
mod posthog;

use bench::load::{self, Phases, Target};
use bench::posthog::Size;
use bench::print_table;
use clap::Parser;
use meter::{median, spread, Meter};
use testkit::{cpu_seconds, peak_rss_mib, StackBuilder, TestDb};

#[derive(Parser)]
struct Args {
    #[command(flatten)]
    phases: Phases,
    /// Fixed rate of the latency phase, events per second (single-event requests).
    #[arg(long, default_value_t = 10_000.0)]
    rate: f64,
    /// Alternating rounds of the two batched loads (native and Segment).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// A PostHog capture binary to run side by side on the PostHog loads (print sink).
    #[arg(long)]
    posthog_capture: Option<String>,
    /// Only the PostHog loads (and capture beside them).
    #[arg(long)]
    posthog_only: bool,
    #[arg(long)]
    json: Option<String>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let phase = args.phases.duration();
    let db = TestDb::migrated().await;
    let pools = shared::db::Pools::new(&db.config())?;
    let app = ingest_gateway::apps::create_app(&pools.write, "bench").await?;
    let prefix = format!("bench-{}", uuid::Uuid::new_v4().simple());
    let stack = StackBuilder::new(db.env_vars(), "redis://127.0.0.1:6379/", &prefix)
        .var("QUEUE_HIGH_WATER", "100000000")
        .start()
        .await?;
    let (addr, pid) = (&stack.gateway_addr, stack.running_gateway().child.id());

    let meter = Meter::new(&prefix).await?;
    meter.clear().await;
    if args.posthog_only {
        let posthogs = posthog_loads(&args, &meter, addr, pid, &app.ingest_key).await?;
        let rows: Vec<Vec<String>> = posthogs.iter().flat_map(|c| c.rows()).collect();
        print_table(&header(), &rows);
        for c in &posthogs {
            println!("{}", c.verdict());
        }
        return Ok(());
    }
    eprintln!("Raw pipelined XADD...");
    let xadd = load::raw_xadd(
        "redis://127.0.0.1:6379/",
        &format!("{prefix}:raw"),
        4,
        64,
        phase,
    )
    .await?;
    meter.clear().await;
    let target = Target::new(addr, &app.ingest_key, args.phases.connections);
    let segment_target = Target::segment(addr, &app.ingest_key, args.phases.connections);
    let batch_bodies = load::bodies(100, 16);
    let segment_bodies = load::segment_bodies(100, 16);
    // The two batched loads alternate, so drift on the machine touches both alike.
    let (mut natives, mut segments) = (Vec::new(), Vec::new());
    let rounds = args.rounds.max(1);
    let p = &args.phases;
    for round in 1..=rounds {
        eprintln!(
            "Round {round}/{}: batches of 100, {} connections...",
            rounds, p.connections
        );
        natives.push(
            meter
                .phase(pid, p.closed(&target, &batch_bodies, 100))
                .await,
        );
        eprintln!(
            "Round {round}/{}: Segment /v1/batch, batches of 100...",
            rounds
        );
        let segment = p.closed(&segment_target, &segment_bodies, 100);
        segments.push(meter.phase(pid, segment).await);
    }
    let ratios: Vec<f64> = natives
        .iter()
        .zip(&segments)
        .map(|(n, s)| s.load.events_per_sec() / n.load.events_per_sec().max(1.0))
        .collect();
    let (native_spread, segment_spread) = (spread(&natives), spread(&segments));
    let batched = median(natives);
    let segment = median(segments);
    eprintln!("Single events, {} connections...", p.connections);
    let single_bodies = load::bodies(1, 64);
    let single = meter.phase(pid, p.closed(&target, &single_bodies, 1)).await;
    eprintln!("Fixed {} events/s, single events...", args.rate);
    let paced = load::fixed_rate(&target, &single_bodies, 1, args.rate, phase);
    let paced = meter.phase(pid, paced).await;
    // The memory target is the native and Segment loads'; the PostHog loads' 1.2 KB events hold
    // more in flight, so their peak is given apart.
    let rss = peak_rss_mib(pid).unwrap_or(0.0);
    let posthogs = posthog_loads(&args, &meter, addr, pid, &app.ingest_key).await?;
    let posthog_rss = peak_rss_mib(pid).unwrap_or(0.0);
    let cpu = cpu_seconds(pid).unwrap_or(0.0);
    let total_events = [&batched, &segment, &single, &paced]
        .into_iter()
        .chain(posthogs.iter().map(|c| &c.sluice))
        .map(|m| m.load.events_accepted)
        .sum::<u64>();

    let mut rows = vec![
        vec![
            "raw pipelined XADD (4 conns, 64 deep)".into(),
            format!("{xadd:.0}"),
            "-".into(),
            "-".into(),
            "-".into(),
            "-".into(),
            "-".into(),
            "-".into(),
            "-".into(),
        ],
        batched.row(&format!(
            "/v1/events, batches of 100 ({:.0} B/event)",
            load::bytes_per_event(&batch_bodies, 100)
        )),
        segment.row(&format!(
            "Segment /v1/batch, batches of 100 ({:.0} B/event)",
            load::bytes_per_event(&segment_bodies, 100)
        )),
        single.row("single events"),
        paced.row(&format!("fixed {:.0} events/s, single", args.rate)),
    ];
    rows.extend(posthogs.iter().flat_map(|c| c.rows()));
    print_table(&header(), &rows);
    let mut sorted_ratios = ratios.clone();
    sorted_ratios.sort_by(f64::total_cmp);
    println!(
        "batched rows: the median of {} alternating rounds; events/s over the rounds: /v1/events {native_spread}, Segment {segment_spread}",
        rounds
    );
    println!(
        "Segment /v1/batch vs /v1/events: {:.2}x the events/s (median; rounds {})",
        sorted_ratios[sorted_ratios.len() / 2],
        ratios
            .iter()
            .map(|r| format!("{r:.2}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    for c in &posthogs {
        println!("{}", c.verdict());
    }
    println!(
        "gateway peak RSS {rss:.1} MiB over the native, Segment and single-event loads, {posthog_rss:.1} MiB with the PostHog loads; CPU {:.1} s per million events over every phase",
        cpu / (total_events as f64 / 1e6)
    );
    if let Some(path) = args.json {
        let doc = serde_json::json!({
            "raw_xadd_per_sec": xadd,
            "batched": batched.summary(),
            "segment_batched": segment.summary(),
            "segment_vs_native_ratios": ratios,
            "single": single.summary(),
            "fixed_rate": paced.summary(),
            "fixed_rate_target": args.rate,
            "posthog": posthogs.iter().map(|c| c.summary()).collect::<Vec<_>>(),
            "gateway_peak_rss_mib": rss,
            "gateway_peak_rss_mib_with_posthog": posthog_rss,
            "gateway_cpu_s_per_million_events": cpu / (total_events as f64 / 1e6),
        });
        std::fs::write(path, serde_json::to_string_pretty(&doc)?)?;
    }
    Ok(())
}

fn header() -> Vec<&'static str> {
    [
        &["load"][..],
        &load::LoadResult::COLUMNS[..],
        &["server CPU-s/M", "Redis CPU-s/M", "Redis B/event"][..],
    ]
    .concat()
}

/// The PostHog loads, small and posthog-js events, against the gateway and, when given, against
/// PostHog's capture (started here, stopped at the end).
async fn posthog_loads(
    args: &Args,
    meter: &Meter,
    addr: &str,
    pid: u32,
    key: &str,
) -> anyhow::Result<Vec<posthog::Comparison>> {
    let capture = match &args.posthog_capture {
        Some(path) => Some(posthog::Capture::start(path).await?),
        None => None,
    };
    let servers = posthog::Servers {
        gateway_addr: addr,
        gateway_pid: pid,
        key,
        capture: capture.as_ref(),
    };
    let mut posthogs = Vec::new();
    for size in [Size::Small, Size::Web] {
        posthogs
            .push(posthog::compare(meter, &args.phases, args.rounds.max(1), &servers, size).await);
    }
    Ok(posthogs)
}
