//! The writer's pipeline: one reader task per shard feeds entries to the batcher, which closes a
//! batch at `BATCH_SIZE` events or `BATCH_LINGER_MS` after its first entry; writer tasks (more
//! than one, so decoding and reading overlap with COPY) write each batch, then acknowledge it.
//!
//! Nothing is acknowledged before it is committed (or dead-lettered). A batch that cannot be
//! written for a transient reason is retried with backoff while its entries stay pending; if the
//! process must stop first, the entries stay pending and another writer claims them.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use shared::metrics;
use shared::queue::{self, Keys, QueuedEvent};
use shared::redis_conn::RedisConn;
use shared::retry::Backoff;
use tokio::sync::{mpsc, Mutex};
use tokio_util::sync::CancellationToken;

use shared::tasks::Tasks;

use crate::bookkeeping;
use crate::config::WriterConfig;
use crate::dead_letter;
use crate::reader::{Entry, Reader};
use crate::store::{EntryInfo, Item, Mode, Store, WriteError, Written};

/// A group of entries written in one transaction (or, after a data error, in parts).
#[derive(Debug)]
pub struct Batch {
    pub entries: Vec<Entry>,
    pub events: usize,
    pub opened: Instant,
}

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
    /// Entries (shard, id) between their reader and their acknowledgement in this process. A
    /// claim may hand back an entry this process still holds (idle only because PostgreSQL is
    /// slow): it is not taken twice.
    inflight: std::sync::Mutex<HashSet<(u16, String)>>,
}

/// Takes a batch's entries off [`Ctx`]'s in-flight set when its processing ends, however it ends.
struct InflightGuard<'a> {
    ctx: &'a Ctx,
    entries: Vec<(u16, String)>,
}

impl Drop for InflightGuard<'_> {
    fn drop(&mut self) {
        let mut set = self.ctx.inflight.lock().unwrap_or_else(|e| e.into_inner());
        for e in &self.entries {
            set.remove(e);
        }
    }
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
            inflight: std::sync::Mutex::new(HashSet::new()),
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
    let mut readers = Vec::new();
    for shard in 0..ctx.keys.shards() {
        readers.push(work.spawn(
            "stream_reader",
            read_loop(ctx.clone(), shard, entry_tx.clone()),
        ));
    }
    drop(entry_tx);
    let batcher = work.spawn(
        "batcher",
        batcher(
            entry_rx,
            batch_tx,
            ctx.config.batch_size,
            ctx.config.batch_linger,
        ),
    );
    let batch_rx = Arc::new(Mutex::new(batch_rx));
    let writers: Vec<_> = (0..ctx.config.writers)
        .map(|_| {
            let ctx = ctx.clone();
            let rx = batch_rx.clone();
            work.spawn("batch_writer", async move {
                loop {
                    let next = rx.lock().await.recv().await;
                    match next {
                        Some(batch) => process(&ctx, batch).await,
                        None => return,
                    }
                }
            })
        })
        .collect();
    spawn_chores(&ctx, tasks);
    for r in readers {
        let _ = r.await;
    }
    let _ = batcher.await;
    for w in writers {
        let _ = w.await;
    }
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

fn read_count(batch_size: usize) -> usize {
    (batch_size / 4).clamp(1, 500)
}

