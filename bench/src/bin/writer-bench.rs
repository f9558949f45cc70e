//! Drain benchmark of the batch writer: fills the streams with N events, measures how fast the
//! writer stores them (dedupe on) into the fully indexed table, and measures in the same run, each
//! into an identical table of its own database, the same rows as: one raw binary COPY; the fair
//! limit, `--fair-streams` concurrent raw binary COPY streams committing every `--batch-size`
//! rows (the writer's own stream count and commit size are the ones it is held to, and the best
//! count found is printed too); and the original design's 1000-row multi-row INSERT.
//!
//! `--index-ab` measures instead what the user index of migration 7 (`analytics_events_user_idx`,
//! which erasures find a user's rows by) costs the drain: the same events drained alternately
//! with and without it (`--pairs` pairs, in the order with, without, without, with, ...), each
//! drain into a fresh database, so the ratio comes from one run on one machine state.
//! `--pending-ab` does the same for the summary's pending rows the writer records with each
//! batch (migration 9): without them, a row trigger on `summary_pending` discards what the
//! writer copies there, so only sending those few rows is still paid.
//!
//! `cargo run --release -p sluice-bench --bin writer-bench -- --events 1000000`
//! `target/release/writer-bench --events 1000000 --index-ab`
//! `target/release/writer-bench --events 1000000 --pending-ab`

use std::time::{Duration, Instant};

use bench::{baseline, print_table, queued_event};
use clap::Parser;
use shared::config::Env;
use shared::queue::{self, Keys};
use testkit::TestDb;

#[derive(Parser)]
struct Args {
    /// Events to load.
    #[arg(long, default_value_t = 1_000_000)]
    events: usize,
    /// Concurrent COPY streams of the writer (WRITER_CONCURRENCY).
    #[arg(long, default_value_t = 2)]
    writers: usize,
    #[arg(long, default_value_t = 1000)]
    batch_size: usize,
    #[arg(long, default_value_t = 4)]
    shards: u16,
    /// Events carry client-chosen ids (each then costs a dedupe key, to catch client retries).
    #[arg(long)]
    client_ids: bool,
    /// Drain with the summary's pending rows discarded, to measure what they cost the writer.
    #[arg(long)]
    no_summary_pending: bool,
    /// Drain with the user index of migration 7 dropped (on every partition), to measure what
    /// it costs the writer.
    #[arg(long)]
    no_user_index: bool,
    /// Drain alternately with and without the user index instead of the baselines, and report
    /// the ratio.
    #[arg(long)]
    index_ab: bool,
    /// Drain alternately with and without the summary's pending rows instead of the baselines,
    /// and report the ratio.
    #[arg(long, conflicts_with = "index_ab")]
    pending_ab: bool,
    /// Pairs of drains of `--index-ab` or `--pending-ab`.
    #[arg(long, default_value_t = 2)]
    pairs: usize,
    /// Stream counts of the fair raw COPY limit (commits of `--batch-size` rows).
    #[arg(long, value_delimiter = ',', default_value = "1,2,3,4")]
    fair_streams: Vec<usize>,
    /// Where to write the figures as JSON.
    #[arg(long)]
    json: Option<String>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let n = args.events;
    eprintln!("Generating {n} events...");
    let now = chrono::Utc::now().timestamp_micros();
    let mut rng = rand::rng();
    let events: Vec<_> = (0..n)
        .map(|_| {
            let mut e = queued_event(&mut rng, now);
            e.client_id = args.client_ids;
            e
        })
        .collect();

    if args.index_ab {
        return ab(&events, &args, Feature::UserIndex).await;
    }
    if args.pending_ab {
        return ab(&events, &args, Feature::SummaryPending).await;
    }

    eprintln!("Raw binary COPY baseline...");
    let raw_db = TestDb::migrated().await;
    let raw = baseline::raw_copy(&raw_db.client().await, &events).await?;
    eprintln!(
        "Fair limit: {:?} raw COPY streams, commits of {} rows...",
        args.fair_streams, args.batch_size
    );
    let fair = baseline::fair_limits(&events, &args.fair_streams, args.batch_size).await?;

    eprintln!("Draining with the batch writer...");
    let schema = Schema {
        user_index: !args.no_user_index,
        summary_pending: !args.no_summary_pending,
    };
    let drain = drain_fresh(&events, &args, schema).await?;

    eprintln!("Multi-row INSERT baseline...");
    let ins_db = TestDb::migrated().await;
    let insert = baseline::multi_row_insert(&ins_db.client().await, &events).await?;

