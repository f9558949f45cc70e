//! Loading the benchmark's events: the history in bulk (trigger off) and summarized from
//! scratch, and the fresh events of one measurement.

use std::time::Instant;

use maintenance_worker::jobs::views;

use crate::{APPS, DB};

/// Loads history rows `from+1..=to` in statements of a million, on two connections at once,
/// with the summary trigger off (`session_replication_role = replica`: the benchmark is a
/// superuser), then summarizes everything from scratch ([`summarize_all`]): the summary the
/// trigger and folds would have built, exact.
pub async fn load_bulk(from: i64, to: i64) -> anyhow::Result<()> {
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
pub async fn summarize_all() -> anyhow::Result<()> {
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

/// History rows `from+1..=to`: 50 apps, 10 event names, days 7 to 330 back, users and sessions
/// from pools, so each (app, day, event) has repeated ids as real traffic does. Each statement
/// inserts in (app, time) order, so the indexes take it in one sweep instead of at random (past
/// 50M rows, random inserts are read-bound here: 130 s a million instead of about 30).
pub fn history_sql(from: i64, to: i64) -> String {
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
pub async fn fresh(c: &tokio_postgres::Client, n: i64, tag: &str) -> anyhow::Result<()> {
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
