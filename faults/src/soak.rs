//! The soak run: the pipeline under a steady load for a long time (30 minutes and more), sampled
//! every so often for what would reveal a leak: each daemon's resident memory, the queue Redis's
//! memory, stream length and pending entries, and the writer's exactly-once bookkeeping
//! (`event_dedupe`, `entry_ledger` rows, which the retention job prunes past
//! `DEDUPE_WINDOW_HOURS`). Ends with a drain and the same audit as the fault suite.

use std::time::{Duration, Instant};

use crate::load::Load;
use crate::scenario::{finish, spawn_replays, End};
use crate::stack::Stack;

/// One sample.
#[derive(Debug, Clone, Default)]
pub struct Sample {
    pub minute: f64,
    pub acked: u64,
    /// Resident memory of gateway, writers..., maintenance (MiB).
    pub rss_mib: Vec<f64>,
    pub redis_used_mib: f64,
    pub stream_entries: i64,
    pub pending: i64,
    pub dedupe_rows: i64,
    pub ledger_rows: i64,
}

/// Reads one sample off the running stack.
pub async fn sample(stack: &Stack, started: Instant) -> anyhow::Result<Sample> {
    let pids: Vec<u32> = stack
        .daemons
        .named()
        .iter()
        .map(|(_, d)| d.child.id())
        .collect();
    let client = redis::Client::open(stack.redis_url.as_str())?;
    let mut r = client.get_multiplexed_async_connection().await?;
    let info: String = redis::cmd("INFO").arg("memory").query_async(&mut r).await?;
    let used: f64 = info
        .lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0);
    let keys = stack.keys();
    let entries = testkit::stream_entries(&mut r, &keys).await.unwrap_or(0);
    let mut pending = 0i64;
    for s in keys.all_streams() {
        let summary: redis::Value = redis::cmd("XPENDING")
            .arg(&s)
            .arg(shared::queue::GROUP)
            .query_async(&mut r)
            .await
            .unwrap_or(redis::Value::Nil);
        if let redis::Value::Array(v) = summary {
            if let Some(redis::Value::Int(n)) = v.first() {
                pending += n;
            }
        }
    }
    let db = stack.db().await?;
    let count = |t: &'static str| {
        let db = &db;
        async move {
            db.query_one(&format!("SELECT count(*) FROM {t}"), &[])
                .await
                .map(|r| r.get::<_, i64>(0))
                .unwrap_or(-1)
        }
    };
    Ok(Sample {
        minute: started.elapsed().as_secs_f64() / 60.0,
        acked: stack.sender.books.acked().len() as u64,
        rss_mib: pids
            .into_iter()
            .map(|p| testkit::rss_mib(p).unwrap_or(0.0))
            .collect(),
        redis_used_mib: used / 1_048_576.0,
        stream_entries: entries,
        pending,
        dedupe_rows: count("event_dedupe").await,
        ledger_rows: count("entry_ledger").await,
    })
}

/// Runs the fault suite's load (poison events, client retries, dead-letter replays) for
/// `duration`, sampling every `every`; then the suite's end: poison lifted, dead letters replayed,
/// drain, every daemon stopped, audit.
pub async fn run(
    stack: &mut Stack,
    duration: Duration,
    every: Duration,
    connections: usize,
    pause: Duration,
) -> anyhow::Result<(Vec<Sample>, End)> {
    let started = Instant::now();
    stack.poison(true).await?;
    let load = Load::start(&stack.sender, connections, 20, pause, true);
    let stop_replays = tokio_util::sync::CancellationToken::new();
    let replays = spawn_replays(stack, Duration::from_secs(5), stop_replays.clone());
    let mut samples = Vec::new();
    while started.elapsed() < duration {
        tokio::time::sleep(every.min(duration.saturating_sub(started.elapsed()))).await;
        let s = sample(stack, started).await?;
        eprintln!("{}", row(&s));
        samples.push(s);
    }
    load.stop().await;
    stop_replays.cancel();
    let during = replays.await.unwrap_or(0);
    let mut end = finish(stack).await?;
    end.replays += during;
    let after = sample(stack, started).await?;
    eprintln!("after the drain: {}", row(&after));
    samples.push(after);
    Ok((samples, end))
}

fn row(s: &Sample) -> String {
    format!(
        "| {:.1} | {} | {} | {:.1} | {} | {} | {} | {} |",
        s.minute,
        s.acked,
        s.rss_mib
            .iter()
            .map(|m| format!("{m:.1}"))
            .collect::<Vec<_>>()
            .join(" / "),
        s.redis_used_mib,
        s.stream_entries,
        s.pending,
        s.dedupe_rows,
        s.ledger_rows
    )
}

/// The samples as a Markdown table.
pub fn table(samples: &[Sample]) -> String {
    let mut t = String::from("| minute | events acknowledged | RSS MiB (gateway / writers / maintenance) | Redis used MiB | stream entries | pending | event_dedupe rows | entry_ledger rows |\n|---:|---:|---|---:|---:|---:|---:|---:|\n");
    for s in samples {
        t.push_str(&row(s));
        t.push('\n');
    }
    t
}

/// Flat: after the warm-up (the first quarter), no daemon's memory grew by more than
/// `tolerance` (as a fraction) and the backlog came back to nothing after the drain.
pub fn flat(samples: &[Sample], tolerance: f64) -> Result<(), String> {
    let (Some(last), true) = (samples.last(), samples.len() >= 4) else {
        return Err("too few samples".into());
    };
    if last.stream_entries != 0 || last.pending != 0 {
        return Err(format!(
            "after the drain: {} entries, {} pending",
            last.stream_entries, last.pending
        ));
    }
    let warm = &samples[samples.len() / 4];
    let end = &samples[samples.len() - 2];
    for (i, (a, b)) in warm.rss_mib.iter().zip(&end.rss_mib).enumerate() {
        if *b > a * (1.0 + tolerance) + 2.0 {
            return Err(format!("daemon {i}: {a:.1} MiB -> {b:.1} MiB"));
        }
    }
    Ok(())
}