    let rate = |d: Duration| n as f64 / d.as_secs_f64();
    let mut rows = vec![vec![
        "raw binary COPY (one stream, one transaction)".into(),
        n.to_string(),
        format!("{:.2}", raw.as_secs_f64()),
        format!("{:.0}", rate(raw)),
        "1.00".into(),
    ]];
    for (streams, took) in &fair {
        rows.push(vec![
            format!(
                "fair limit: {streams} raw COPY stream(s), a commit every {} rows",
                args.batch_size
            ),
            n.to_string(),
            format!("{:.2}", took.as_secs_f64()),
            format!("{:.0}", rate(*took)),
            format!("{:.2}", raw.as_secs_f64() / took.as_secs_f64()),
        ]);
    }
    rows.extend([
        vec![
            format!(
                "batch-writer drain ({} COPY streams, dedupe on, {} ids{}{})",
                args.writers,
                if args.client_ids { "client" } else { "gateway" },
                if args.no_summary_pending {
                    ", summary pending rows discarded"
                } else {
                    ""
                },
                if args.no_user_index {
                    ", no user index"
                } else {
                    ""
                },
            ),
            n.to_string(),
            format!("{:.2}", drain.as_secs_f64()),
            format!("{:.0}", rate(drain)),
            format!("{:.2}", raw.as_secs_f64() / drain.as_secs_f64()),
        ],
        vec![
            "multi-row INSERT, 1000 rows a statement".into(),
            n.to_string(),
            format!("{:.2}", insert.as_secs_f64()),
            format!("{:.0}", rate(insert)),
            format!("{:.2}", raw.as_secs_f64() / insert.as_secs_f64()),
        ],
    ]);
    print_table(
        &["method", "rows", "seconds", "rows/s", "of raw COPY"],
        &rows,
    );
    println!(
        "writer / multi-row INSERT: {:.2}x",
        insert.as_secs_f64() / drain.as_secs_f64()
    );
    let same = fair.iter().find(|(s, _)| *s == args.writers).map(|f| f.1);
    let best = fair.iter().map(|f| f.1).min();
    if let Some(same) = same {
        println!(
            "writer / fair limit with its {} streams: {:.2} (target >= 0.9 with gateway ids, >= 0.8 with client ids)",
            args.writers,
            same.as_secs_f64() / drain.as_secs_f64()
        );
    }
    if let Some(best) = best {
        println!(
            "writer / best fair limit ({} streams): {:.2}",
            fair.iter().find(|f| f.1 == best).map_or(0, |f| f.0),
            best.as_secs_f64() / drain.as_secs_f64()
        );
    }
    if let Some(path) = args.json {
        let doc = serde_json::json!({
            "events": n,
            "raw_copy_rows_per_sec": rate(raw),
            "fair_limit_rows_per_sec": fair.iter().map(|(s, d)| serde_json::json!({"streams": s, "commit_rows": args.batch_size, "rows_per_sec": rate(*d)})).collect::<Vec<_>>(),
            "writer_over_fair_same_streams": same.map(|d| d.as_secs_f64() / drain.as_secs_f64()),
            "writer_rows_per_sec": rate(drain),
            "multi_row_insert_rows_per_sec": rate(insert),
            "writer_over_raw": raw.as_secs_f64() / drain.as_secs_f64(),
            "writer_over_insert": insert.as_secs_f64() / drain.as_secs_f64(),
            "writers": args.writers,
            "client_ids": args.client_ids,
            "batch_size": args.batch_size,
            "summary_pending": !args.no_summary_pending,
            "user_index": !args.no_user_index,
        });
        std::fs::write(path, serde_json::to_string_pretty(&doc)?)?;
    }
    Ok(())
}

/// What a drain's database has of the features an A/B run measures.
#[derive(Debug, Clone, Copy)]
struct Schema {
    user_index: bool,
    summary_pending: bool,
}

/// A feature measured by an A/B run.
#[derive(Debug, Clone, Copy)]
enum Feature {
    UserIndex,
    SummaryPending,
}

impl Feature {
    fn name(self) -> &'static str {
        match self {
            Feature::UserIndex => "user index",
            Feature::SummaryPending => "summary pending rows",
        }
    }

    fn schema(self, on: bool) -> Schema {
        match self {
            Feature::UserIndex => Schema {
                user_index: on,
                summary_pending: true,
            },
            Feature::SummaryPending => Schema {
                user_index: true,
                summary_pending: on,
            },
        }
    }
}

