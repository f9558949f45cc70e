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
use bench::{baseline, cpu_seconds, peak_rss_mib, print_table, rss_mib};
use clap::Parser;
use shared::queue::QueuedEvent;
use testkit::{http_get, Daemon, TestDb};

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

/// One second of the run.
#[derive(Debug, Clone, serde::Serialize)]
struct Sample {
    t: f64,
    accepted: f64,
    written: f64,
    lag: f64,
    rss_mib: Vec<f64>,
    /// Cumulative end-to-end latency histogram over all writers: (upper bound s, count).
    #[serde(skip)]
    buckets: Vec<(f64, f64)>,
}

/// The `/metrics` text of each ops address (empty for one that does not answer).
async fn scrape(addrs: &[String]) -> Vec<String> {
    let mut out = Vec::with_capacity(addrs.len());
    for a in addrs {
        out.push(
            http_get(a, "/metrics")
                .await
                .map(|r| r.1)
                .unwrap_or_default(),
        );
    }
    out
}

/// The sum of every sample of `name` in a `/metrics` text (so concatenated texts sum across
/// daemons).
fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn buckets(text: &str) -> Vec<(f64, f64)> {
    let mut out: Vec<(f64, f64)> = Vec::new();
    for l in text
        .lines()
        .filter(|l| l.starts_with("sluice_end_to_end_latency_seconds_bucket{"))
    {
        let Some(le) = l.split("le=\"").nth(1).and_then(|r| r.split('"').next()) else {
            continue;
        };
        let le = if le == "+Inf" {
            f64::INFINITY
        } else {
            le.parse().unwrap_or(f64::INFINITY)
        };
        let v: f64 = l
            .rsplit(' ')
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0);
        match out.iter_mut().find(|(b, _)| *b == le) {
            Some(e) => e.1 += v,
            None => out.push((le, v)),
        }
    }
    out.sort_by(|a, b| a.0.total_cmp(&b.0));
    out
}

/// The smallest bucket bound holding the `p` quantile of the counts in `b` (cumulative).
fn quantile(b: &[(f64, f64)], p: f64) -> Option<f64> {
    let total = b.last()?.1;
    if total <= 0.0 {
        return None;
    }
    b.iter().find(|(_, c)| *c >= total * p).map(|(le, _)| *le)
}

