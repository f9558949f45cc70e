//! Read API benchmark: 10,000,000 events over 3 months and 50 apps, then the p50/p99 of a
//! 30-day daily-stats query uncached (every request a new cache key) and cached, and the hit
//! ratio of a repeated dashboard load. With `--keep` the loaded database is kept for the next
//! run, since loading it is most of the time.
//!
//! `cargo build --release --bins && target/release/read-bench --events 10000000`

use std::time::{Duration, Instant};

use bench::{percentile, print_table};
use clap::Parser;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use ingest_gateway::apps::hash_key;
use testkit::{cpu_seconds, StackBuilder};

const DB: &str = "sluice_read_bench";
const APPS: usize = 50;

#[derive(Parser)]
struct Args {
    #[arg(long, default_value_t = 10_000_000)]
    events: i64,
    /// Uncached requests to time.
    #[arg(long, default_value_t = 500)]
    uncached: usize,
    /// Seconds of repeated dashboard load.
    #[arg(long, default_value_t = 20)]
    seconds: u64,
    #[arg(long, default_value_t = 16)]
    connections: usize,
    #[arg(long)]
    json: Option<String>,
    /// Keep the loaded database for the next run (it is about 2.5 GB for 10M events).
    #[arg(long)]
    keep: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    prepare(args.events).await?;
    let prefix = format!("bench-{}", uuid::Uuid::new_v4().simple());
    let gw = StackBuilder::new(testkit::db_env(DB), "redis://127.0.0.1:6379/", &prefix)
        .var("DB_POOL_MIN", "2")
        .var("DB_READ_POOL_MIN", "8")
        .start()
        .await?;
    let addr = gw.gateway_addr.clone();
    let client: Client<_, Empty<bytes::Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let today = chrono::Utc::now().date_naive();

    eprintln!("Uncached 30-day daily stats...");
    let cache = ingest_gateway::cache::Cache::new(
        shared::secret::Secret::new("redis://127.0.0.1:6379/".into()),
        &prefix,
        Duration::from_secs(5),
    );
    anyhow::ensure!(cache.connect().await, "cache Redis unreachable");
    let mut uncached = Vec::new();
    for i in 0..args.uncached {
        // The dashboard's query (the last 30 days, today included), with the cache emptied first:
        // a miss, answered by PostgreSQL from the summary (and what is not folded into it yet).
        let app = i % APPS;
        cache
            .invalidate_prefix(&format!("{}:v1:", cache.prefix()))
            .await;
        let from = today - chrono::Duration::days(29);
        let (d, cache) = get(&client, &addr, app, from, today).await?;
        anyhow::ensure!(cache == "MISS", "expected a miss");
        uncached.push(d);
    }
    uncached.sort();

    eprintln!("Repeated dashboard load ({} s)...", args.seconds);
    let started = Instant::now();
    let deadline = Duration::from_secs(args.seconds);
    let tasks: Vec<_> = (0..args.connections)
        .map(|c| {
            let (client, addr) = (client.clone(), addr.clone());
            tokio::spawn(async move {
                let mut lat = Vec::new();
                let (mut hits, mut total) = (0u64, 0u64);
                let mut i = c;
                while started.elapsed() < deadline {
                    let app = i % APPS;
                    i += 1;
                    let from = today - chrono::Duration::days(29);
                    if let Ok((d, cache)) = get(&client, &addr, app, from, today).await {
                        total += 1;
                        if cache == "HIT" {
                            hits += 1;
                            lat.push(d);
                        }
                    }
                }
                (lat, hits, total)
            })
        })
        .collect();
    let (mut cached, mut hits, mut total) = (Vec::new(), 0, 0);
    for t in tasks {
        let (l, h, n) = t.await?;
        cached.extend(l);
        hits += h;
        total += n;
    }
    cached.sort();
    let ratio = hits as f64 / total.max(1) as f64;
    let cpu = cpu_seconds(gw.running_gateway().child.id()).unwrap_or(0.0);
    let ms = |d: Duration| format!("{:.2}", d.as_secs_f64() * 1000.0);
    print_table(
        &[
            "30-day daily stats",
            "requests",
            "p50 ms",
            "p99 ms",
            "target",
        ],
        &[
            vec![
                "uncached (PostgreSQL)".into(),
                uncached.len().to_string(),
                ms(percentile(&uncached, 50.0)),
                ms(percentile(&uncached, 99.0)),
                "p99 < 100 ms".into(),
            ],
            vec![
                "cached (Redis)".into(),
                cached.len().to_string(),
                ms(percentile(&cached, 50.0)),
                ms(percentile(&cached, 99.0)),
                "p99 < 2 ms".into(),
            ],
        ],
    );
    println!(
        "hit ratio under repeated dashboard load: {:.4}% ({hits} of {total} requests in {} s; target >= 99.9%); gateway CPU {cpu:.1} s",
        ratio * 100.0,
        args.seconds
    );
    if let Some(path) = args.json {
        std::fs::write(
            path,
            serde_json::to_string_pretty(&serde_json::json!({
                "events": args.events,
                "uncached_p50_ms": percentile(&uncached, 50.0).as_secs_f64() * 1000.0,
                "uncached_p99_ms": percentile(&uncached, 99.0).as_secs_f64() * 1000.0,
                "cached_p50_ms": percentile(&cached, 50.0).as_secs_f64() * 1000.0,
                "cached_p99_ms": percentile(&cached, 99.0).as_secs_f64() * 1000.0,
                "hit_ratio": ratio,
                "requests": total,
            }))?,
        )?;
    }
    testkit::redis_cleanup("redis://127.0.0.1:6379/", &prefix).await;
    drop(gw);
    if !args.keep {
        let admin = testkit::connect("postgres").await;
        admin
            .batch_execute(&format!("DROP DATABASE IF EXISTS {DB} WITH (FORCE)"))
            .await?;
    }
    Ok(())
}

