//! The writer's pipeline: one reader task per shard feeds entries to the batcher, which closes a
//! batch at `BATCH_SIZE` events or `BATCH_LINGER_MS` after its first entry; writer tasks (more
//! than one, so decoding and reading overlap with COPY) write each batch, then acknowledge it.
//!
//! Nothing is acknowledged before it is committed (or dead-lettered). A batch that cannot be
//! written for a transient reason is retried with backoff while its entries stay pending; if the
//! process must stop first, the entries stay pending and another writer claims them.
//!
//! The rooms: [`read`] (readers and the in-flight set), [`batch`] (the batcher), [`write`] (a
//! batch's transaction, bisection, dead letters), [`ack`]; this module holds what they share
//! ([`Ctx`]), starts them, and runs the chores.

pub mod ack;
pub mod batch;
pub mod read;
pub mod write;

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use shared::metrics;
use shared::queue::{self, Keys};
use shared::redis_conn::RedisConn;
use shared::retry::Backoff;
use tokio::sync::{mpsc, Mutex};
use tokio_util::sync::CancellationToken;

use shared::tasks::Tasks;

use crate::bookkeeping;
use crate::config::WriterConfig;
use crate::reader::Entry;
use crate::store::Store;
use batch::Batch;
use read::InFlight;

/// What the tasks share.
pub struct Ctx {
    pub config: WriterConfig,
    /// This pipeline's number in `stream_pipelines`, part of its entries' ledger keys.
    pub pipeline: u16,
    pub keys: Keys,
    pub store: Store,
    pub redis: RedisConn,
    pub ack: redis::Script,
    reap: redis::Script,
    pub shutdown: CancellationToken,
    stop_seen: OnceLock<Instant>,
    inflight: InFlight,
}

impl Ctx {
    pub fn new(
        config: WriterConfig,
        pipeline: u16,
        store: Store,
        redis: RedisConn,
        shutdown: CancellationToken,
    ) -> Self {
        Self {
            pipeline,
            keys: Keys::new(&config.stream_prefix, config.stream_shards),
            config,
            store,
            redis,
            ack: redis::Script::new(queue::ACK_SCRIPT),
            reap: redis::Script::new(queue::REAP_SCRIPT),
            shutdown,
            stop_seen: OnceLock::new(),
            inflight: InFlight::default(),
        }
    }

    /// True once shutdown has lasted longer than the grace period: stop retrying and leave the
    /// entries pending for another writer.
    fn give_up(&self) -> bool {
        if !self.shutdown.is_cancelled() {
            return false;
        }
        self.stop_seen.get_or_init(Instant::now).elapsed() > self.config.shutdown_grace
    }

    /// Waits before a retry; during a shutdown, never past the end of its grace period (the
    /// batch in hand is retried until then, not abandoned at the stop).
    async fn backoff(&self, backoff: &mut Backoff) {
        let deadline = self.shutdown.is_cancelled().then(|| {
            let seen = *self.stop_seen.get_or_init(Instant::now);
            tokio::time::Instant::from_std(seen + self.config.shutdown_grace)
        });
        backoff.sleep_at_most(deadline).await;
    }
}

/// Runs readers, batcher and writers until shutdown, then drains what is in hand. The chores
/// (lag gauge, consumer reaping, low-water mark) run under `tasks`, which stop with the daemon.
pub async fn run(ctx: Arc<Ctx>, tasks: &Tasks) {
    // Readers, batcher and writers end on shutdown; before it, any of them ending is a death.
    let work = tasks.with_stop(ctx.shutdown.clone());
    let (entry_tx, entry_rx) = mpsc::channel::<Entry>(256);
    let (batch_tx, batch_rx) = mpsc::channel::<Batch>(ctx.config.writers);
    let readers: Vec<_> = (0..ctx.keys.shards())
        .map(|shard| {
            let read = read::read_loop(ctx.clone(), shard, entry_tx.clone());
            work.spawn("stream_reader", read)
        })
        .collect();
    drop(entry_tx);
    let (size, linger) = (ctx.config.batch_size, ctx.config.batch_linger);
    let batcher = work.spawn("batcher", batch::batcher(entry_rx, batch_tx, size, linger));
    let writers = spawn_writers(&ctx, &work, batch_rx);
    spawn_chores(&ctx, tasks);
    for r in readers {
        let _ = r.await;
    }
    let _ = batcher.await;
    for w in writers {
        let _ = w.await;
    }
}