fn delta(a: &[(f64, f64)], b: &[(f64, f64)]) -> Vec<(f64, f64)> {
    b.iter()
        .map(|(le, c)| {
            (
                *le,
                c - a.iter().find(|(l, _)| l == le).map_or(0.0, |x| x.1),
            )
        })
        .collect()
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let db = TestDb::migrated().await;
    let pools = shared::db::Pools::new(&db.config())?;
    let app = ingest_gateway::apps::create_app(&pools.write, "e2e").await?;
    let prefix = format!("bench-{}", uuid::Uuid::new_v4().simple());
    let addr = format!("127.0.0.1:{}", testkit::free_port());
    let exe = std::env::current_exe()?;
    let bin = |name: &str| exe.with_file_name(name).to_string_lossy().into_owned();
    let mut env = db.env_vars();
    env.retain(|(k, _)| !k.starts_with("DB_POOL") && !k.starts_with("DB_READ_POOL"));
    env.extend(
        [
            ("DB_POOL_MAX", "8"),
            ("DB_POOL_MIN", "2"),
            ("DB_READ_POOL_MAX", "4"),
            ("DB_READ_POOL_MIN", "1"),
            ("GATEWAY_ADDR", addr.as_str()),
            ("REDIS_URL", "redis://127.0.0.1:6379/"),
            ("STREAM_PREFIX", prefix.as_str()),
            ("QUEUE_HIGH_WATER", "50000000"),
            ("LOG_LEVEL", "warn"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string())),
    );
    let gateway = Daemon::start(&bin("ingest-gateway"), &env).await;
    let mut writers = Vec::new();
    for i in 0..args.writers {
        let mut e = env.clone();
        e.push(("WRITER_CONSUMER_NAME".into(), format!("e2e-{i}")));
        writers.push(Daemon::start(&bin("batch-writer"), &e).await);
    }
    let maintenance = Daemon::start(&bin("maintenance-worker"), &env).await;
    let daemons: Vec<(String, &Daemon)> = std::iter::once(("ingest-gateway".to_owned(), &gateway))
        .chain(
            writers
                .iter()
                .enumerate()
                .map(|(i, w)| (format!("batch-writer {i}"), w)),
        )
        .chain(std::iter::once((
            "maintenance-worker".to_owned(),
            &maintenance,
        )))
        .collect();
    let pids: Vec<u32> = daemons.iter().map(|(_, d)| d.child.id()).collect();
    let writer_ops: Vec<String> = writers.iter().map(|w| w.ops_addr.clone()).collect();
    let gateway_ops = gateway.ops_addr.clone();

    // One sample a second, until told to stop.
    let started = Instant::now();
    let stop = tokio_util::sync::CancellationToken::new();
    let sampler = {
        let (stop, pids, writer_ops, gateway_ops) = (
            stop.clone(),
            pids.clone(),
            writer_ops.clone(),
            gateway_ops.clone(),
        );
        tokio::spawn(async move {
            let mut samples = Vec::new();
            loop {
                let g = scrape(std::slice::from_ref(&gateway_ops)).await.concat();
                let each = scrape(&writer_ops).await;
                let text = each.concat();
                let written = metric(&text, "sluice_events_written_total");
                let lag = each
                    .iter()
                    .map(|m| metric(m, "sluice_queue_lag_events"))
                    .fold(0.0, f64::max);
                samples.push(Sample {
                    t: started.elapsed().as_secs_f64(),
                    accepted: metric(&g, "sluice_events_accepted_total"),
                    written,
                    lag,
                    rss_mib: pids.iter().map(|p| rss_mib(*p).unwrap_or(0.0)).collect(),
                    buckets: buckets(&text),
                });
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = stop.cancelled() => return samples,
                }
            }
        })
    };

    let duration = Duration::from_secs(args.seconds);
    let target = Target::new(&addr, &app.ingest_key, args.connections);
    let bodies = load::bodies(args.batch, 32);
    let load_started = Instant::now();
    let result = load::run_with_progress(
        &target,
        &bodies,
        args.batch as u64,
        args.rate,
        args.connections,
        duration,
    )
    .await;
    eprintln!("Load done; waiting for the drain...");
    let accepted = result.events_accepted as f64;
    let written_at_load_end = metric(
        &scrape(&writer_ops).await.concat(),
        "sluice_events_written_total",
    );
    let drain_started = Instant::now();
    let drained = testkit::wait_for(Duration::from_secs(600), || async {
        let written = metric(
            &scrape(&writer_ops).await.concat(),
            "sluice_events_written_total",
        );
        (written >= accepted).then_some(())
    })
    .await;
    anyhow::ensure!(drained.is_some(), "the writers did not drain");
    let stored_secs = load_started.elapsed().as_secs_f64();
    let drain_rate = (accepted - written_at_load_end) / drain_started.elapsed().as_secs_f64();
    stop.cancel();
    let samples = sampler.await?;

    let each = scrape(&writer_ops).await;
    let max_latency = each
        .iter()
        .map(|m| metric(m, "sluice_end_to_end_latency_max_seconds"))
        .fold(0.0, f64::max);
    let all = buckets(&each.concat());
    let (p50, p99) = (
        quantile(&all, 0.5).unwrap_or(0.0),
        quantile(&all, 0.99).unwrap_or(0.0),
    );
    let client = db.client().await;
    let rows: i64 = client
        .query_one("SELECT count(*) FROM analytics_events", &[])
        .await?
        .get(0);
    let distinct: i64 = client
        .query_one("SELECT count(DISTINCT event_id) FROM analytics_events", &[])
        .await?
        .get(0);
    anyhow::ensure!(
        rows as u64 == result.events_accepted && distinct == rows,
        "stored {rows} ({distinct} distinct) of {} accepted",
        result.events_accepted
    );
    let per_daemon: Vec<(String, f64, f64)> = daemons
        .iter()
        .map(|(name, d)| {
            let pid = d.child.id();
            let cpu = cpu_seconds(pid).unwrap_or(0.0) / (accepted / 1e6);
            (name.clone(), peak_rss_mib(pid).unwrap_or(0.0), cpu)
        })
        .collect();
    drop(daemons);
    drop(writers);
    drop(gateway);
    drop(maintenance);

    let own_streams = args.writers * 2;
    let (raw_rate, insert_rate, fair) = if args.no_baselines {
        (None, None, Vec::new())
    } else {
        eprintln!("Baselines on the same rows...");
        let events = read_back(&client).await?;
        let raw_db = TestDb::migrated().await;
        let raw = baseline::raw_copy(&raw_db.client().await, &events).await?;
        let fair = baseline::fair_limits(&events, &args.fair_streams, 1000).await?;
        let ins_db = TestDb::migrated().await;
        let ins = baseline::multi_row_insert(&ins_db.client().await, &events).await?;
        let rate = |d: Duration| events.len() as f64 / d.as_secs_f64();
        (
            Some(rate(raw)),
            Some(rate(ins)),
            fair.into_iter()
                .map(|(n, d)| (n, rate(d)))
                .collect::<Vec<_>>(),
        )
    };
    let fair_same = fair.iter().find(|f| f.0 == own_streams).map(|f| f.1);
    let fair_best = fair
        .iter()
        .map(|f| f.1)
        .fold(None, |m: Option<f64>, r| Some(m.map_or(r, |m| m.max(r))));

    let accepted_rate = accepted / result.elapsed.as_secs_f64();
    let stored_rate = accepted / stored_secs;
    let f = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.0}"));
    print_table(
        &["figure", "value"],
        &[
            vec![
                "events accepted".into(),
                format!("{}", result.events_accepted),
            ],
            vec!["accepted events/s".into(), format!("{accepted_rate:.0}")],
            vec![
                "stored events/s (first send to last commit)".into(),
                format!("{stored_rate:.0}"),
            ],
            vec![
                "raw binary COPY of the same rows, rows/s".into(),
                f(raw_rate),
            ],
            vec![
                format!(
                    "fair limit: {own_streams} raw COPY streams, a commit every 1000 rows, rows/s"
                ),
                f(fair_same),
            ],
            vec![
                format!(
                    "best fair limit ({}), rows/s",
                    fair.iter()
                        .map(|(n, r)| format!("{n} streams {r:.0}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                f(fair_best),
            ],
            vec![
                "multi-row INSERT (1000 rows) of the same rows, rows/s".into(),
                f(insert_rate),
            ],
            vec![
                "drain (events stored after the load stopped / the time they took), events/s"
                    .into(),
                format!("{drain_rate:.0}"),
            ],
            vec![
                "stored / raw COPY".into(),
                raw_rate.map_or("-".into(), |r| format!("{:.2}", stored_rate / r)),
            ],
            vec![
                "drain / fair limit with the writers' streams (target >= 0.8)".into(),
                fair_same.map_or("-".into(), |r| format!("{:.2}", drain_rate / r)),
            ],
            vec![
                "drain / multi-row INSERT (target >= 1.3)".into(),
                insert_rate.map_or("-".into(), |r| format!("{:.2}", drain_rate / r)),
            ],
            vec![
                "end-to-end latency p50 / p99 / max (s, bucket bounds)".into(),
                format!("{p50} / {p99} / {max_latency:.3}"),
            ],
            vec![
                "HTTP p50 / p99 (ms)".into(),
                format!(
                    "{:.2} / {:.2}",
                    result.p(50.0).as_secs_f64() * 1e3,
                    result.p(99.0).as_secs_f64() * 1e3
                ),
            ],
        ],
    );
    // Memory over the run: the largest RSS in the first and in the last fifth of the load, to
    // show whether it stays flat; and the largest queue lag seen.
    let load_samples: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.t <= result.elapsed.as_secs_f64())
        .collect();
    let fifth = (load_samples.len() / 5).max(1);
    let window_max = |w: &[&Sample], i: usize| {
        w.iter()
            .map(|s| s.rss_mib.get(i).copied().unwrap_or(0.0))
            .fold(0.0, f64::max)
    };
    let head = &load_samples[..fifth.min(load_samples.len())];
    let tail = &load_samples[load_samples.len().saturating_sub(fifth)..];
    print_table(
        &[
            "daemon",
            "peak RSS MiB",
            "RSS MiB, first fifth",
            "RSS MiB, last fifth",
            "CPU s per million events",
        ],
        &per_daemon
            .iter()
            .enumerate()
            .map(|(i, (n, r, c))| {
                vec![
                    n.clone(),
                    format!("{r:.1}"),
                    format!("{:.1}", window_max(head, i)),
                    format!("{:.1}", window_max(tail, i)),
                    format!("{c:.2}"),
                ]
            })
            .collect::<Vec<_>>(),
    );
    let max_lag = load_samples.iter().map(|s| s.lag).fold(0.0, f64::max);
    println!("largest queue lag during the load: {max_lag:.0} events");
    let doc = serde_json::json!({
        "seconds": args.seconds,
        "writers": args.writers,
        "connections": args.connections,
        "batch": args.batch,
        "rate": args.rate,
        "events_accepted": result.events_accepted,
        "accepted_per_sec": accepted_rate,
        "stored_per_sec": stored_rate,
        "raw_copy_per_sec": raw_rate,
        "multi_row_insert_per_sec": insert_rate,
        "drain_per_sec": drain_rate,
        "fair_limit_per_sec": fair.iter().map(|(n, r)| serde_json::json!({"streams": n, "commit_rows": 1000, "rows_per_sec": r})).collect::<Vec<_>>(),
        "latency_p50_s": p50,
        "latency_p99_s": p99,
        "latency_max_s": max_latency,
        "http_p99_ms": result.p(99.0).as_secs_f64() * 1e3,
        "max_queue_lag": max_lag,
        "daemons": per_daemon.iter().map(|(n, r, c)| serde_json::json!({"daemon": n, "peak_rss_mib": r, "cpu_s_per_million": c})).collect::<Vec<_>>(),
        "samples": samples,
    });
    if let Some(dir) = std::path::Path::new(&args.json).parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&args.json, serde_json::to_string_pretty(&doc)?)?;
    chart(&args.chart, &samples)?;
    eprintln!("Wrote {} and {}.", args.json, args.chart);
    testkit::redis_cleanup("redis://127.0.0.1:6379/", &prefix).await;
    Ok(())
}