/// Makes `summary_pending` discard every row inserted into it (a row trigger returning NULL).
const DISCARD_PENDING: &str = "
CREATE FUNCTION bench_discard() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NULL; END $$;
CREATE TRIGGER bench_discard BEFORE INSERT ON summary_pending
  FOR EACH ROW EXECUTE FUNCTION bench_discard();";

/// Queues `events`, drains them with the writer into a fresh database (with `schema`'s
/// features) and checks that every one was stored; returns the drain's time.
async fn drain_fresh(
    events: &[shared::queue::QueuedEvent],
    args: &Args,
    schema: Schema,
) -> anyhow::Result<Duration> {
    let user_index = schema.user_index;
    let prefix = format!("bench-{}", uuid::Uuid::new_v4().simple());
    let keys = Keys::new(&prefix, args.shards);
    fill(&keys, events).await?;
    let w_db = TestDb::migrated().await;
    let client = w_db.client().await;
    if !user_index {
        // A partitioned index: dropping the parent's drops every partition's.
        client
            .batch_execute("DROP INDEX analytics_events_user_idx")
            .await?;
    }
    if !schema.summary_pending {
        client.batch_execute(DISCARD_PENDING).await?;
    }
    let indexed = user_indexed_partitions(&client).await?;
    anyhow::ensure!(
        (indexed > 0) == user_index,
        "the user index is on {indexed} partitions (wanted it {})",
        if user_index { "on" } else { "off" }
    );
    let took = drain(&w_db, &prefix, args).await;
    cleanup(&prefix).await;
    let took = took?;
    let stored: i64 = client
        .query_one("SELECT count(*) FROM analytics_events", &[])
        .await?
        .get(0);
    anyhow::ensure!(
        stored as usize == events.len(),
        "writer stored {stored} of {}",
        events.len()
    );
    let pending: i64 = client
        .query_one(
            "SELECT coalesce(sum(events), 0)::bigint FROM summary_pending",
            &[],
        )
        .await?
        .get(0);
    let want = if schema.summary_pending { stored } else { 0 };
    anyhow::ensure!(
        pending == want,
        "summary_pending counts {pending} events (wanted {want})"
    );
    Ok(took)
}

/// Partitions whose user index is attached to the parent's `analytics_events_user_idx` (0 when
/// the parent's is gone).
async fn user_indexed_partitions(client: &tokio_postgres::Client) -> anyhow::Result<i64> {
    Ok(client
        .query_one(
            "SELECT count(*) FROM pg_inherits \
             WHERE inhparent = to_regclass('analytics_events_user_idx')",
            &[],
        )
        .await?
        .get(0))
}

/// `--index-ab`, `--pending-ab`: drains with and without the feature, alternating (with,
/// without, without, with, ...), and prints each drain and the median ratio.
async fn ab(
    events: &[shared::queue::QueuedEvent],
    args: &Args,
    feature: Feature,
) -> anyhow::Result<()> {
    let n = events.len();
    let mut runs: Vec<(bool, f64)> = Vec::new();
    for pair in 0..args.pairs {
        let order = if pair % 2 == 0 {
            [true, false]
        } else {
            [false, true]
        };
        for with in order {
            eprintln!(
                "Drain {} of {}: {} {}...",
                runs.len() + 1,
                args.pairs * 2,
                feature.name(),
                if with { "on" } else { "off" }
            );
            let took = drain_fresh(events, args, feature.schema(with)).await?;
            runs.push((with, n as f64 / took.as_secs_f64()));
        }
    }
    let rates = |with: bool| -> Vec<f64> {
        let mut v: Vec<f64> = runs.iter().filter(|r| r.0 == with).map(|r| r.1).collect();
        v.sort_by(f64::total_cmp);
        v
    };
    let (on, off) = (rates(true), rates(false));
    // Each pair's ratio, from the two drains next to each other in time.
    let pair_ratios: Vec<f64> = runs.chunks(2).map(index_ratio).collect();
    let rows: Vec<Vec<String>> = runs
        .iter()
        .enumerate()
        .map(|(i, (with, rate))| {
            vec![
                (i + 1).to_string(),
                if *with { "on" } else { "off" }.to_owned(),
                n.to_string(),
                format!("{rate:.0}"),
            ]
        })
        .collect();
    print_table(&["drain", feature.name(), "rows", "writer rows/s"], &rows);
    let ratios: Vec<String> = pair_ratios.iter().map(|r| format!("{r:.3}")).collect();
    println!(
        "with / without the {}: median {:.0} / {:.0} rows/s = {:.3}; each pair: {}",
        feature.name(),
        median(&on),
        median(&off),
        median(&on) / median(&off),
        ratios.join(", ")
    );
    if let Some(path) = &args.json {
        let doc = serde_json::json!({
            "events": n,
            "writers": args.writers,
            "client_ids": args.client_ids,
            "summary_pending": !args.no_summary_pending,
            "feature": feature.name(),
            "drains": runs.iter().map(|(w, r)| serde_json::json!({"on": w, "rows_per_sec": r})).collect::<Vec<_>>(),
            "median_with": median(&on),
            "median_without": median(&off),
            "pair_ratios": pair_ratios,
        });
        std::fs::write(path, serde_json::to_string_pretty(&doc)?)?;
    }
    Ok(())
}

