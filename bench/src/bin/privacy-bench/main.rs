//! Erasure benchmark: how long erasing one user of a big app takes, and what it costs ingestion
//! meanwhile (`docs/privacy.md`, `docs/benchmarks.md`).
//!
//! A database of its own holds `--history` events of one app over the twelve months before the
//! current one (loaded server-side through the summary trigger and folded, then vacuumed and
//! analyzed; users from a pool of `--users`, so one user has history / users events on nearly
//! every day). The gateway, `--writers` batch writers and the maintenance worker run on it as
//! their own release processes, and the e2e-bench load generator drives `POST /v1/events` into the
//! same app for the whole run. The gateway's queue high water bounds the backlog, so the writers
//! always have work (their stored events/s is the pipeline's capacity) while the queue stays a
//! few seconds deep (an erasure waits for what was queued before it).
//!
//! Then `--rounds` rounds: a baseline window of `--seconds`, then an erasure window: `POST
//! /v1/privacy/erasures` for one history user, polled (`GET`, and `erasures.phase` in the
//! database for the phase timings) until `done`, the load going on for at least `--seconds` and
//! until the erasure is done. A last baseline window closes the run, so each erasure window has a
//! baseline on either side; its ratio is to their mean. Every erased user is checked to have
//! nothing left afterwards.
//!
//! `--keep` keeps the database (emptied of the run's load) and `--reuse` starts from it, so
//! repeated runs skip the load (minutes for 10M events).
//!
//! `cargo build --release --bins && target/release/privacy-bench --history 10000000 --keep`

use bench::print_table;
use clap::Parser;

mod figures;
mod history;
mod run;

use figures::{phases_text, Erasure, Window};
use history::{left_behind, prepare, reset_load, Loaded};
use run::{Run, RunParts};

/// The Redis the daemons queue on.
const REDIS: &str = "redis://127.0.0.1:6379/";

#[derive(Parser)]
pub struct Args {
    /// The benchmark's database; its name is also the daemons' stream prefix, so runs on
    /// different databases do not share a queue.
    #[arg(long, default_value = "sluice_privacy_bench")]
    pub db: String,
    /// History events of the app.
    #[arg(long, default_value_t = 10_000_000)]
    pub history: i64,
    /// Users the history's events come from.
    #[arg(long, default_value_t = 3_000)]
    pub users: i64,
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Seconds of each window (an erasure window lasts until its erasure is done).
    #[arg(long, default_value_t = 30)]
    pub seconds: u64,
    /// Batch-writer processes.
    #[arg(long, default_value_t = 2)]
    pub writers: usize,
    #[arg(long, default_value_t = 32)]
    pub connections: usize,
    /// Events per request.
    #[arg(long, default_value_t = 100)]
    pub batch: usize,
    /// Requests per second; 0 is as fast as the queue's high water lets in.
    #[arg(long, default_value_t = 0.0)]
    pub rate: f64,
    /// The gateway's QUEUE_HIGH_WATER (events): the backlog the load keeps queued.
    #[arg(long, default_value_t = 200_000)]
    pub queue_high_water: u64,
    /// Seconds of load before the first window.
    #[arg(long, default_value_t = 10)]
    pub warmup: u64,
    /// Give up on an erasure not done after this many seconds.
    #[arg(long, default_value_t = 1800)]
    pub max_erasure_seconds: u64,
    /// Keep the database afterwards (emptied of this run's load) for `--reuse`.
    #[arg(long)]
    pub keep: bool,
    /// Start from the database a `--keep` run left, when it holds the same history.
    #[arg(long)]
    pub reuse: bool,
    /// Where to write the figures as JSON.
    #[arg(long)]
    pub json: Option<String>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let admin = testkit::connect("postgres").await;
    let loaded = prepare(&admin, &args).await?;
    let c = testkit::connect(&args.db).await;
    c.batch_execute("SET statement_timeout = 0").await?;
    let members: i64 = c
        .query_one(
            "SELECT count(*) FROM summary_members WHERE app_id = $1",
            &[&loaded.app_id],
        )
        .await?
        .get(0);
    eprintln!("{} summary_members rows of the app.", members);
    let offset: i64 = c
        .query_one(
            "SELECT count(*) FROM erasures WHERE app_id = $1",
            &[&loaded.app_id],
        )
        .await?
        .get(0);

    let run = Run::start(&c, &loaded, &args).await?;
    let out = run.rounds(&c, &loaded, &args, offset).await;
    let run_parts = run.stop().await;
    let (baselines, erasures) = out?;
    report(&args, &loaded, members, &baselines, &erasures, &run_parts)?;
    eprintln!("Checking that nothing of the erased users is left...");
    for e in &erasures {
        let left = left_behind(&c, &loaded.app_id, &e.user).await?;
        anyhow::ensure!(left == 0, "{left} rows of {} left behind", e.user);
    }
    if args.keep {
        eprintln!("Emptying the database of this run's load (--keep)...");
        reset_load(&c, &loaded, &args.db).await?;
    } else {
        drop(c);
        admin
            .batch_execute(&format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", args.db))
            .await?;
    }
    Ok(())
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    match s.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => s[n / 2],
        n => (s[n / 2 - 1] + s[n / 2]) / 2.0,
    }
}

