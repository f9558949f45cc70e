//! `--index-ab`, `--pending-ab` and `--pgbouncer-ab`: drains with and without a feature,
//! alternating, and the ratio of their rates.

use bench::print_table;

use crate::drain::{drain_fresh, Schema};
use crate::Args;

/// A feature measured by an A/B run.
#[derive(Debug, Clone, Copy)]
pub enum Feature {
    UserIndex,
    SummaryPending,
    /// The writer's pool through a PgBouncer in transaction pooling mode (`DB_POOLER`).
    PgBouncer,
}

impl Feature {
    fn name(self) -> &'static str {
        match self {
            Feature::UserIndex => "user index",
            Feature::SummaryPending => "summary pending rows",
            Feature::PgBouncer => "PgBouncer (transaction pooling)",
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
            Feature::PgBouncer => Schema {
                user_index: true,
                summary_pending: true,
            },
        }
    }
}

/// `--index-ab`, `--pending-ab`, `--pgbouncer-ab`: drains with and without the feature,
/// alternating (with, without, without, with, ...), and prints each drain and the median ratio.
pub async fn ab(
    events: &[shared::queue::QueuedEvent],
    args: &Args,
    feature: Feature,
) -> anyhow::Result<()> {
    let n = events.len();
    // As many server connections as the writer's pool: the pooler adds no slot of its own.
    let bouncer = match feature {
        Feature::PgBouncer => {
            let pg_port = testkit::admin_env().1;
            Some(testkit::PgBouncer::start(pg_port, args.writers + 2, "").await?)
        }
        _ => None,
    };
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
            let route = bouncer.as_ref().filter(|_| with).map(|b| b.port);
            let took = drain_fresh(events, args, feature.schema(with), route)
                .await?
                .took;
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
