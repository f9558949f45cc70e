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

use std::time::Duration;

use bench::spent::{measure, Spent};
use bench::{baseline, print_table, queued_event};
use clap::Parser;
use testkit::TestDb;

mod ab;
mod drain;

use ab::{ab, Feature};
use drain::{drain_fresh, Schema};

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
    /// Drain alternately directly and through a PgBouncer of its own in transaction pooling
    /// mode (`DB_POOLER=transaction`) instead of the baselines, and report the ratio.
    #[arg(long, conflicts_with_all = ["index_ab", "pending_ab"])]
    pgbouncer_ab: bool,
    /// Pairs of drains of `--index-ab`, `--pending-ab` or `--pgbouncer-ab`.
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
    if args.pgbouncer_ab {
        return ab(&events, &args, Feature::PgBouncer).await;
    }

    eprintln!("Raw binary COPY baseline...");
    let raw_db = TestDb::migrated().await;
    let raw_client = raw_db.client().await;
    let raw = measure(baseline::raw_copy(&raw_client, &events)).await?;
    eprintln!(
        "Fair limit: {:?} raw COPY streams, commits of {} rows...",
        args.fair_streams, args.batch_size
    );
    let mut fair = Vec::new();
    for &streams in &args.fair_streams {
        let one = async {
            let limit = baseline::fair_limits(&events, &[streams], args.batch_size).await?;
            Ok::<_, anyhow::Error>(limit[0].1)
        };
        fair.push((streams, measure(one).await?));
    }

    eprintln!("Draining with the batch writer...");
    let schema = Schema {
        user_index: !args.no_user_index,
        summary_pending: !args.no_summary_pending,
    };
    let drain = drain_fresh(&events, &args, schema, None).await?;

    eprintln!("Multi-row INSERT baseline...");
    let ins_db = TestDb::migrated().await;
    let ins_client = ins_db.client().await;
    let insert = measure(baseline::multi_row_insert(&ins_client, &events)).await?;

    let line = |method: String, s: &Spent| {
        vec![
            method,
            n.to_string(),
            format!("{:.2}", s.took.as_secs_f64()),
            format!("{:.0}", n as f64 / s.took.as_secs_f64()),
            format!("{:.2}", raw.took.as_secs_f64() / s.took.as_secs_f64()),
            format!("{:.1}", s.postgres_us_per_row(n)),
            format!("{:.1}", s.own_us_per_row(n)),
        ]
    };
    let mut rows = vec![line(
        "raw binary COPY (one stream, one transaction)".into(),
        &raw,
    )];
    for (streams, spent) in &fair {
        rows.push(line(
            format!(
                "fair limit: {streams} raw COPY stream(s), a commit every {} rows",
                args.batch_size
            ),
            spent,
        ));
    }
    rows.push(line(
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
        &drain,
    ));
    rows.push(line(
        "multi-row INSERT, 1000 rows a statement".into(),
        &insert,
    ));
    let rate = |d: Duration| n as f64 / d.as_secs_f64();
    let (raw, drain, insert) = (raw.took, drain.took, insert.took);
    let fair: Vec<(usize, Duration)> = fair.iter().map(|(s, spent)| (*s, spent.took)).collect();
    print_table(
        &[
            "method",
            "rows",
            "seconds",
            "rows/s",
            "of raw COPY",
            "PostgreSQL CPU us/row",
            "bench process CPU us/row",
        ],
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
