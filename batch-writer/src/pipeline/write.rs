//! Writing: one batch in one transaction when it can be; after a data error, bisected down to
//! the refused events ([`bisect`], pure over ranges); undecodable entries and events refused
//! `MAX_DELIVERIES` times dead-lettered; then the done entries acknowledged.

use std::future::Future;
use std::ops::{AddAssign, Range};
use std::time::{Duration, Instant};

use shared::metrics;
use shared::queue::{self, QueuedEvent};
use shared::retry::Backoff;
use uuid::Uuid;

use super::batch::Batch;
use super::read::Release;
use super::{ack, retry, Ctx};
use crate::dead_letter;
use crate::reader::Entry;
use crate::store::{EntryInfo, Item, Mode, WriteError, Written};

/// An event the database refused, with its entry's index in the batch and why.
type Failure<'a> = (usize, &'a QueuedEvent, String);

/// A batch written, its entries still in flight: what [`acknowledge`] acknowledges.
pub struct ToAck<'c> {
    batch: Batch,
    /// `done[i]`: entry `i` is committed or dead-lettered.
    done: Vec<bool>,
    _release: Release<'c>,
}

/// Writes one batch and dead-letters what must be; returns the batch to acknowledge, or `None`
/// when the process stops with it unwritten (its entries stay pending for another writer).
pub async fn process(ctx: &Ctx, batch: Batch) -> Option<ToAck<'_>> {
    let release = ctx.inflight.release_on_drop(&batch.entries);
    let started = Instant::now();
    let (events, mut done) = decoded_or_dead_lettered(ctx, &batch).await;
    let mut infos = ledger_infos(ctx, &batch);
    let Some((written, failures)) = write_all(ctx, &events, &mut infos).await else {
        metrics::batch("abandoned");
        tracing::warn!(
            entries = batch.entries.len(),
            "Stopping with a batch unwritten; its entries stay pending for another writer."
        );
        return None;
    };
    settle_failures(ctx, &batch, &infos, failures, &mut done).await;
    let elapsed = started.elapsed();
    metrics::batch_written(batch.events, elapsed);
    metrics::copy_rate(written.stored + written.quarantined, elapsed);
    metrics::events_written(written.stored + written.quarantined);
    let now_us = chrono::Utc::now().timestamp_micros();
    for (_, e) in events.iter().filter(|(i, _)| done[*i]) {
        metrics::end_to_end_latency(Duration::from_micros(
            (now_us - e.received_at_us).max(0) as u64
        ));
    }
    drop(events);
    Some(ToAck {
        batch,
        done,
        _release: release,
    })
}

/// Acknowledges the done entries of a written batch, then takes its entries out of flight.
pub async fn acknowledge(ctx: &Ctx, written: ToAck<'_>) {
    let to_ack: Vec<_> = written
        .batch
        .entries
        .iter()
        .zip(&written.done)
        .filter_map(|(e, d)| d.then_some(e))
        .collect();
    ack::ack(ctx, &to_ack).await;
}

