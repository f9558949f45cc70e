//! The benchmark's database: one app's history loaded server-side (or reused from a `--keep`
//! run), emptied of a run's load afterwards, and the queries that check a user's rows.

use std::time::Instant;

use chrono::{DateTime, Utc};
use ingest_gateway::apps;
use maintenance_worker::jobs::Job;
use serde::Serialize;
use shared::schema::partitions::{self, Month};
use tokio_postgres::Client;

use crate::{Args, REDIS};

/// What a reusable database holds, kept as its comment.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct Loaded {
    pub history: i64,
    pub users: i64,
    pub app_id: String,
    /// The start of the month after the history: partitions from this month on hold only load.
    pub history_end: DateTime<Utc>,
    pub load_seconds: f64,
}

/// The database, loaded or reused; returns what it holds.
pub async fn prepare(admin: &Client, args: &Args) -> anyhow::Result<Loaded> {
    let db = &args.db;
    if args.reuse {
        if let Some(l) = reusable(admin, args).await? {
            eprintln!(
                "Reusing {db}: {} events of {} (loaded in {:.0} s).",
                l.history, l.app_id, l.load_seconds
            );
            let c = testkit::connect(db).await;
            // A database migrated by another build (a migration edited since) is loaded anew.
            match migrate(&c).await {
                Ok(()) => {
                    reset_load(&c, &l, db).await?;
                    return Ok(l);
                }
                Err(e) => eprintln!("Cannot reuse {db} ({e}); loading it anew."),
            }
        } else {
            eprintln!("No reusable {db} with this history; loading it.");
        }
    }
    testkit::recreate_database(admin, db).await?;
    let c = testkit::connect(db).await;
    migrate(&c).await?;
    let loaded = load_history(&c, args).await?;
    let comment = serde_json::to_string(&loaded)?.replace('\'', "''");
    admin
        .batch_execute(&format!("COMMENT ON DATABASE {db} IS '{comment}'"))
        .await?;
    Ok(loaded)
}

pub async fn reusable(admin: &Client, args: &Args) -> anyhow::Result<Option<Loaded>> {
    let comment: Option<String> = admin
        .query_opt(
            "SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = $1",
            &[&args.db],
        )
        .await?
        .and_then(|r| r.get(0));
    Ok(comment
        .and_then(|c| serde_json::from_str::<Loaded>(&c).ok())
        .filter(|l| l.history == args.history && l.users == args.users))
}

pub use bench::db::{migrate, pool};

pub async fn run_job(db: &shared::db::Db, job: Job) -> anyhow::Result<()> {
    bench::db::run_job(db, job).await.map(|_| ())
}

/// History rows `lo+1..=hi` of `app`: ten event names, users from a pool of `users`, sessions of
/// six hours per user, times spread over `[from, from + span)` by a hash of the row number.
pub fn history_sql(lo: i64, hi: i64, users: i64, from: DateTime<Utc>, span: i64) -> String {
    format!(
        "INSERT INTO analytics_events \
           (event_id, app_id, event_name, occurred_at, received_at, user_id, session_id, metadata) \
         SELECT gen_random_uuid(), $1, \
                (ARRAY['page_view','page_view','page_view','click','click','scroll','search', \
                       'signup','purchase','share'])[1 + (i * 7919) % 10], t, t, \
                'hist_user_' || u, \
                'hist_sess_' || u || '_' || (extract(epoch FROM t)::bigint / 21600), \
                jsonb_build_object('path', '/products/' || (i % 500)) \
           FROM (SELECT i, mod(abs(hashint8(i)::bigint), {users}) AS u, \
                        timestamptz '{from}' + \
                        mod(mod(hashint8extended(i, 7), {span}) + {span}, {span}) * interval '1 second' AS t \
                   FROM generate_series({lo}::bigint + 1, {hi}::bigint) i) s",
        from = from.to_rfc3339()
    )
}