async fn read_loop(ctx: Arc<Ctx>, shard: u16, tx: mpsc::Sender<Entry>) {
    let cfg = &ctx.config;
    let claim_every = (cfg.claim_idle / 2).clamp(Duration::from_millis(50), Duration::from_secs(5));
    let block = Duration::from_millis(500);
    let mut backoff = Backoff::standard();
    let mut reader: Option<Reader> = None;
    let mut last_claim: Option<Instant> = None;
    while !ctx.shutdown.is_cancelled() {
        let r = match reader.as_mut() {
            Some(r) => r,
            None => {
                match Reader::connect(
                    &cfg.redis.url,
                    shard,
                    ctx.keys.stream(shard),
                    cfg.consumer.clone(),
                    block,
                )
                .await
                {
                    Ok(r) => {
                        backoff.reset();
                        reader.insert(r)
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, shard, "Cannot reach the queue's Redis; retrying.");
                        ctx.backoff(&mut backoff).await;
                        continue;
                    }
                }
            }
        };
        let mut got = Vec::new();
        if last_claim.is_none_or(|t| t.elapsed() >= claim_every) {
            last_claim = Some(Instant::now());
            match r.claim(cfg.claim_idle, 100).await {
                Ok(claimed) => {
                    if !claimed.is_empty() {
                        metrics::claimed(claimed.len() as u64);
                        tracing::info!(count = claimed.len(), shard, "Claimed idle entries.");
                    }
                    got = claimed;
                }
                Err(e) => {
                    tracing::warn!(error = %e, shard, "Claim failed; reconnecting.");
                    reader = None;
                    continue;
                }
            }
        }
        if got.is_empty() {
            match r.read_new(read_count(cfg.batch_size)).await {
                Ok(entries) => got = entries,
                Err(e) => {
                    tracing::warn!(error = %e, shard, "Read failed; reconnecting.");
                    reader = None;
                    ctx.backoff(&mut backoff).await;
                    continue;
                }
            }
        }
        {
            let mut set = ctx.inflight.lock().unwrap_or_else(|e| e.into_inner());
            got.retain(|e| set.insert((e.shard, e.id.clone())));
        }
        for entry in got {
            if tx.send(entry).await.is_err() {
                return;
            }
        }
    }
}