/// The batch's events, each with its entry's index; entries that will never decode are
/// dead-lettered whole (no point in retrying them). `done[i]`: entry `i` may be acknowledged
/// as far as decoding goes.
async fn decoded_or_dead_lettered<'b>(ctx: &Ctx, batch: &'b Batch) -> (Vec<Item<'b>>, Vec<bool>) {
    let mut done = vec![true; batch.entries.len()];
    let mut events: Vec<Item<'b>> = Vec::with_capacity(batch.events);
    for (i, entry) in batch.entries.iter().enumerate() {
        match &entry.content {
            Ok(list) => events.extend(list.iter().map(|e| (i, e))),
            Err((raw, error)) => {
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
    (events, done)
}

/// Each entry's ledger key (its pipeline, shard and id) and whether it may have been written
/// before (delivered more than once).
fn ledger_infos(ctx: &Ctx, batch: &Batch) -> Vec<EntryInfo> {
    batch
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
        .collect()
}

/// Refused events: dead-lettered once their entry reached `MAX_DELIVERIES`; otherwise their
/// entry stays pending (not done) for a retry.
async fn settle_failures(
    ctx: &Ctx,
    batch: &Batch,
    infos: &[EntryInfo],
    failures: Vec<Failure<'_>>,
    done: &mut [bool],
) {
    for (entry_idx, event, error) in failures {
        let entry = &batch.entries[entry_idx];
        if entry.deliveries < ctx.config.max_deliveries {
            tracing::info!(event_id = %event.event_id, deliveries = entry.deliveries, error = %error, "Event refused; its entry stays pending for a retry.");
            done[entry_idx] = false;
            continue;
        }
        if !store_dead_letter(ctx, entry, infos[entry_idx].key, event, &error).await {
            done[entry_idx] = false;
        }
    }
}

/// Stores a refused event of `entry` (ledger key `key`) as a dead letter, retrying transient
/// errors; false when shutdown gave up first.
async fn store_dead_letter(
    ctx: &Ctx,
    entry: &Entry,
    key: Uuid,
    event: &QueuedEvent,
    error: &str,
) -> bool {
    let stream = ctx.keys.stream(entry.shard);
    let stored = retry(ctx, || {
        dead_letter::store_event(
            ctx.store.db(),
            event,
            error,
            &stream,
            (&entry.id, key),
            entry.deliveries,
        )
    })
    .await;
    if stored {
        metrics::dead_lettered(1);
        tracing::warn!(event_id = %event.event_id, deliveries = entry.deliveries, error = %error, "Event dead-lettered.");
    }
    stored
}

/// What writing one range came to.
#[derive(Debug)]
pub enum Outcome<T> {
    Written(T),
    /// A data error: the range holds at least one event the database refuses.
    Refused(String),
    /// Transient errors outlasted the shutdown grace period.
    Stop,
}

/// Isolates the refused items of `0..n` by bisection: `write` is tried on the whole range, and a
/// refused range is halved until each refused item stands alone. Returns what the written ranges
/// came to and each refused item with its error; `None` as soon as `write` says stop.
pub async fn bisect<T, F, Fut>(n: usize, mut write: F) -> Option<(T, Vec<(usize, String)>)>
where
    T: Default + AddAssign,
    F: FnMut(Range<usize>) -> Fut,
    Fut: Future<Output = Outcome<T>>,
{
    let mut total = T::default();
    let mut refused = Vec::new();
    let mut stack: Vec<Range<usize>> = Vec::with_capacity(16);
    stack.push(0..n);
    while let Some(range) = stack.pop() {
        if range.is_empty() {
            continue;
        }
        match write(range.clone()).await {
            Outcome::Written(w) => total += w,
            Outcome::Stop => return None,
            Outcome::Refused(e) if range.len() == 1 => refused.push((range.start, e)),
            Outcome::Refused(_) => {
                let mid = range.start + range.len() / 2;
                stack.push(mid..range.end);
                stack.push(range.start..mid);
            }
        }
    }
    Some((total, refused))
}

/// Writes the events: whole in one transaction when possible; after a data error, bisected
/// down to single events to isolate the bad ones. A transient error is retried with backoff,
/// and makes every entry suspect (the failed commit may have gone through). `None` when
/// transient errors outlasted the shutdown grace period.
async fn write_all<'a>(
    ctx: &Ctx,
    events: &[Item<'a>],
    infos: &mut [EntryInfo],
) -> Option<(Written, Vec<Failure<'a>>)> {
    match write_whole(ctx, events, infos).await {
        Outcome::Written(w) => return Some((w, Vec::new())),
        Outcome::Stop => return None,
        Outcome::Refused(_) => {}
    }
    let infos: &[EntryInfo] = infos;
    let (total, refused) = bisect(events.len(), |range| {
        write_range(ctx, &events[range], infos)
    })
    .await?;
    let failures = refused
        .into_iter()
        .map(|(i, e)| (events[i].0, events[i].1, e))
        .collect();
    Some((total, failures))
}

/// The whole batch in one transaction, retried on transient errors (after which every entry is
/// suspect: the failed commit may have gone through).
async fn write_whole(ctx: &Ctx, events: &[Item<'_>], infos: &mut [EntryInfo]) -> Outcome<Written> {
    let mut backoff = Backoff::standard();
    loop {
        match ctx.store.write(events, infos, Mode::Whole).await {
            Ok(w) => {
                metrics::batch("written");
                return Outcome::Written(w);
            }
            Err(WriteError::Transient(e)) => {
                if ctx.give_up() {
                    return Outcome::Stop;
                }
                tracing::warn!(error = %e, "Batch write failed; retrying with backoff.");
                infos.iter_mut().for_each(|i| i.suspect = true);
                ctx.backoff(&mut backoff).await;
            }
            Err(WriteError::Data(e)) => {
                metrics::batch("split");
                tracing::info!(error = %e, events = events.len(), "Batch refused; splitting it to find the bad events.");
                return Outcome::Refused(e.to_string());
            }
        }
    }
}

/// One range of a split batch, retried on transient errors until written, refused or stopped.
async fn write_range(ctx: &Ctx, slice: &[Item<'_>], infos: &[EntryInfo]) -> Outcome<Written> {
    let mut backoff = Backoff::standard();
    loop {
        match ctx.store.write(slice, infos, Mode::Split).await {
            Ok(w) => return Outcome::Written(w),
            Err(WriteError::Transient(e)) => {
                if ctx.give_up() {
                    return Outcome::Stop;
                }
                tracing::warn!(error = %e, "Write failed; retrying with backoff.");
                ctx.backoff(&mut backoff).await;
            }
            Err(WriteError::Data(e)) => return Outcome::Refused(e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    /// A write that refuses any range holding a poisoned item, counting its attempts.
    async fn run(n: usize, poisoned: &[usize]) -> (Option<(usize, Vec<(usize, String)>)>, usize) {
        let attempts = RefCell::new(0);
        let out = bisect(n, |r: Range<usize>| {
            *attempts.borrow_mut() += 1;
            let bad = poisoned.iter().find(|p| r.contains(p)).copied();
            async move {
                match bad {
                    Some(p) => Outcome::Refused(format!("item {p}")),
                    None => Outcome::Written(r.len()),
                }
            }
        })
        .await;
        (out, attempts.into_inner())
    }

    #[tokio::test]
    async fn bisection_isolates_each_refused_item_and_writes_the_rest() {
        let (out, attempts) = run(8, &[2, 5]).await;
        let (written, refused) = out.expect("not stopped");
        assert_eq!(written, 6);
        assert_eq!(
            refused,
            vec![(2, "item 2".to_owned()), (5, "item 5".to_owned())]
        );
        // 0..8, 0..4, 0..2, 2..4, 2..3, 3..4, 4..8, 4..6, 4..5, 5..6, 6..8.
        assert_eq!(attempts, 11);
    }

    #[tokio::test]
    async fn bisection_of_nothing_or_all_bad() {
        let (out, attempts) = run(0, &[]).await;
        assert_eq!(out.map(|o| o.0), Some(0));
        assert_eq!(attempts, 0);
        let (out, _) = run(3, &[0, 1, 2]).await;
        let (written, refused) = out.expect("not stopped");
        assert_eq!(written, 0);
        assert_eq!(
            refused.iter().map(|r| r.0).collect::<Vec<_>>(),
            vec![0, 1, 2]
        );
    }

    #[tokio::test]
    async fn bisection_stops_when_told() {
        let mut calls = 0;
        let out: Option<(usize, _)> = bisect(4, |r: Range<usize>| {
            calls += 1;
            let stop = calls == 2;
            async move {
                if stop {
                    Outcome::Stop
                } else if r.len() > 1 {
                    Outcome::Refused("bad".into())
                } else {
                    Outcome::Written(1)
                }
            }
        })
        .await;
        assert!(out.is_none());
        assert_eq!(calls, 2);
    }
}
