//! Reading: one task per shard claims idle entries and reads new ones, and hands the batcher only
//! the entries not already in flight in this process.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use shared::metrics;
use shared::retry::Backoff;
use tokio::sync::mpsc;

use super::Ctx;
use crate::reader::{Entry, Reader};

/// Entries (shard, id) between their reader and the end of their batch's processing in this
/// process. A claim may hand back an entry this process still holds (idle only because
/// PostgreSQL is slow): it is not taken twice.
#[derive(Debug, Default)]
pub struct InFlight(Mutex<HashSet<(u16, String)>>);

impl InFlight {
    fn lock(&self) -> MutexGuard<'_, HashSet<(u16, String)>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Keeps the entries of `got` that are not in flight yet, and marks them in flight.
    pub fn admit(&self, got: &mut Vec<Entry>) {
        let mut set = self.lock();
        got.retain(|e| set.insert((e.shard, e.id.clone())));
    }

    /// Takes `entries` out of flight when the returned guard drops, however their processing
    /// ends.
    pub fn release_on_drop<'a>(&'a self, entries: &[Entry]) -> Release<'a> {
        Release {
            set: self,
            entries: entries.iter().map(|e| (e.shard, e.id.clone())).collect(),
        }
    }
}

/// See [`InFlight::release_on_drop`].
pub struct Release<'a> {
    set: &'a InFlight,
    entries: Vec<(u16, String)>,
}

impl Drop for Release<'_> {
    fn drop(&mut self) {
        let mut set = self.set.lock();
        for e in &self.entries {
            set.remove(e);
        }
    }
}

fn read_count(batch_size: usize) -> usize {
    (batch_size / 4).clamp(1, 500)
}

/// Claims idle entries (every `CLAIM_IDLE_MS` / 2) and reads new ones from one shard, until
/// shutdown; reconnects with backoff.
pub(super) async fn read_loop(ctx: Arc<Ctx>, shard: u16, tx: mpsc::Sender<Entry>) {
    let mut source = ShardSource::new(&ctx, shard);
    while !ctx.shutdown.is_cancelled() {
        let Some(mut got) = source.next().await else {
            continue;
        };
        ctx.inflight.admit(&mut got);
        for entry in got {
            if tx.send(entry).await.is_err() {
                return;
            }
        }
    }
}

/// One shard's reader, its connection kept across reads and dropped after a failure.
struct ShardSource<'c> {
    ctx: &'c Ctx,
    shard: u16,
    reader: Option<Reader>,
    backoff: Backoff,
    claim_every: Duration,
    last_claim: Option<Instant>,
}

impl<'c> ShardSource<'c> {
    fn new(ctx: &'c Ctx, shard: u16) -> Self {
        let claim_idle = ctx.config.claim_idle;
        Self {
            ctx,
            shard,
            reader: None,
            backoff: Backoff::standard(),
            claim_every: (claim_idle / 2).clamp(Duration::from_millis(50), Duration::from_secs(5)),
            last_claim: None,
        }
    }

    /// Idle entries claimed when a claim is due, else new ones; `None` after a failure (the
    /// connection is dropped, and the next call reconnects).
    async fn next(&mut self) -> Option<Vec<Entry>> {
        self.connect().await?;
        let mut got = Vec::new();
        if self
            .last_claim
            .is_none_or(|t| t.elapsed() >= self.claim_every)
        {
            self.last_claim = Some(Instant::now());
            got = self.claim().await?;
        }
        if got.is_empty() {
            got = self.read_new().await?;
        }
        Some(got)
    }

    /// Connects unless connected; `None`, after a backoff, when Redis cannot be reached.
    async fn connect(&mut self) -> Option<()> {
        if self.reader.is_some() {
            return Some(());
        }
        let cfg = &self.ctx.config;
        let (shard, block) = (self.shard, Duration::from_millis(500));
        let stream = self.ctx.keys.stream(shard);
        match Reader::connect(&cfg.redis.url, shard, stream, cfg.consumer.clone(), block).await {
            Ok(r) => {
                self.backoff.reset();
                self.reader = Some(r);
                Some(())
            }
            Err(e) => {
                tracing::warn!(error = %e, shard, "Cannot reach the queue's Redis; retrying.");
                self.ctx.backoff(&mut self.backoff).await;
                None
            }
        }
    }

    async fn claim(&mut self) -> Option<Vec<Entry>> {
        let shard = self.shard;
        let claimed = self
            .reader
            .as_mut()?
            .claim(self.ctx.config.claim_idle, 100)
            .await;
        match claimed {
            Ok(claimed) => {
                if !claimed.is_empty() {
                    metrics::claimed(claimed.len() as u64);
                    tracing::info!(count = claimed.len(), shard, "Claimed idle entries.");
                }
                Some(claimed)
            }
            Err(e) => {
                tracing::warn!(error = %e, shard, "Claim failed; reconnecting.");
                self.reader = None;
                None
            }
        }
    }

    async fn read_new(&mut self) -> Option<Vec<Entry>> {
        let count = read_count(self.ctx.config.batch_size);
        let read = self.reader.as_mut()?.read_new(count).await;
        match read {
            Ok(entries) => Some(entries),
            Err(e) => {
                tracing::warn!(error = %e, shard = self.shard, "Read failed; reconnecting.");
                self.reader = None;
                self.ctx.backoff(&mut self.backoff).await;
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: &str) -> Entry {
        Entry {
            shard: 1,
            id: id.into(),
            deliveries: 1,
            declared: 0,
            content: Ok(Vec::new()),
        }
    }

    #[test]
    fn an_entry_in_flight_is_admitted_once_until_its_batch_ends() {
        let inflight = InFlight::default();
        let mut got = vec![entry("1-0"), entry("1-1")];
        inflight.admit(&mut got);
        assert_eq!(got.len(), 2);
        // Claimed back while still in hand: not taken twice.
        let mut again = vec![entry("1-1"), entry("1-2")];
        inflight.admit(&mut again);
        assert_eq!(
            again.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(),
            ["1-2"]
        );
        {
            let _release = inflight.release_on_drop(&got);
        }
        let mut later = vec![entry("1-0"), entry("1-1"), entry("1-2")];
        inflight.admit(&mut later);
        assert_eq!(
            later.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(),
            ["1-0", "1-1"],
            "released entries come back; 1-2 is still in flight"
        );
    }
}
