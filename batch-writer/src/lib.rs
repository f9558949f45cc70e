//! The batch writer: drains the event streams through one consumer group and writes the events
//! into `analytics_events` with binary COPY, exactly once.
//!
//! - [`cli`]: the command line and the `dead-letter` commands.
//! - [`config`]: environment to [`WriterConfig`].
//! - [`reader`]: XREADGROUP / XAUTOCLAIM on one shard, raw reply parsing.
//! - [`pipeline`]: readers → batcher → writers → acknowledgement; retries and splitting.
//! - [`store`]: one batch into PostgreSQL: dedupe keys, COPY, quarantine, in one transaction.
//! - [`rows`]: row encoding (pure).
//! - [`bookkeeping`]: the pipeline's number and the queue's low-water mark.
//! - [`dead_letter`]: the dead-letter table, `dead-letter list` and `replay`.

pub mod bookkeeping;
pub mod cli;
pub mod config;
pub mod dead_letter;
pub mod pending;
pub mod pipeline;
pub mod reader;
pub mod rows;
pub mod store;

use std::sync::Arc;
use std::time::Duration;

use shared::daemon::{self, Ops};
use shared::metrics::{Daemon, PoolName};
use shared::tasks::Tasks;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use config::WriterConfig;

/// Connects to the queue's Redis, retrying until it answers or `shutdown`. Refuses an evicting
/// Redis: it can drop the stream and its consumer group.
pub async fn connect_redis(
    config: &WriterConfig,
    shutdown: &CancellationToken,
) -> anyhow::Result<Option<shared::redis_conn::RedisConn>> {
    let mut backoff = shared::retry::Backoff::standard();
    loop {
        match shared::redis_conn::connect(&config.redis.url, Duration::from_secs(5)).await {
            Ok(mut conn) => {
                match shared::redis_conn::eviction_policy(&mut conn).await {
                    Ok(Some(p)) if p != "noeviction" => anyhow::bail!(
                        "the queue's Redis has maxmemory-policy {p}; it must be noeviction, or it can drop the stream and lose events"
                    ),
                    Ok(None) => tracing::warn!("Cannot check the queue's Redis eviction policy (CONFIG GET refused); make sure it is noeviction."),
                    _ => {}
                }
                return Ok(Some(conn));
            }
            Err(e) => tracing::warn!(error = %e, "Cannot reach the queue's Redis; retrying."),
        }
        if !backoff.wait(shutdown).await {
            return Ok(None);
        }
    }
}

/// This pipeline's number (see [`bookkeeping::register`]), retrying until PostgreSQL answers or
/// `shutdown`.
async fn register(db: &shared::db::Db, prefix: &str, shutdown: &CancellationToken) -> Option<u16> {
    let mut backoff = shared::retry::Backoff::standard();
    loop {
        match bookkeeping::register(db, prefix).await {
            Ok(id) => return Some(id),
            Err(e) => tracing::warn!(error = %e, "Cannot register the stream prefix; retrying."),
        }
        if !backoff.wait(shutdown).await {
            return None;
        }
    }
}

/// Runs the writer until `shutdown` is cancelled, then finishes the batch in hand.
pub async fn run(
    config: WriterConfig,
    ops_listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let startup = daemon::Startup::default();
    let chores = CancellationToken::new();
    let tasks = Tasks::new(chores.clone());
    let ops = Ops::start(
        Daemon::Writer,
        ops_listener,
        startup.ready_check(),
        shutdown.clone(),
        &tasks,
    );
    let Some(ctx) = start(config, &startup, &tasks, shutdown).await? else {
        chores.cancel();
        ops.stop().await;
        return Ok(());
    };
    pipeline::run(ctx, &tasks).await;
    chores.cancel();
    tracing::info!("Batch writer stopped.");
    ops.stop().await;
    Ok(())
}

/// Opens the write pool (waiting, not ready, while PostgreSQL refuses), connects to the queue
/// and registers the pipeline; `None` when `shutdown` came first.
async fn start(
    config: WriterConfig,
    startup: &daemon::Startup,
    tasks: &Tasks,
    shutdown: CancellationToken,
) -> anyhow::Result<Option<Arc<pipeline::Ctx>>> {
    let db = daemon::pool(&config.db, PoolName::Write)?;
    if !daemon::connect(&db, startup, &shutdown).await? {
        return Ok(None);
    }
    startup.started(daemon::pool_ready(db.clone()));
    daemon::spawn_upkeep(&db, tasks);
    let Some(redis) = connect_redis(&config, &shutdown).await? else {
        return Ok(None);
    };
    let Some(pipeline) = register(&db, &config.stream_prefix, &shutdown).await else {
        return Ok(None);
    };
    tracing::info!(consumer = %config.consumer, shards = config.stream_shards, pipeline, "Batch writer running.");
    let store = store::Store::new(db);
    let ctx = pipeline::Ctx::new(config, pipeline, store, redis, shutdown);
    Ok(Some(Arc::new(ctx)))
}