fn spread(v: &[f64]) -> (f64, f64) {
    (
        v.iter().copied().fold(f64::INFINITY, f64::min),
        v.iter().copied().fold(f64::NEG_INFINITY, f64::max),
    )
}

/// Each erasure window's stored events/s over the mean of the baselines either side of it.
fn ratios(baselines: &[Window], erasures: &[Erasure]) -> Vec<f64> {
    erasures
        .iter()
        .enumerate()
        .map(|(i, e)| {
            e.window.stored_per_sec
                / ((baselines[i].stored_per_sec + baselines[i + 1].stored_per_sec) / 2.0)
        })
        .collect()
}

fn report(
    args: &Args,
    l: &Loaded,
    members: i64,
    baselines: &[Window],
    erasures: &[Erasure],
    parts: &RunParts,
) -> anyhow::Result<()> {
    println!(
        "app {}: {} history events, {} users, {} summary_members rows; load: {} connections, rate {}, queue high water {}",
        l.app_id, l.history, l.users, members, args.connections, args.rate, args.queue_high_water
    );
    let ratios = ratios(baselines, erasures);
    print_rounds(baselines, erasures, &ratios);
    let secs: Vec<f64> = erasures.iter().map(|e| e.seconds).collect();
    let (rlo, rhi) = spread(&ratios);
    let (slo, shi) = spread(&secs);
    println!(
        "ratio median {:.3} (spread {rlo:.3}-{rhi:.3}; target >= 0.9); erasure median {:.1} s (spread {slo:.1}-{shi:.1}; target < 60 s)",
        median(&ratios),
        median(&secs)
    );
    let list = |v: Vec<f64>| {
        v.iter()
            .map(|v| format!("{v:.0}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    println!(
        "baseline windows stored/s: {}; accepted/s: {}",
        list(baselines.iter().map(|b| b.stored_per_sec).collect()),
        list(baselines.iter().map(|b| b.accepted_per_sec).collect()),
    );
    let cpu: Vec<String> = parts
        .cpu
        .iter()
        .map(|(n, c)| format!("{n} {c:.1}"))
        .collect();
    println!("daemons' CPU seconds over the run: {}", cpu.join(", "));
    if let Some(path) = &args.json {
        let doc = serde_json::json!({
            "history": l.history,
            "users": l.users,
            "summary_members": members,
            "load_seconds": l.load_seconds,
            "seconds": args.seconds,
            "writers": args.writers,
            "connections": args.connections,
            "rate": args.rate,
            "queue_high_water": args.queue_high_water,
            "baselines": baselines,
            "erasures": erasures,
            "ratios": ratios,
            "median_ratio": median(&ratios),
            "median_erasure_seconds": median(&secs),
        });
        std::fs::write(path, serde_json::to_string_pretty(&doc)?)?;
    }
    Ok(())
}

/// The table of rounds, then the scheduled folds that ran during each erasure.
fn print_rounds(baselines: &[Window], erasures: &[Erasure], ratios: &[f64]) {
    let rows: Vec<Vec<String>> = erasures
        .iter()
        .enumerate()
        .map(|(i, e)| {
            vec![
                (i + 1).to_string(),
                format!("{:.0}", baselines[i].stored_per_sec),
                format!(
                    "{:.0}{}",
                    e.window.stored_per_sec,
                    if e.extended { " (window extended)" } else { "" }
                ),
                format!("{:.0}", baselines[i + 1].stored_per_sec),
                format!("{:.3}", ratios[i]),
                format!("{:.1}", e.seconds),
                format!("{:.1}", e.server_seconds),
                format!("{} / {}", e.events_before, e.days_before),
                e.removed["events"].to_string(),
                e.removed["summary_members"].to_string(),
                phases_text(&e.phases),
                e.pending_at_summary
                    .map_or("-".to_owned(), |n| n.to_string()),
                format!("{:.0} / {:.1}", e.window.folds, e.window.fold_seconds),
            ]
        })
        .collect();
    print_table(
        &[
            "round",
            "baseline stored/s",
            "stored/s during erasure",
            "next baseline stored/s",
            "ratio",
            "erasure s (202 to done)",
            "server s",
            "user's events / days",
            "events removed",
            "members removed",
            "phases (s)",
            "load events pending at summary",
            "scheduled folds / their s in window",
        ],
        &rows,
    );
    for (i, e) in erasures.iter().enumerate() {
        let folds: Vec<String> = e
            .folds
            .iter()
            .map(|f| {
                format!(
                    "finished at {:.1} s, took {:.1} s, {} pending rows folded",
                    f.finished, f.seconds, f.pending_rows_folded
                )
            })
            .collect();
        println!(
            "round {}: scheduled views folds during the erasure (its own fold is its summary phase): {}",
            i + 1,
            if folds.is_empty() { "none".to_owned() } else { folds.join("; ") }
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_and_spreads() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert!(median(&[]).is_nan());
        assert_eq!(spread(&[0.9, 0.97, 0.93]), (0.9, 0.97));
    }
}