/// Groups entries into batches of at most `size` events, closed `linger` after their first entry.
pub async fn batcher(
    mut rx: mpsc::Receiver<Entry>,
    tx: mpsc::Sender<Batch>,
    size: usize,
    linger: Duration,
) {
    let mut current: Option<Batch> = None;
    loop {
        let deadline = current.as_ref().map(|b| b.opened + linger);
        let next = match deadline {
            Some(at) => tokio::select! {
                e = rx.recv() => e,
                _ = tokio::time::sleep_until(at.into()) => {
                    if let Some(b) = current.take() {
                        if tx.send(b).await.is_err() { return; }
                    }
                    continue;
                }
            },
            None => rx.recv().await,
        };
        let Some(entry) = next else {
            if let Some(b) = current.take() {
                let _ = tx.send(b).await;
            }
            return;
        };
        let n = entry.event_count();
        if current.as_ref().is_some_and(|b| b.events + n > size) {
            if let Some(b) = current.take() {
                if tx.send(b).await.is_err() {
                    return;
                }
            }
        }
        let b = current.get_or_insert_with(|| Batch {
            entries: Vec::new(),
            events: 0,
            opened: Instant::now(),
        });
        b.entries.push(entry);
        b.events += n;
        if b.events >= size {
            if let Some(b) = current.take() {
                if tx.send(b).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// Writes one batch, dead-letters what must be, acknowledges what is done.
pub async fn process(ctx: &Ctx, batch: Batch) {
    let _inflight = InflightGuard {
        ctx,
        entries: batch
            .entries
            .iter()
            .map(|e| (e.shard, e.id.clone()))
            .collect(),
    };
    let started = Instant::now();
    let mut done: Vec<bool> = vec![true; batch.entries.len()];
    let mut events: Vec<(usize, &QueuedEvent)> = Vec::with_capacity(batch.events);
    for (i, entry) in batch.entries.iter().enumerate() {
        match &entry.content {
            Ok(list) => events.extend(list.iter().map(|e| (i, e))),
            Err((raw, error)) => {
                // It will never decode: no point in retrying it.
                let stream = ctx.keys.stream(entry.shard);
                done[i] = retry(ctx, || {
                    dead_letter::store_raw(
                        ctx.store.db(),
                        raw,
                        error,
                        &stream,
                        &entry.id,
                        entry.deliveries,
                    )
                })
                .await;
                if done[i] {
                    metrics::dead_lettered(entry.declared.max(1) as u64);
                }
            }
        }
    }
    let mut infos: Vec<EntryInfo> = batch
        .entries
        .iter()
        .map(
            |e| match queue::entry_ledger_key(ctx.pipeline, e.shard, &e.id) {
                Some(key) => EntryInfo {
                    key,
                    suspect: e.deliveries > 1,
                },
                None => EntryInfo {
                    key: uuid::Uuid::now_v7(),
                    suspect: true,
                },
            },
        )
        .collect();
    let Some((written, failures)) = write_all(ctx, &events, &mut infos).await else {
        metrics::batch("abandoned");
        tracing::warn!(
            entries = batch.entries.len(),
            "Stopping with a batch unwritten; its entries stay pending for another writer."
        );
        return;
    };
    for (entry_idx, event, error) in failures {
        let entry = &batch.entries[entry_idx];
        if entry.deliveries >= ctx.config.max_deliveries {
            let stream = ctx.keys.stream(entry.shard);
            let key = infos[entry_idx].key;
            let stored = retry(ctx, || {
                dead_letter::store_event(
                    ctx.store.db(),
                    event,
                    &error,
                    &stream,
                    (&entry.id, key),
                    entry.deliveries,
                )
            })
            .await;
            if stored {
                metrics::dead_lettered(1);
                tracing::warn!(event_id = %event.event_id, deliveries = entry.deliveries, error = %error, "Event dead-lettered.");
            } else {
                done[entry_idx] = false;
            }
        } else {
            tracing::info!(event_id = %event.event_id, deliveries = entry.deliveries, error = %error, "Event refused; its entry stays pending for a retry.");
            done[entry_idx] = false;
        }
    }
    let elapsed = started.elapsed();
    metrics::batch_written(batch.events, elapsed);
    metrics::copy_rate(written.stored + written.quarantined, elapsed);
    metrics::events_written(written.stored + written.quarantined);
    let now_us = chrono::Utc::now().timestamp_micros();
    for (i, e) in &events {
        if done[*i] {
            metrics::end_to_end_latency(Duration::from_micros(
                (now_us - e.received_at_us).max(0) as u64
            ));
        }
    }
    let to_ack: Vec<&Entry> = batch
        .entries
        .iter()
        .zip(&done)
        .filter(|(_, d)| **d)
        .map(|(e, _)| e)
        .collect();
    ack(ctx, &to_ack).await;
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

type Failure<'a> = (usize, &'a QueuedEvent, String);

/// Writes the events: whole in one transaction when possible; after a data error, split down to
/// single events to isolate the bad ones. A transient error is retried with backoff, and makes
/// every entry suspect (the failed commit may have gone through). `None` when transient errors
/// outlasted the shutdown grace period.
async fn write_all<'a>(
    ctx: &Ctx,
    events: &[Item<'a>],
    infos: &mut [EntryInfo],
) -> Option<(Written, Vec<Failure<'a>>)> {
    let mut total = Written::default();
    let mut failures = Vec::new();
    let mut backoff = Backoff::standard();
    loop {
        match ctx.store.write(events, infos, Mode::Whole).await {
            Ok(w) => {
                metrics::batch("written");
                return Some((w, failures));
            }
            Err(WriteError::Transient(e)) => {
                if ctx.give_up() {
                    return None;
                }
                tracing::warn!(error = %e, "Batch write failed; retrying with backoff.");
                infos.iter_mut().for_each(|i| i.suspect = true);
                ctx.backoff(&mut backoff).await;
            }
            Err(WriteError::Data(e)) => {
                metrics::batch("split");
                tracing::info!(error = %e, events = events.len(), "Batch refused; splitting it to find the bad events.");
                break;
            }
        }
    }
    let mut stack: Vec<std::ops::Range<usize>> = Vec::new();
    stack.push(0..events.len());
    while let Some(range) = stack.pop() {
        if range.is_empty() {
            continue;
        }
        let slice = &events[range.clone()];
        let mut backoff = Backoff::standard();
        loop {
            match ctx.store.write(slice, infos, Mode::Split).await {
                Ok(w) => {
                    total += w;
                    break;
                }
                Err(WriteError::Transient(e)) => {
                    if ctx.give_up() {
                        return None;
                    }
                    tracing::warn!(error = %e, "Write failed; retrying with backoff.");
                    ctx.backoff(&mut backoff).await;
                }
                Err(WriteError::Data(e)) if slice.len() == 1 => {
                    failures.push((slice[0].0, slice[0].1, e.to_string()));
                    break;
                }
                Err(WriteError::Data(_)) => {
                    let mid = range.start + slice.len() / 2;
                    stack.push(mid..range.end);
                    stack.push(range.start..mid);
                    break;
                }
            }
        }
    }
    Some((total, failures))
}

/// Acknowledges, deletes and uncounts entries, per shard, retrying until done or shutdown gives up
/// (an entry left unacknowledged is redelivered, and dedupe absorbs it).
async fn ack(ctx: &Ctx, entries: &[&Entry]) {
    let mut by_shard: HashMap<u16, Vec<&Entry>> = HashMap::new();
    for e in entries {
        by_shard.entry(e.shard).or_default().push(e);
    }
    for (shard, list) in by_shard {
        let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(5));
        loop {
            let mut inv = ctx.ack.key(ctx.keys.stream(shard));
            inv.key(ctx.keys.depth(shard)).arg(queue::GROUP);
            for e in &list {
                inv.arg(&e.id).arg(e.declared);
            }
            let mut conn = ctx.redis.clone();
            match inv.invoke_async::<i64>(&mut conn).await {
                Ok(_) => break,
                Err(e) if ctx.give_up() => {
                    tracing::warn!(error = %e, "Cannot acknowledge at shutdown; entries will be redelivered and deduplicated.");
                    break;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "Acknowledgement failed; retrying.");
                    ctx.backoff(&mut backoff).await;
                }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(n: usize) -> Entry {
        let e = QueuedEvent {
            event_id: uuid::Uuid::now_v7(),
            app_id: "a".into(),
            event_name: "e".into(),
            occurred_at_us: 0,
            received_at_us: 0,
            user_id: None,
            session_id: None,
            metadata: None,
            client_id: false,
        };
        Entry {
            shard: 0,
            id: "1-0".into(),
            deliveries: 1,
            declared: n,
            content: Ok(vec![e; n]),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn batches_close_by_size() {
        let (etx, erx) = mpsc::channel(100);
        let (btx, mut brx) = mpsc::channel(100);
        tokio::spawn(batcher(erx, btx, 10, Duration::from_secs(3600)));
        for _ in 0..7 {
            etx.send(entry(3)).await.expect("send");
        }
        // 3+3+3 = 9, the fourth would pass 10: the batch closes at 9, then 9 again.
        assert_eq!(brx.recv().await.map(|b| b.events), Some(9));
        assert_eq!(brx.recv().await.map(|b| b.events), Some(9));
        etx.send(entry(10)).await.expect("send");
        assert_eq!(brx.recv().await.map(|b| b.events), Some(3));
        assert_eq!(
            brx.recv().await.map(|b| b.events),
            Some(10),
            "a full entry closes at once"
        );
        drop(etx);
        assert!(brx.recv().await.is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn batches_close_after_the_linger_time() {
        let (etx, erx) = mpsc::channel(100);
        let (btx, mut brx) = mpsc::channel(100);
        tokio::spawn(batcher(erx, btx, 1000, Duration::from_millis(200)));
        let started = tokio::time::Instant::now();
        etx.send(entry(5)).await.expect("send");
        tokio::time::sleep(Duration::from_millis(150)).await;
        etx.send(entry(5)).await.expect("send");
        let b = brx.recv().await.expect("batch");
        assert_eq!(b.events, 10);
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_millis(200) && waited < Duration::from_millis(250),
            "{waited:?}"
        );
        // The channel closing flushes what is open.
        etx.send(entry(1)).await.expect("send");
        drop(etx);
        assert_eq!(brx.recv().await.map(|b| b.events), Some(1));
    }
}