/// `WRITER_CONCURRENCY` writer tasks, each taking the batcher's next batch in turn. A task
/// acknowledges a written batch while it takes and writes its next one, so its connection does
/// not wait on Redis between transactions; it ends once its last batch is acknowledged.
fn spawn_writers(
    ctx: &Arc<Ctx>,
    work: &Tasks,
    batch_rx: mpsc::Receiver<Batch>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let batch_rx = Arc::new(Mutex::new(batch_rx));
    (0..ctx.config.writers)
        .map(|_| {
            let ctx = ctx.clone();
            let rx = batch_rx.clone();
            work.spawn("batch_writer", async move {
                let mut written = None;
                loop {
                    let ack = async {
                        if let Some(w) = written.take() {
                            write::acknowledge(&ctx, w).await;
                        }
                    };
                    let write = async {
                        let next = rx.lock().await.recv().await;
                        match next {
                            Some(batch) => Some(write::process(&ctx, batch).await),
                            None => None,
                        }
                    };
                    match tokio::join!(ack, write).1 {
                        Some(w) => written = w,
                        None => return,
                    }
                }
            })
        })
        .collect()
}

/// The lag gauge every second, consumer reaping, and the queue's low-water mark.
fn spawn_chores(ctx: &Arc<Ctx>, tasks: &Tasks) {
    let stop = tasks.stop_token();
    let c = ctx.clone();
    tasks.spawn(
        "queue_lag",
        shared::shutdown::every(Duration::from_secs(1), stop.clone(), move || {
            publish_lag(c.clone())
        }),
    );
    let c = ctx.clone();
    let every = (ctx.config.consumer_idle_delete / 4).min(Duration::from_secs(60));
    tasks.spawn(
        "reap_consumers",
        shared::shutdown::every(every, stop.clone(), move || reap_consumers(c.clone())),
    );
    let c = ctx.clone();
    tasks.spawn(
        "queue_low_water",
        shared::shutdown::every(bookkeeping::LOW_WATER_EVERY, stop, move || {
            let c = c.clone();
            async move {
                let mut conn = c.redis.clone();
                bookkeeping::low_water_chore(c.store.db(), &mut conn, &c.keys, c.pipeline).await
            }
        }),
    );
}

/// Deletes the group's dead consumers (nothing pending, idle past `CONSUMER_IDLE_DELETE_MS`) on
/// every shard, so the group's consumer list does not grow with every writer ever started.
async fn reap_consumers(ctx: Arc<Ctx>) {
    for shard in 0..ctx.keys.shards() {
        let mut conn = ctx.redis.clone();
        let r: redis::RedisResult<i64> = ctx
            .reap
            .key(ctx.keys.stream(shard))
            .arg(queue::GROUP)
            .arg(ctx.config.consumer_idle_delete.as_millis() as u64)
            .arg(&ctx.config.consumer)
            .invoke_async(&mut conn)
            .await;
        match r {
            Ok(n) if n > 0 => {
                tracing::info!(
                    shard,
                    deleted = n,
                    "Deleted idle consumers with nothing pending."
                )
            }
            Ok(_) => {}
            Err(e) => tracing::debug!(error = %e, shard, "Cannot reap idle consumers."),
        }
    }
}

/// Retries a database step on transient errors until it succeeds or shutdown gives up.
async fn retry<F, Fut>(ctx: &Ctx, mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), shared::db::DbError>>,
{
    let mut backoff = Backoff::standard();
    loop {
        match f().await {
            Ok(()) => return true,
            Err(e) if ctx.give_up() => {
                tracing::warn!(error = %e, "Giving up at shutdown.");
                return false;
            }
            Err(e) => {
                tracing::warn!(error = %e, "Database step failed; retrying.");
                ctx.backoff(&mut backoff).await;
            }
        }
    }
}

/// Publishes `sluice_queue_lag_events` (events queued and not yet written).
async fn publish_lag(ctx: Arc<Ctx>) {
    let mut conn = ctx.redis.clone();
    let r: redis::RedisResult<Vec<Option<i64>>> = redis::cmd("MGET")
        .arg(ctx.keys.all_depths())
        .query_async(&mut conn)
        .await;
    if let Ok(values) = r {
        metrics::queue_lag(values.into_iter().flatten().map(|v| v.max(0) as u64).sum());
    }
}
