//! Summary benchmark: what one fold of `daily_analytics_summary` costs as history grows, and what
//! the read API's daily query costs for a big app.
//!
//! For each history size (default 10M then 100M events over the past ~11 months, 50 apps, loaded
//! server-side on two connections with the summary trigger off, then summarized partition by
//! partition with one sequential scan each, by the views job's own recomputation statements), `--rounds` batches of 100,000 fresh
//! events (today and three late days that already hold history) are inserted in writer-sized
//! statements of 1,000 rows and each is folded and timed; `--through-trigger` loads the history
//! through the trigger and folds as it goes instead (as production would, and much slower). Then an app with `--big-app` events today:
//! the read API's daily query (summary + unfolded rows) timed after a fold and with the last
//! `--unfolded` of its events not folded yet, beside the old live query over its day (the
//! baseline).
//!
//! `cargo build --release --bins && target/release/maintenance-bench --history 10000000,100000000`

use std::time::{Duration, Instant};

use bench::{percentile, print_table};
use clap::Parser;
use maintenance_worker::jobs::{views, Job};

const DB: &str = "sluice_maintenance_bench";
const APPS: i64 = 50;

#[derive(Parser)]
struct Args {
    /// History sizes, ascending, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "10000000,100000000")]
    history: Vec<i64>,
    /// Fresh events per measurement.
    #[arg(long, default_value_t = 100_000)]
    fresh: i64,
    /// Events today of the big app.
    #[arg(long, default_value_t = 2_000_000)]
    big_app: i64,
    /// Events of the big app left unfolded for the second read measurement (a minute of a big
    /// app's traffic is a few thousand).
    #[arg(long, default_value_t = 10_000)]
    unfolded: i64,
    /// Timed runs of the read query.
    #[arg(long, default_value_t = 200)]
    reads: usize,
    /// Fresh batches, each folded and timed, per history size (the median is compared).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Load the history through the summary trigger, folding every million (production's path;
    /// about an hour for 100M here) instead of in bulk and then recomputed.
    #[arg(long)]
    through_trigger: bool,
    /// Keep the database afterwards.
    #[arg(long)]
    keep: bool,
    /// Start from the database a `--keep` run left (its history is counted, not loaded again).
    #[arg(long)]
    reuse: bool,
}

/// Loads history rows `from+1..=to` in statements of a million, on two connections at once,
/// with the summary trigger off (`session_replication_role = replica`: the benchmark is a
/// superuser), then summarizes everything from scratch ([`summarize_all`]): the summary the
/// trigger and folds would have built, exact.
async fn load_bulk(from: i64, to: i64) -> anyhow::Result<()> {
    let started = Instant::now();
    let chunks: Vec<(i64, i64)> = (from..to)
        .step_by(1_000_000)
        .map(|a| (a, (a + 1_000_000).min(to)))
        .collect();
    let next = std::sync::atomic::AtomicUsize::new(0);
    let worker = || async {
        let c = testkit::connect(DB).await;
        c.batch_execute("SET session_replication_role = replica")
            .await?;
        loop {
            let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let Some(&(a, b)) = chunks.get(i) else {
                return anyhow::Ok(());
            };
            eprintln!(
                "History {a}..{b}, trigger off ({:.0} s)",
                started.elapsed().as_secs_f64()
            );
            c.batch_execute(&history_sql(a, b)).await?;
        }
    };
    tokio::try_join!(worker(), worker())?;
    summarize_all().await
}