/// Loads the history through the summary trigger, a million rows a statement, folding after
/// each; then builds the maintenance worker's indexes, vacuums and analyzes, so the daemons start
/// on a database in its steady state.
pub async fn load_history(c: &Client, args: &Args) -> anyhow::Result<Loaded> {
    let db = pool(&args.db)?;
    let app = apps::create_app(&db, "privacy-bench").await?;
    let now = Utc::now();
    let history_end = Month::of(now).start();
    // Two days inside the retention floor, so no event is near the gateway's limit.
    let from = partitions::retention_floor(now, 12) + chrono::Duration::days(2);
    let span = (history_end - from).num_seconds();
    c.batch_execute("SET statement_timeout = 0").await?;
    let started = Instant::now();
    let mut done = 0;
    while done < args.history {
        let to = (done + 1_000_000).min(args.history);
        eprintln!(
            "History {done}..{to} of {} ({:.0} s)",
            args.history,
            started.elapsed().as_secs_f64()
        );
        c.execute(
            &history_sql(done, to, args.users, from, span),
            &[&app.app_id],
        )
        .await?;
        run_job(&db, Job::Views).await?;
        done = to;
    }
    eprintln!(
        "Indexes, VACUUM, ANALYZE ({:.0} s)...",
        started.elapsed().as_secs_f64()
    );
    run_job(&db, Job::Partitions).await?;
    c.batch_execute("VACUUM (ANALYZE)").await?;
    let load_seconds = started.elapsed().as_secs_f64();
    eprintln!("Loaded {} events in {load_seconds:.0} s.", args.history);
    Ok(Loaded {
        history: args.history,
        users: args.users,
        app_id: app.app_id,
        history_end,
        load_seconds,
    })
}

/// Empties the database of the benchmark's load: the partitions from the history's end on (only
/// load lands there), their summary rows and the writers' bookkeeping. History and erasures stay.
pub async fn reset_load(c: &Client, l: &Loaded, prefix: &str) -> anyhow::Result<()> {
    let first = Month::of(l.history_end);
    for m in partitions::existing(c).await? {
        if m >= first {
            c.batch_execute(&format!("TRUNCATE {}", m.partition_name()))
                .await?;
        }
    }
    let day = l.history_end.date_naive();
    for table in [
        "daily_analytics_summary",
        "summary_members",
        "summary_pending",
        "summary_dirty",
    ] {
        c.execute(&format!("DELETE FROM {table} WHERE day >= $1"), &[&day])
            .await?;
    }
    c.batch_execute("TRUNCATE entry_ledger, event_dedupe, dead_letters, events_quarantine")
        .await?;
    testkit::redis_cleanup(REDIS, prefix).await;
    Ok(())
}

/// Rows of `user` left: events (found by the user index), summary members of the user and of
/// their sessions.
pub async fn left_behind(c: &Client, app: &str, user: &str) -> anyhow::Result<i64> {
    let events = user_events(c, app, user).await?.0;
    let sessions = format!("{}\\_%", user.replace("hist_user_", "hist_sess_"));
    let members: i64 = c
        .query_one(
            "SELECT count(*) FROM summary_members WHERE app_id = $1 \
             AND ((kind = 'u' AND member = $2) OR (kind = 's' AND member LIKE $3))",
            &[&app, &user, &sessions],
        )
        .await?
        .get(0);
    Ok(events + members)
}

/// The user's events and the days they fall on (the days whose summary an erasure changes).
pub async fn user_events(c: &Client, app: &str, user: &str) -> anyhow::Result<(i64, i64)> {
    let r = c
        .query_one(
            "SELECT count(*), count(DISTINCT (occurred_at AT TIME ZONE 'UTC')::date) \
               FROM analytics_events \
              WHERE hashtextextended(app_id || chr(31) || user_id, 0) \
                    = hashtextextended($1::text || chr(31) || $2::text, 0) \
                AND user_id IS NOT NULL AND app_id = $1 AND user_id = $2",
            &[&app, &user],
        )
        .await?;
    Ok((r.get(0), r.get(1)))
}
