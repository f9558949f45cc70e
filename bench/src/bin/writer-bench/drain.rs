//! One drain: the events queued as the gateway would, then stored by the batch writer (run in
//! this process) into a fresh database with or without the features an A/B run measures, timed
//! until the queue is empty.

use std::time::{Duration, Instant};

use bench::spent::{measure, Spent};
use shared::config::Env;
use shared::queue::{self, Keys, QueuedEvent};
use testkit::TestDb;

use crate::Args;

/// What a drain's database has of the features an A/B run measures.
#[derive(Debug, Clone, Copy)]
pub struct Schema {
    pub user_index: bool,
    pub summary_pending: bool,
}

/// Makes `summary_pending` discard every row inserted into it (a row trigger returning NULL).
const DISCARD_PENDING: &str = "
CREATE FUNCTION bench_discard() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NULL; END $$;
CREATE TRIGGER bench_discard BEFORE INSERT ON summary_pending
  FOR EACH ROW EXECUTE FUNCTION bench_discard();";

/// Queues `events`, drains them with the writer into a fresh database (with `schema`'s
/// features; through the transaction pooler on port `pooler` when given) and checks that every
/// one was stored; returns the drain's time.
pub async fn drain_fresh(
    events: &[QueuedEvent],
    args: &Args,
    schema: Schema,
    pooler: Option<u16>,
) -> anyhow::Result<Spent> {
    let user_index = schema.user_index;
    let prefix = format!("bench-{}", uuid::Uuid::new_v4().simple());
    let keys = Keys::new(&prefix, args.shards);
    fill(&keys, events).await?;
    let w_db = TestDb::migrated().await;
    let client = w_db.client().await;
    if !user_index {
        // A partitioned index: dropping the parent's drops every partition's.
        client
            .batch_execute("DROP INDEX analytics_events_user_idx")
            .await?;
    }
    if !schema.summary_pending {
        client.batch_execute(DISCARD_PENDING).await?;
    }
    let indexed = user_indexed_partitions(&client).await?;
    anyhow::ensure!(
        (indexed > 0) == user_index,
        "the user index is on {indexed} partitions (wanted it {})",
        if user_index { "on" } else { "off" }
    );
    // The drain alone: the streams are filled and the database made before.
    let took = measure(drain(&w_db, &prefix, args, pooler)).await;
    cleanup(&prefix).await;
    let took = took?;
    let stored: i64 = client
        .query_one("SELECT count(*) FROM analytics_events", &[])
        .await?
        .get(0);
    anyhow::ensure!(
        stored as usize == events.len(),
        "writer stored {stored} of {}",
        events.len()
    );
    let pending: i64 = client
        .query_one(
            "SELECT coalesce(sum(events), 0)::bigint FROM summary_pending",
            &[],
        )
        .await?
        .get(0);
    let want = if schema.summary_pending { stored } else { 0 };
    anyhow::ensure!(
        pending == want,
        "summary_pending counts {pending} events (wanted {want})"
    );
    Ok(took)
}

/// Partitions whose user index is attached to the parent's `analytics_events_user_idx` (0 when
/// the parent's is gone).
async fn user_indexed_partitions(client: &tokio_postgres::Client) -> anyhow::Result<i64> {
    Ok(client
        .query_one(
            "SELECT count(*) FROM pg_inherits \
             WHERE inhparent = to_regclass('analytics_events_user_idx')",
            &[],
        )
        .await?
        .get(0))
}

async fn conn() -> anyhow::Result<redis::aio::MultiplexedConnection> {
    Ok(redis::Client::open("redis://127.0.0.1:6379/")?
        .get_multiplexed_async_connection()
        .await?)
}

/// Queues the events as the gateway would (entries of 100), 16 pushes in flight.
async fn fill(keys: &Keys, events: &[QueuedEvent]) -> anyhow::Result<()> {
    let conn = conn().await?;
    let script = redis::Script::new(queue::PUSH_SCRIPT);
    let chunks: Vec<_> = events.chunks(queue::EVENTS_PER_ENTRY).enumerate().collect();
    let mut stream = futures::stream::iter(chunks.into_iter().map(|(i, chunk)| {
        let mut conn = conn.clone();
        let script = script.clone();
        let shard = (i % keys.shards() as usize) as u16;
        async move {
            let payload = queue::encode(chunk)?;
            let _: Vec<String> =
                queue::push_invocation(&script, keys, shard, None, [(chunk.len(), &payload[..])])
                    .invoke_async(&mut conn)
                    .await?;
            anyhow::Ok(())
        }
    }))
    .buffer_unordered(16);
    use futures::StreamExt;
    while let Some(r) = stream.next().await {
        r?;
    }
    Ok(())
}

async fn drain(
    db: &TestDb,
    prefix: &str,
    args: &Args,
    pooler: Option<u16>,
) -> anyhow::Result<Duration> {
    let mut vars = db.env_vars();
    vars.retain(|(k, _)| !k.starts_with("DB_POOL"));
    if let Some(port) = pooler {
        let direct = testkit::admin_env().1.to_string();
        vars.retain(|(k, _)| k != "DB_PORT");
        vars.extend(
            [
                ("DB_PORT", port.to_string()),
                ("DB_POOLER", "transaction".into()),
                ("DB_DIRECT_HOST", "127.0.0.1".into()),
                ("DB_DIRECT_PORT", direct),
            ]
            .map(|(k, v)| (k.to_owned(), v)),
        );
    }
    let extra = [
        ("DB_POOL_MAX", (args.writers + 2).to_string()),
        ("DB_POOL_MIN", args.writers.to_string()),
        ("REDIS_URL", "redis://127.0.0.1:6379/".into()),
        ("STREAM_PREFIX", prefix.to_owned()),
        ("STREAM_SHARDS", args.shards.to_string()),
        ("BATCH_SIZE", args.batch_size.to_string()),
        ("WRITER_CONCURRENCY", args.writers.to_string()),
        ("LOG_LEVEL", "warn".into()),
    ];
    vars.extend(extra.iter().map(|(k, v)| (k.to_string(), v.clone())));
    let config = batch_writer::WriterConfig::from_env(&Env::from_pairs(vars))?;
    let keys = Keys::new(prefix, args.shards);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let shutdown = tokio_util::sync::CancellationToken::new();
    let started = Instant::now();
    let task = tokio::spawn(batch_writer::run(config, listener, shutdown.clone()));
    let mut conn = conn().await?;
    loop {
        tokio::time::sleep(Duration::from_millis(50)).await;
        if testkit::queued_events(&mut conn, &keys).await? == 0 {
            break;
        }
        if task.is_finished() {
            anyhow::bail!("the writer stopped early");
        }
    }
    let elapsed = started.elapsed();
    shutdown.cancel();
    task.await??;
    Ok(elapsed)
}

async fn cleanup(prefix: &str) {
    testkit::redis_cleanup("redis://127.0.0.1:6379/", prefix).await
}
