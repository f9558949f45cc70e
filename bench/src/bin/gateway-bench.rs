//! Gateway benchmark over HTTP on loopback: batches of 100 events (native and Segment's
//! `/v1/batch` with realistic analytics-node messages) and single events with many
//! connections, and a fixed 10,000 events/s, beside the raw pipelined XADD rate of the same Redis
//! measured in the same run. The gateway runs as its own release process, so its peak memory and
//! CPU are its own; each phase reports the CPU seconds the gateway and Redis spent per million
//! events accepted, and the Redis memory each queued event takes.
//!
//! `cargo build --release --bins && target/release/gateway-bench`

use bench::load::{self, Phases, Target};
use bench::print_table;
use clap::Parser;
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

    eprintln!("Raw pipelined XADD...");
    let xadd = load::raw_xadd(
        "redis://127.0.0.1:6379/",
        &format!("{prefix}:raw"),
        4,
        64,
        phase,
    )
    .await?;

    clear(&prefix).await;
    let redis_pid = redis_pid().await?;
    let meter = Meter {
        gateway: pid,
        redis: redis_pid,
        prefix: prefix.clone(),
    };
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
        natives.push(meter.phase(p.closed(&target, &batch_bodies, 100)).await);
        eprintln!(
            "Round {round}/{}: Segment /v1/batch, batches of 100...",
            rounds
        );
        let segment = p.closed(&segment_target, &segment_bodies, 100);
        segments.push(meter.phase(segment).await);
    }
    let ratios: Vec<f64> = natives
        .iter()
        .zip(&segments)
        .map(|(n, s)| s.load.events_per_sec() / n.load.events_per_sec().max(1.0))
        .collect();
    let spread = |runs: &[Metered]| {
        let rates: Vec<f64> = runs.iter().map(|m| m.load.events_per_sec()).collect();
        format!(
            "{:.0}-{:.0}",
            rates.iter().copied().fold(f64::INFINITY, f64::min),
            rates.iter().copied().fold(0.0, f64::max)
        )
    };
    let (native_spread, segment_spread) = (spread(&natives), spread(&segments));
    let batched = median(natives);
    let segment = median(segments);
    eprintln!("Single events, {} connections...", p.connections);
    let single_bodies = load::bodies(1, 64);
    let single = meter.phase(p.closed(&target, &single_bodies, 1)).await;
    eprintln!("Fixed {} events/s, single events...", args.rate);
    let paced = load::fixed_rate(&target, &single_bodies, 1, args.rate, phase);
    let paced = meter.phase(paced).await;
    let rss = peak_rss_mib(pid).unwrap_or(0.0);
    let cpu = cpu_seconds(pid).unwrap_or(0.0);
    let total_events = [&batched, &segment, &single, &paced]
        .iter()
        .map(|m| m.load.events_accepted)
        .sum::<u64>();
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
        &[
            &["load"][..],
            &load::LoadResult::COLUMNS[..],
            &["gateway CPU-s/M", "Redis CPU-s/M", "Redis B/event"][..],
        ]
        .concat(),
        &rows,
    );
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
    println!(
        "gateway peak RSS {rss:.1} MiB; CPU {:.1} s per million events over every phase",
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
            "gateway_peak_rss_mib": rss,
            "gateway_cpu_s_per_million_events": cpu / (total_events as f64 / 1e6),
        });
        std::fs::write(path, serde_json::to_string_pretty(&doc)?)?;
    }
    Ok(())
}

/// The run with the median events/s.
fn median(mut runs: Vec<Metered>) -> Metered {
    runs.sort_by(|a, b| a.load.events_per_sec().total_cmp(&b.load.events_per_sec()));
    runs.swap_remove(runs.len() / 2)
}

/// What a phase cost the gateway and Redis, beside its load figures.
struct Metered {
    load: load::LoadResult,
    gateway_cpu: f64,
    redis_cpu: f64,
    redis_bytes: f64,
}

impl Metered {
    fn per_million(&self, cpu: f64) -> f64 {
        cpu / (self.load.events_accepted.max(1) as f64 / 1e6)
    }

    fn row(&self, name: &str) -> Vec<String> {
        let mut row = self.load.row(name);
        row.push(format!("{:.2}", self.per_million(self.gateway_cpu)));
        row.push(format!("{:.2}", self.per_million(self.redis_cpu)));
        row.push(format!(
            "{:.0}",
            self.redis_bytes / self.load.events_accepted.max(1) as f64
        ));
        row
    }

    fn summary(&self) -> serde_json::Value {
        let r = &self.load;
        serde_json::json!({
            "events_per_sec": r.events_per_sec(),
            "requests_per_sec": r.requests_per_sec(),
            "p50_ms": r.p(50.0).as_secs_f64() * 1000.0,
            "p99_ms": r.p(99.0).as_secs_f64() * 1000.0,
            "failures": r.failures,
            "gateway_cpu_s_per_million": self.per_million(self.gateway_cpu),
            "redis_cpu_s_per_million": self.per_million(self.redis_cpu),
            "redis_bytes_per_event": self.redis_bytes / r.events_accepted.max(1) as f64,
        })
    }
}

struct Meter {
    gateway: u32,
    redis: u32,
    prefix: String,
}

impl Meter {
    /// Runs one phase, reading both processes' CPU time and Redis's memory around it, then
    /// empties the queue so the next phase starts from the same Redis.
    async fn phase(&self, run: impl std::future::Future<Output = load::LoadResult>) -> Metered {
        let (g0, r0, m0) = (
            cpu_seconds(self.gateway).unwrap_or(0.0),
            cpu_seconds(self.redis).unwrap_or(0.0),
            redis_used_memory().await,
        );
        let load = run.await;
        let (g1, r1, m1) = (
            cpu_seconds(self.gateway).unwrap_or(0.0),
            cpu_seconds(self.redis).unwrap_or(0.0),
            redis_used_memory().await,
        );
        clear(&self.prefix).await;
        Metered {
            load,
            gateway_cpu: g1 - g0,
            redis_cpu: r1 - r0,
            redis_bytes: (m1 - m0).max(0.0),
        }
    }
}

async fn redis_info(field: &str) -> Option<String> {
    let client = redis::Client::open("redis://127.0.0.1:6379/").ok()?;
    let mut conn = client.get_multiplexed_async_connection().await.ok()?;
    let info: String = redis::cmd("INFO")
        .arg("ALL")
        .query_async(&mut conn)
        .await
        .ok()?;
    info.lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .map(|v| v.trim().to_owned())
}

async fn redis_pid() -> anyhow::Result<u32> {
    redis_info("process_id")
        .await
        .and_then(|p| p.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("cannot read Redis's process id from INFO"))
}

async fn redis_used_memory() -> f64 {
    redis_info("used_memory")
        .await
        .and_then(|m| m.parse().ok())
        .unwrap_or(0.0)
}

/// Deletes the queued events between phases, so Redis memory stays small.
async fn clear(prefix: &str) {
    testkit::redis_cleanup("redis://127.0.0.1:6379/", prefix).await
}
