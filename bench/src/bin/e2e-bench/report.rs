//! The run's figures: the table of rates and ratios, each daemon's memory and CPU, the largest
//! queue lag, and the JSON document.

use bench::load::LoadResult;
use bench::print_table;

use crate::baselines::Baselines;
use crate::sampler::Sample;
use crate::Args;

/// What the run measured.
pub struct Figures {
    pub result: LoadResult,
    /// From the first send to the last commit.
    pub stored_secs: f64,
    /// Events stored after the load stopped over the time they took.
    pub drain_rate: f64,
    /// End-to-end latency p50, p99 (bucket bounds) and max, seconds.
    pub latency: (f64, f64, f64),
    pub baselines: Baselines,
    /// Per daemon: name, peak RSS MiB, CPU seconds per million events.
    pub per_daemon: Vec<(String, f64, f64)>,
    pub samples: Vec<Sample>,
}

impl Figures {
    fn accepted_rate(&self) -> f64 {
        self.result.events_accepted as f64 / self.result.elapsed.as_secs_f64()
    }

    fn stored_rate(&self) -> f64 {
        self.result.events_accepted as f64 / self.stored_secs
    }

    /// The samples taken while the load ran.
    fn load_samples(&self) -> Vec<&Sample> {
        self.samples
            .iter()
            .filter(|s| s.t <= self.result.elapsed.as_secs_f64())
            .collect()
    }

    fn max_lag(&self) -> f64 {
        self.load_samples()
            .iter()
            .map(|s| s.lag)
            .fold(0.0, f64::max)
    }
}

/// Prints the figures, the daemons' table and the largest queue lag.
pub fn print(args: &Args, fig: &Figures) {
    print_table(&["figure", "value"], &rows(args, fig));
    print_daemons(fig);
    println!(
        "largest queue lag during the load: {:.0} events",
        fig.max_lag()
    );
}

fn rows(args: &Args, fig: &Figures) -> Vec<Vec<String>> {
    let own_streams = args.writers * 2;
    let b = &fig.baselines;
    let (raw_rate, insert_rate) = (b.raw, b.insert);
    let (fair_same, fair_best) = (b.fair_with(own_streams), b.fair_best());
    let (stored_rate, drain_rate) = (fig.stored_rate(), fig.drain_rate);
    let (p50, p99, max_latency) = fig.latency;
    let result = &fig.result;
    let f = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.0}"));
    vec![
        vec![
            "events accepted".into(),
            format!("{}", result.events_accepted),
        ],
        vec![
            "accepted events/s".into(),
            format!("{:.0}", fig.accepted_rate()),
        ],
        vec![
            "stored events/s (first send to last commit)".into(),
            format!("{stored_rate:.0}"),
        ],
        vec![
            "raw binary COPY of the same rows, rows/s".into(),
            f(raw_rate),
        ],
        vec![
            format!("fair limit: {own_streams} raw COPY streams, a commit every 1000 rows, rows/s"),
            f(fair_same),
        ],
        vec![
            format!(
                "best fair limit ({}), rows/s",
                b.fair
                    .iter()
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
            "drain (events stored after the load stopped / the time they took), events/s".into(),
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
    ]
}

/// Memory over the run: the largest RSS in the first and in the last fifth of the load, to show
/// whether it stays flat; beside each daemon's peak and CPU.
fn print_daemons(fig: &Figures) {
    let load_samples = fig.load_samples();
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
        &fig.per_daemon
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
}

/// The JSON document of the run.
pub fn json(args: &Args, fig: &Figures) -> serde_json::Value {
    let result = &fig.result;
    let (p50, p99, max_latency) = fig.latency;
    serde_json::json!({
        "seconds": args.seconds,
        "writers": args.writers,
        "connections": args.connections,
        "batch": args.batch,
        "rate": args.rate,
        "events_accepted": result.events_accepted,
        "accepted_per_sec": fig.accepted_rate(),
        "stored_per_sec": fig.stored_rate(),
        "raw_copy_per_sec": fig.baselines.raw,
        "multi_row_insert_per_sec": fig.baselines.insert,
        "drain_per_sec": fig.drain_rate,
        "fair_limit_per_sec": fig.baselines.fair.iter().map(|(n, r)| serde_json::json!({"streams": n, "commit_rows": 1000, "rows_per_sec": r})).collect::<Vec<_>>(),
        "latency_p50_s": p50,
        "latency_p99_s": p99,
        "latency_max_s": max_latency,
        "http_p99_ms": result.p(99.0).as_secs_f64() * 1e3,
        "max_queue_lag": fig.max_lag(),
        "daemons": fig.per_daemon.iter().map(|(n, r, c)| serde_json::json!({"daemon": n, "peak_rss_mib": r, "cpu_s_per_million": c})).collect::<Vec<_>>(),
        "samples": fig.samples,
    })
}