/// The with/without ratio of one pair of drains, whichever order they ran in.
fn index_ratio(pair: &[(bool, f64)]) -> f64 {
    let of = |with: bool| pair.iter().find(|r| r.0 == with).map_or(f64::NAN, |r| r.1);
    of(true) / of(false)
}

/// The median of sorted values (the mean of the middle two for an even count).
fn median(sorted: &[f64]) -> f64 {
    match sorted.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

async fn conn() -> anyhow::Result<redis::aio::MultiplexedConnection> {
    Ok(redis::Client::open("redis://127.0.0.1:6379/")?
        .get_multiplexed_async_connection()
        .await?)
}

/// Queues the events as the gateway would (entries of 100), 16 pushes in flight.
async fn fill(keys: &Keys, events: &[shared::queue::QueuedEvent]) -> anyhow::Result<()> {
    let conn = conn().await?;
    let script = redis::Script::new(queue::PUSH_SCRIPT);
    let chunks: Vec<_> = events.chunks(queue::EVENTS_PER_ENTRY).enumerate().collect();
    let mut stream = futures::stream::iter(chunks.into_iter().map(|(i, chunk)| {
        let mut conn = conn.clone();
        let script = script.clone();
        let shard = (i % keys.shards() as usize) as u16;
        async move {
            let payload = queue::encode(chunk)?;
            let _: Vec<String> =
                queue::push_invocation(&script, keys, shard, None, [(chunk.len(), &payload[..])])
                    .invoke_async(&mut conn)
                    .await?;
            anyhow::Ok(())
        }
    }))
    .buffer_unordered(16);
    use futures::StreamExt;
    while let Some(r) = stream.next().await {
        r?;
    }
    Ok(())
}

async fn drain(db: &TestDb, prefix: &str, args: &Args) -> anyhow::Result<Duration> {
    let mut vars = db.env_vars();
    vars.retain(|(k, _)| !k.starts_with("DB_POOL"));
    let extra = [
        ("DB_POOL_MAX", (args.writers + 2).to_string()),
        ("DB_POOL_MIN", args.writers.to_string()),
        ("REDIS_URL", "redis://127.0.0.1:6379/".into()),
        ("STREAM_PREFIX", prefix.to_owned()),
        ("STREAM_SHARDS", args.shards.to_string()),
        ("BATCH_SIZE", args.batch_size.to_string()),
        ("WRITER_CONCURRENCY", args.writers.to_string()),
        ("LOG_LEVEL", "warn".into()),
    ];
    vars.extend(extra.iter().map(|(k, v)| (k.to_string(), v.clone())));
    let config = batch_writer::WriterConfig::from_env(&Env::from_pairs(vars))?;
    let keys = Keys::new(prefix, args.shards);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let shutdown = tokio_util::sync::CancellationToken::new();
    let started = Instant::now();
    let task = tokio::spawn(batch_writer::run(config, listener, shutdown.clone()));
    let mut conn = conn().await?;
    loop {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let depths: Vec<Option<i64>> = redis::cmd("MGET")
            .arg(keys.all_depths())
            .query_async(&mut conn)
            .await?;
        if depths.iter().flatten().sum::<i64>() == 0 {
            break;
        }
        if task.is_finished() {
            anyhow::bail!("the writer stopped early");
        }
    }
    let elapsed = started.elapsed();
    shutdown.cancel();
    task.await??;
    Ok(elapsed)
}

async fn cleanup(prefix: &str) {
    testkit::redis_cleanup("redis://127.0.0.1:6379/", prefix).await
}