/// The summary of everything in `analytics_events`, from scratch: each partition read once
/// (a sequential scan) into the views job's `sluice_day_rows`, then summarized by the job's own
/// statements ([`views::SUMMARIZE_DAY_ROWS`]).
async fn summarize_all() -> anyhow::Result<()> {
    let started = Instant::now();
    let mut c = testkit::connect(DB).await;
    c.batch_execute(
        "SET statement_timeout = 0; SET temp_buffers = '2GB'; SET work_mem = '1GB'; \
         TRUNCATE summary_members, daily_analytics_summary, summary_pending, summary_dirty",
    )
    .await?;
    let partitions: Vec<String> = c
        .query(
            "SELECT inhrelid::regclass::text FROM pg_inherits \
              WHERE inhparent = 'analytics_events'::regclass ORDER BY 1",
            &[],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    for p in partitions {
        eprintln!("Summary of {p} ({:.0} s)", started.elapsed().as_secs_f64());
        let tx = c.transaction().await?;
        tx.batch_execute(&format!(
            "CREATE TEMP TABLE sluice_day_rows ON COMMIT DROP AS \
             SELECT app_id, (occurred_at AT TIME ZONE 'UTC')::date AS day, event_name, user_id, session_id \
               FROM {p}; \
             {}",
            views::SUMMARIZE_DAY_ROWS
        ))
        .await?;
        tx.commit().await?;
    }
    c.batch_execute(
        "ANALYZE summary_members; ANALYZE daily_analytics_summary; ANALYZE analytics_events",
    )
    .await?;
    Ok(())
}

async fn fold(db: &shared::db::Db) -> anyhow::Result<(Duration, serde_json::Value)> {
    bench::db::run_job(db, Job::Views).await
}

/// History rows `from+1..=to`: 50 apps, 10 event names, days 7 to 330 back, users and sessions
/// from pools, so each (app, day, event) has repeated ids as real traffic does. Each statement
/// inserts in (app, time) order, so the indexes take it in one sweep instead of at random (past
/// 50M rows, random inserts are read-bound here: 130 s a million instead of about 30).
fn history_sql(from: i64, to: i64) -> String {
    format!(
        "SET statement_timeout = 0; \
         INSERT INTO analytics_events (event_id, app_id, event_name, occurred_at, received_at, user_id, session_id) \
         SELECT gen_random_uuid(), 'app_' || lpad((i % {APPS})::text, 2, '0'), \
                (ARRAY['page_view','page_view','page_view','click','click','scroll','search','signup','purchase','share'])[1 + (i * 7919) % 10], \
                now() - interval '7 days' - (((i * 104729) % 27993600)::text || ' seconds')::interval, now(), \
                'user_' || ((i * 31) % 3000), 'sess_' || ((i * 17) % 9000) \
         FROM generate_series({from}::bigint + 1, {to}::bigint) i ORDER BY 2, 4"
    )
}

/// The fresh events of one measurement, in statements of 1,000 rows (a writer's batch): a
/// quarter each today and 7, 30 and 90 days back, ids half from the history's pools.
async fn fresh(c: &tokio_postgres::Client, n: i64, tag: &str) -> anyhow::Result<()> {
    let mut done = 0;
    while done < n {
        let k = 1000.min(n - done);
        c.batch_execute(&format!(
            "INSERT INTO analytics_events (event_id, app_id, event_name, occurred_at, received_at, user_id, session_id) \
             SELECT gen_random_uuid(), 'app_' || lpad((i % {APPS})::text, 2, '0'), \
                    '{tag}_' || (i % 10), \
                    now() - (ARRAY[0, 7, 30, 90])[1 + i % 4] * interval '1 day' - (i % 3000) * interval '1 second', now(), \
                    'user_' || ((i * 13) % 6000), 'sess_' || ((i * 7) % 18000) \
             FROM generate_series({}::bigint, {}::bigint) i",
            done + 1,
            done + k
        ))
        .await?;
        done += k;
    }
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let admin = testkit::connect("postgres").await;
    if !args.reuse {
        testkit::recreate_database(&admin, DB).await?;
    }
    let c = testkit::connect(DB).await;
    bench::db::migrate(&c).await?;
    let db = bench::db::pool(DB)?;

    let mut rows = Vec::new();
    // A reused database: its history rows (every event but the fresh and big-app ones).
    let mut loaded: i64 = if args.reuse {
        c.query_one(
            "SELECT count(*) FROM analytics_events WHERE event_name NOT LIKE 'fresh%' AND app_id <> 'big'",
            &[],
        )
        .await?
        .get(0)
    } else {
        0
    };
    if args.reuse {
        eprintln!("Reusing {loaded} history events; summarizing them again...");
        summarize_all().await?;
    }
    let started = Instant::now();
    for &h in &args.history {
        if !args.through_trigger && loaded < h {
            load_bulk(loaded, h).await?;
            loaded = h;
        }
        while loaded < h {
            let to = (loaded + 1_000_000).min(h);
            eprintln!(
                "History {loaded}..{to} ({:.0} s)",
                started.elapsed().as_secs_f64()
            );
            c.batch_execute(&history_sql(loaded, to)).await?;
            fold(&db).await?;
            loaded = to;
        }
        eprintln!("History loaded ({:.0} s)", started.elapsed().as_secs_f64());
        c.batch_execute("SET statement_timeout = 0; ANALYZE")
            .await?;
        let size: i64 = c
            .query_one("SELECT pg_database_size(current_database())", &[])
            .await?
            .get(0);
        let members: i64 = c
            .query_one("SELECT count(*) FROM summary_members", &[])
            .await?
            .get(0);
        for round in 0..args.rounds {
            eprintln!("Fresh {} events, round {}...", args.fresh, round + 1);
            let t = Instant::now();
            fresh(&c, args.fresh, &format!("fresh{}_{round}", rows.len())).await?;
            let insert = t.elapsed();
            let (took, detail) = fold(&db).await?;
            eprintln!("{detail}");
            rows.push((h, size, members, insert, took, detail));
        }
    }

    eprintln!("Big app: {} events today...", args.big_app);
    let mut done = 0;
    while done < args.big_app {
        let k = 1000.min(args.big_app - done);
        c.batch_execute(&format!(
            "INSERT INTO analytics_events (event_id, app_id, event_name, occurred_at, received_at, user_id, session_id) \
             SELECT gen_random_uuid(), 'big', (ARRAY['page_view','page_view','click','scroll','search','signup'])[1 + i % 6], \
                    now() - (i % 36000) * interval '1 second' * 0.5, now(), \
                    'u' || ((i * 31) % 200000), 's' || ((i * 17) % 400000) \
             FROM generate_series({}::bigint, {}::bigint) i",
            done + 1,
            done + k
        ))
        .await?;
        done += k;
        if done % 200_000 == 0 {
            fold(&db).await?;
        }
    }
    fold(&db).await?;
    c.batch_execute("ANALYZE").await?;
    let today = chrono::Utc::now().date_naive();
    let from = today - chrono::Duration::days(29);
    let none: Option<String> = None;
    let time_read = |label: &'static str| {
        let c = &c;
        let none = none.clone();
        async move {
            let mut lat = Vec::new();
            for _ in 0..args.reads {
                let t = Instant::now();
                c.query(
                    ingest_gateway::stats::DAILY,
                    &[&"big", &from, &today, &none],
                )
                .await?;
                lat.push(t.elapsed());
            }
            lat.sort();
            anyhow::Ok((label, lat))
        }
    };
    let folded = time_read("30-day daily stats, all folded").await?;
    let mut done = 0;
    while done < args.unfolded {
        let k = 1000.min(args.unfolded - done);
        c.batch_execute(&format!(
            "INSERT INTO analytics_events (event_id, app_id, event_name, occurred_at, received_at, user_id, session_id) \
             SELECT gen_random_uuid(), 'big', (ARRAY['page_view','click','signup'])[1 + i % 3], now() - (i % 600) * interval '1 second', now(), \
                    'u' || ((i * 37) % 250000), 's' || ((i * 11) % 450000) \
             FROM generate_series({}::bigint, {}::bigint) i",
            done + 1,
            done + k
        ))
        .await?;
        done += k;
    }
    let pending = time_read("30-day daily stats, some not folded yet").await?;
    let mut live = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        c.query(
            "SELECT (occurred_at AT TIME ZONE 'UTC')::date, event_name, count(*), \
             count(DISTINCT user_id), count(DISTINCT session_id) FROM analytics_events \
             WHERE app_id = 'big' AND occurred_at >= $1 GROUP BY 1, 2",
            &[&today.and_hms_opt(0, 0, 0).unwrap_or_default().and_utc()],
        )
        .await?;
        live.push(t.elapsed());
    }
    live.sort();

    let s = |d: Duration| format!("{:.2}", d.as_secs_f64());
    print_table(
        &[
            "history events",
            "database size",
            "summary members",
            "insert 100k fresh (s)",
            "one fold (s)",
            "pending rows folded",
            "new ids",
        ],
        &rows
            .iter()
            .map(|(h, size, members, insert, took, d)| {
                vec![
                    h.to_string(),
                    format!("{:.1} GB", *size as f64 / 1e9),
                    members.to_string(),
                    s(*insert),
                    s(*took),
                    d["pending_rows_folded"].to_string(),
                    d["new_members"].to_string(),
                ]
            })
            .collect::<Vec<_>>(),
    );
    let median = |h: i64| {
        let mut t: Vec<Duration> = rows.iter().filter(|r| r.0 == h).map(|r| r.4).collect();
        t.sort();
        t[t.len() / 2]
    };
    if let (Some(&a), Some(&b)) = (args.history.first(), args.history.last()) {
        if a != b && args.rounds > 0 {
            println!(
                "median fold after {b} history events / after {a}: {:.2} s / {:.2} s = {:.2}x (target <= 1.2x; < 2 s)",
                median(b).as_secs_f64(),
                median(a).as_secs_f64(),
                median(b).as_secs_f64() / median(a).as_secs_f64()
            );
        }
    }
    let ms = |d: Duration| format!("{:.2}", d.as_secs_f64() * 1000.0);
    let mut read_rows: Vec<Vec<String>> = [folded, pending]
        .iter()
        .map(|(label, lat)| {
            vec![
                label.to_string(),
                ms(percentile(lat, 50.0)),
                ms(percentile(lat, 99.0)),
            ]
        })
        .collect();
    read_rows.push(vec![
        "baseline: today from the live table (old query)".into(),
        ms(percentile(&live, 50.0)),
        ms(percentile(&live, 99.0)),
    ]);
    println!(
        "big app: {} events today, the last {} of them not folded yet in the second row",
        args.big_app + args.unfolded,
        args.unfolded
    );
    print_table(&["read query, uncached", "p50 ms", "p99 ms"], &read_rows);
    drop(c);
    if !args.keep {
        admin
            .batch_execute(&format!("DROP DATABASE IF EXISTS {DB} WITH (FORCE)"))
            .await?;
    }
    Ok(())
}