async fn get(
    client: &Client<hyper_util::client::legacy::connect::HttpConnector, Empty<bytes::Bytes>>,
    addr: &str,
    app: usize,
    from: chrono::NaiveDate,
    to: chrono::NaiveDate,
) -> anyhow::Result<(Duration, String)> {
    let req = http::Request::get(format!("http://{addr}/v1/stats/daily?from={from}&to={to}"))
        .header("authorization", format!("Bearer {}", read_key(app)))
        .body(Empty::new())?;
    let t0 = Instant::now();
    let resp = client.request(req).await?;
    anyhow::ensure!(resp.status() == 200, "status {}", resp.status());
    let cache = resp
        .headers()
        .get("x-cache")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    resp.into_body().collect().await?;
    Ok((t0.elapsed(), cache))
}

fn read_key(app: usize) -> String {
    format!("sk_read_bench_{app:02}")
}

/// Creates and loads the bench database unless it already holds `events` rows.
async fn prepare(events: i64) -> anyhow::Result<()> {
    let admin = testkit::connect("postgres").await;
    let exists = admin
        .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&DB])
        .await?
        .is_some();
    if exists {
        let c = testkit::connect(DB).await;
        let n: i64 = c
            .query_one("SELECT count(*) FROM analytics_events", &[])
            .await
            .map(|r| r.get(0))
            .unwrap_or(0);
        if n == events {
            eprintln!("Reusing {DB} ({n} events).");
            return Ok(());
        }
    }
    testkit::recreate_database(&admin, DB).await?;
    let c = testkit::connect(DB).await;
    bench::db::migrate(&c).await?;
    for app in 0..APPS {
        let id = format!("app_{app:02}");
        c.execute("INSERT INTO apps (app_id, name) VALUES ($1, $1)", &[&id])
            .await?;
        c.execute(
            "INSERT INTO api_keys (key_hash, app_id, kind, key_prefix) VALUES ($1, $2, 'read', 'bench')",
            &[&hash_key(&read_key(app)).to_vec(), &id],
        )
        .await?;
    }
    let chunk = 1_000_000i64;
    let started = Instant::now();
    let mut done = 0;
    while done < events {
        let n = chunk.min(events - done);
        eprintln!(
            "Loading events {done}..{} ({:.0} s)",
            done + n,
            started.elapsed().as_secs_f64()
        );
        c.batch_execute(&format!(
            "SET statement_timeout = 0; \
             INSERT INTO analytics_events (event_id, app_id, event_name, occurred_at, received_at, user_id, session_id, metadata) \
             SELECT gen_random_uuid(), 'app_' || lpad((i % {APPS})::text, 2, '0'), \
                    (ARRAY['page_view','page_view','page_view','page_view','click','click','scroll','search','signup','purchase'])[1 + (i * 7919) % 10], \
                    now() - (((i * 104729) % 7776000)::text || ' seconds')::interval, now(), \
                    'user_' || ((i * 31) % 10000), 'sess_' || ((i * 17) % 40000), \
                    jsonb_build_object('path', '/p/' || (i % 500), 'ab', i % 4) \
             FROM generate_series({}::bigint, {}::bigint) i",
            done + 1,
            done + n
        ))
        .await?;
        done += n;
    }
    eprintln!(
        "Folding the summary and analyzing ({:.0} s)...",
        started.elapsed().as_secs_f64()
    );
    // The summary folds what the load inserted (the maintenance worker's views job).
    let db = bench::db::pool(DB)?;
    bench::db::run_job(&db, maintenance_worker::jobs::Job::Views).await?;
    c.batch_execute("SET statement_timeout = 0; ANALYZE")
        .await?;
    eprintln!("Loaded in {:.0} s.", started.elapsed().as_secs_f64());
    Ok(())
}
