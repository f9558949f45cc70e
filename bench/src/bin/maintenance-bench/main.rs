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
use maintenance_worker::jobs::Job;

mod load;

use load::{fresh, history_sql, load_bulk, summarize_all};

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

async fn fold(db: &shared::db::Db) -> anyhow::Result<(Duration, serde_json::Value)> {
    bench::db::run_job(db, Job::Views).await
}

/// The database's blocks read into shared buffers (from the OS) and found there so far, once
/// every pool connection has flushed its pending statistics (`pg_stat_force_next_flush`: on
/// going idle, before it answers).
async fn blocks(db: &shared::db::Db, c: &tokio_postgres::Client) -> anyhow::Result<(i64, i64)> {
    let open = db.status().size;
    let conns = futures::future::try_join_all((0..open).map(|_| db.get("flush stats"))).await?;
    for k in &conns {
        k.batch_execute("SELECT pg_stat_force_next_flush()").await?;
    }
    drop(conns);
    let r = c
        .query_one(
            "SELECT blks_read, blks_hit FROM pg_stat_database WHERE datname = current_database()",
            &[],
        )
        .await?;
    Ok((r.get(0), r.get(1)))
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
            let before = blocks(&db, &c).await?;
            let (took, mut detail) = fold(&db).await?;
            let after = blocks(&db, &c).await?;
            detail["blocks_read"] = (after.0 - before.0).into();
            detail["blocks_hit"] = (after.1 - before.1).into();
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
            "blocks read",
            "blocks hit",
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
                    d["blocks_read"].to_string(),
                    d["blocks_hit"].to_string(),
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