async fn read_back(client: &tokio_postgres::Client) -> anyhow::Result<Vec<QueuedEvent>> {
    let rows = client
        .query(
            "SELECT event_id, app_id, event_name, occurred_at, received_at, user_id, session_id, metadata::text \
             FROM analytics_events",
            &[],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| QueuedEvent {
            event_id: r.get(0),
            app_id: r.get(1),
            event_name: r.get(2),
            occurred_at_us: r
                .get::<_, chrono::DateTime<chrono::Utc>>(3)
                .timestamp_micros(),
            received_at_us: r
                .get::<_, chrono::DateTime<chrono::Utc>>(4)
                .timestamp_micros(),
            user_id: r.get(5),
            session_id: r.get(6),
            metadata: r.get(7),
            client_id: false,
        })
        .collect())
}

/// Throughput (accepted and stored events/s) and end-to-end latency (p50, p99 of each second)
/// over time, as SVG.
/// An axis label: a whole number with thousands separators (`1,250,000`).
fn thousands(v: f64) -> String {
    use num_format::{Locale, ToFormattedString};
    (v.round() as i64).to_formatted_string(&Locale::en)
}

fn chart(path: &str, samples: &[Sample]) -> anyhow::Result<()> {
    use plotters::prelude::*;
    let mut thr: Vec<(f64, f64, f64)> = Vec::new();
    let mut lat: Vec<(f64, f64, f64)> = Vec::new();
    for w in samples.windows(2) {
        let dt = (w[1].t - w[0].t).max(1e-3);
        thr.push((
            w[1].t,
            (w[1].accepted - w[0].accepted) / dt,
            (w[1].written - w[0].written) / dt,
        ));
        let d = delta(&w[0].buckets, &w[1].buckets);
        if let (Some(a), Some(b)) = (quantile(&d, 0.5), quantile(&d, 0.99)) {
            if a.is_finite() && b.is_finite() {
                lat.push((w[1].t, a * 1000.0, b * 1000.0));
            }
        }
    }
    let t_max = samples.last().map_or(1.0, |s| s.t).max(1.0);
    let y_max = thr.iter().map(|(_, a, b)| a.max(*b)).fold(1.0, f64::max) * 1.1;
    let l_max = lat.iter().map(|(_, _, b)| *b).fold(1.0, f64::max) * 1.1;
    let root = SVGBackend::new(path, (900, 700)).into_drawing_area();
    root.fill(&WHITE)?;
    let (top, bottom) = root.split_vertically(360);
    let mut c = ChartBuilder::on(&top)
        .caption("Throughput (events/s)", ("sans-serif", 20))
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..t_max, 0.0..y_max)?;
    c.configure_mesh()
        .x_desc("seconds")
        .y_label_formatter(&|v| thousands(*v))
        .draw()?;
    c.draw_series(LineSeries::new(thr.iter().map(|(t, a, _)| (*t, *a)), &BLUE))?
        .label("accepted")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE));
    c.draw_series(LineSeries::new(thr.iter().map(|(t, _, s)| (*t, *s)), &RED))?
        .label("stored")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RED));
    c.configure_series_labels().border_style(BLACK).draw()?;
    let mut c = ChartBuilder::on(&bottom)
        .caption(
            "End-to-end latency, receive to commit (ms, per second)",
            ("sans-serif", 20),
        )
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..t_max, 0.0..l_max)?;
    c.configure_mesh()
        .x_desc("seconds")
        .y_label_formatter(&|v| thousands(*v))
        .draw()?;
    c.draw_series(LineSeries::new(
        lat.iter().map(|(t, p, _)| (*t, *p)),
        &GREEN,
    ))?
    .label("p50")
    .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], GREEN));
    c.draw_series(LineSeries::new(
        lat.iter().map(|(t, _, p)| (*t, *p)),
        &MAGENTA,
    ))?
    .label("p99")
    .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], MAGENTA));
    c.configure_series_labels().border_style(BLACK).draw()?;
    root.present()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn axis_labels_carry_thousands_separators() {
        assert_eq!(thousands(1_250_000.4), "1,250,000");
        assert_eq!(thousands(999.0), "999");
        assert_eq!(thousands(12_000.0), "12,000");
    }

    const TEXT: &str = "sluice_events_written_total 120\n\
        sluice_end_to_end_latency_seconds_bucket{le=\"0.1\"} 50\n\
        sluice_end_to_end_latency_seconds_bucket{le=\"0.25\"} 99\n\
        sluice_end_to_end_latency_seconds_bucket{le=\"+Inf\"} 100\n\
        sluice_events_written_total_extra 7\n";

    #[test]
    fn metrics_are_read_by_exact_name_and_summed() {
        assert_eq!(metric(TEXT, "sluice_events_written_total"), 120.0);
        let two = format!("{TEXT}{TEXT}");
        assert_eq!(metric(&two, "sluice_events_written_total"), 240.0);
    }

    #[test]
    fn histogram_quantiles_are_bucket_bounds() {
        let b = buckets(&format!("{TEXT}{TEXT}"));
        assert_eq!(b, vec![(0.1, 100.0), (0.25, 198.0), (f64::INFINITY, 200.0)]);
        assert_eq!(quantile(&b, 0.5), Some(0.1));
        assert_eq!(quantile(&b, 0.99), Some(0.25));
        assert_eq!(quantile(&[], 0.5), None);
        let d = delta(&buckets(TEXT), &b);
        assert_eq!(d, vec![(0.1, 50.0), (0.25, 99.0), (f64::INFINITY, 100.0)]);
    }
}
