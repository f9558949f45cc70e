//! Writing events into PostgreSQL exactly once, in one transaction per call:
//! 1. lock the call's stream entries (transaction-scoped advisory locks, in key order), so two
//!    transactions holding the same entry (its stale first reader's and a claimer's) run one
//!    after the other;
//! 2. look up the entries that may have been seen before in `entry_ledger`: an entry written
//!    whole is skipped; one written in parts (a split batch) has its events checked one by one;
//! 3. record a dedupe key `(event_id, app_id)` in `event_dedupe` for each event that needs one (a
//!    client-chosen id, or an event of an entry that may have been partly written), keeping only
//!    events seen first;
//! 4. binary COPY the events into `analytics_events`, and those whose month has no partition into
//!    `events_quarantine`; binary COPY their summary pending rows (`crate::pending`; the entry
//!    locks' statement told the summary trigger to leave them to the writer);
//! 5. record the entries in `entry_ledger`: written whole, or (split batches) written in parts;
//! 6. commit.
//!
//! Architecture invariant: every transaction that commits events of an entry leaves a ledger row
//! for that entry. A first delivery is written on the fast path without per-event keys and
//! without a lookup; its ledger rows go in with the locks, in steps 1 and 5's one statement, by a
//! plain INSERT, so if any row for the entry exists (whole or parts, however the entry came to be
//! written) the statement fails and the call is retried on the slow path, which looks every entry
//! and key up first. Duplicates are rare, so the fast path is usual: its transaction is `BEGIN`,
//! the locks and ledger rows, the COPY of events (and of dedupe keys before it for client ids),
//! the COPY of pending rows, `COMMIT`, every statement from the connection's cache ([`tx`]).

mod dedupe;
mod ledger;
mod tx;

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use futures::pin_mut;
use shared::db::{Db, DbError};
use shared::queue::QueuedEvent;
use shared::schema::partitions::{self, Month};
use uuid::Uuid;

use crate::rows::{self, COPY_COLUMNS, COPY_TYPES};

pub use ledger::entry_lock_id;
pub use tx::Tx;

/// What the store knows of a stream entry.
#[derive(Debug, Clone, Copy)]
pub struct EntryInfo {
    /// See [`rows::entry_key`].
    pub key: Uuid,
    /// The entry may have been written before: it is a redelivery, or an earlier attempt's
    /// commit may have succeeded unseen.
    pub suspect: bool,
}

/// How a call covers its entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Every event of every entry named is in the call: entries go to the ledger.
    Whole,
    /// Part of a split batch: every event gets a dedupe key, entries go to the ledger as
    /// written in parts.
    Split,
}

/// What a write came to.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Written {
    pub stored: u64,
    pub quarantined: u64,
    pub duplicates: u64,
}

impl std::ops::AddAssign for Written {
    fn add_assign(&mut self, o: Self) {
        self.stored += o.stored;
        self.quarantined += o.quarantined;
        self.duplicates += o.duplicates;
    }
}

/// Why a write failed.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// Worth retrying as is: connection, server, lock or resource trouble.
    #[error("transient: {0}")]
    Transient(DbError),
    /// PostgreSQL refused the data itself (a unique violation that persists on the slow path
    /// included): split the batch to find the bad events.
    #[error("data: {0}")]
    Data(DbError),
}

/// The months that have a partition, refreshed when stale or when a write says one is missing.
struct PartitionCache {
    months: HashSet<Month>,
    /// `event_dedupe_legacy` still holds keys (they age out after the dedupe window).
    legacy_keys: bool,
    loaded: Option<Instant>,
}

pub struct Store {
    db: Db,
    partitions: Mutex<PartitionCache>,
}

const PARTITIONS_TTL: Duration = Duration::from_secs(30);

/// One event to write and the index of its entry in the `entries` slice.
pub type Item<'a> = (usize, &'a QueuedEvent);

impl Store {
    pub fn new(db: Db) -> Self {
        Self {
            db,
            partitions: Mutex::new(PartitionCache {
                months: HashSet::new(),
                legacy_keys: true,
                loaded: None,
            }),
        }
    }

    pub fn db(&self) -> &Db {
        &self.db
    }

    /// Writes `items` in one transaction, retrying the slow path or a partition refresh when
    /// needed. Data errors and transient errors are told apart for the caller.
    pub async fn write(
        &self,
        items: &[Item<'_>],
        entries: &[EntryInfo],
        mode: Mode,
    ) -> Result<Written, WriteError> {
        let mut attempt = Attempt {
            items,
            entries,
            mode,
            fast: true,
        };
        let mut refreshed = false;
        loop {
            self.refresh_partitions(false)
                .await
                .map_err(WriteError::Transient)?;
            match self.write_once(&attempt).await {
                Ok(w) => return Ok(w),
                // A ledger row or key written meanwhile or before: again, on the slow path,
                // which looks every entry and key up first. On the slow path a unique violation
                // cannot come from the bookkeeping (looked up under the entries' locks): it is the
                // data's (a quarantined event's key), and retrying would fail forever.
                Err(e) if e.sql_state() == Some("23505") && attempt.fast => attempt.fast = false,
                Err(e) if is_missing_partition(&e) && !refreshed => {
                    // A partition vanished (retention) or appeared since the cache was loaded.
                    refreshed = true;
                    self.refresh_partitions(true)
                        .await
                        .map_err(WriteError::Transient)?;
                }
                Err(e) => return Err(classify(e)),
            }
        }
    }

    async fn refresh_partitions(&self, force: bool) -> Result<(), DbError> {
        let stale = {
            let p = self.lock_partitions();
            force || p.loaded.is_none_or(|t| t.elapsed() > PARTITIONS_TTL)
        };
        if !stale {
            return Ok(());
        }
        // One transaction, so that it also holds behind a transaction pooler.
        let mut client = self.db.get("list partitions").await?;
        let tx = self.db.begin(&mut client, "list partitions").await?;
        let out = async {
            let months = partitions::existing(tx.client()).await?;
            let legacy_keys: bool = tx
                .query_one("SELECT EXISTS (SELECT 1 FROM event_dedupe_legacy)", &[])
                .await
                .map_err(DbError::query("look for legacy dedupe keys"))?
                .get(0);
            Ok((months, legacy_keys))
        }
        .await;
        let (months, legacy_keys) = self.db.finish(tx, out, "list partitions").await?;
        let mut p = self.lock_partitions();
        p.months = months.into_iter().collect();
        p.legacy_keys = legacy_keys;
        p.loaded = Some(Instant::now());
        Ok(())
    }

    /// One transaction, bounded: an answer that never comes (a connection cut off without a
    /// word, a pooler that lost it) fails the batch after the query timeout, to be retried on
    /// another connection, instead of holding its entries for ever.
    async fn write_once(&self, attempt: &Attempt<'_, '_>) -> Result<Written, DbError> {
        let mut client = self.db.get("write batch").await?;
        let out = self
            .db
            .bounded("write batch", async {
                let tx = self.db.begin(&mut client, "begin batch").await?;
                let out = self.write_in(&Tx::new(&self.db, &tx), attempt).await;
                self.db.finish(tx, out, "commit batch").await
            })
            .await;
        self.db.keep_unless_timed_out(client, out)
    }

    async fn write_in(
        &self,
        tx: &Tx<'_, '_>,
        attempt: &Attempt<'_, '_>,
    ) -> Result<Written, DbError> {
        let used = attempt.used();
        let keys = || used.iter().map(|i| attempt.entries[*i].key);
        let (ledger, recorded) = take_entries(tx, attempt, &used).await?;
        let legacy = self.lock_partitions().legacy_keys;
        let fresh = dedupe::first_seen(tx, attempt, &ledger, legacy).await?;
        let (known, orphans): (Vec<&QueuedEvent>, Vec<&QueuedEvent>) = {
            let p = self.lock_partitions();
            fresh
                .iter()
                .partition(|e| p.months.contains(&rows::month(e)))
        };
        store_events(tx, &known, &orphans).await?;
        if !recorded {
            ledger::record_entries(tx, keys(), &ledger, attempt.mode).await?;
        }
        Ok(Written {
            stored: known.len() as u64,
            quarantined: orphans.len() as u64,
            duplicates: (attempt.items.len() - fresh.len()) as u64,
        })
    }

    fn lock_partitions(&self) -> std::sync::MutexGuard<'_, PartitionCache> {
        self.partitions.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Takes the locks of the entries `used` and what the ledger holds for them. Two transactions
/// may hold the same entry: its first reader's, stalled or cut off, and that of the writer that
/// claimed it meanwhile. They take the entry's lock first, so the second waits for the first,
/// and its ledger lookup (next statement, new snapshot) then sees what the first committed. With
/// nothing to look up (the usual first delivery of whole entries), the ledger rows go in with
/// the locks: then the second value is true.
async fn take_entries(
    tx: &Tx<'_, '_>,
    attempt: &Attempt<'_, '_>,
    used: &[usize],
) -> Result<(HashMap<Uuid, ledger::Ledger>, bool), DbError> {
    let keys = used.iter().map(|i| attempt.entries[*i].key);
    let lookup = attempt.lookup(used);
    if lookup.is_empty() && attempt.mode == Mode::Whole {
        ledger::lock_and_record(tx, keys).await?;
        return Ok((HashMap::new(), true));
    }
    ledger::lock_entries(tx, keys).await?;
    Ok((ledger::ledger_rows(tx, &lookup).await?, false))
}

/// Copies the events whose month has a partition and their summary pending rows (computed and
/// encoded while PostgreSQL takes the events' rows), and the others into the quarantine.
async fn store_events(
    tx: &Tx<'_, '_>,
    known: &[&QueuedEvent],
    orphans: &[&QueuedEvent],
) -> Result<(), DbError> {
    let pending = copy_events(tx, "analytics_events", known, || {
        (!known.is_empty())
            .then(|| crate::pending::encode(known))
            .transpose()
    })
    .await??;
    crate::pending::copy(tx, pending).await?;
    copy_events(tx, "events_quarantine", orphans, || ()).await?;
    Ok(())
}

/// One attempt at a write: its events, their entries, and how it covers them.
struct Attempt<'a, 'e> {
    items: &'a [Item<'e>],
    entries: &'a [EntryInfo],
    mode: Mode,
    /// The fast path: no lookup of entries not suspect, keys recorded by COPY.
    fast: bool,
}

impl Attempt<'_, '_> {
    /// The indexes of the entries the events belong to, each once, in order of first use.
    fn used(&self) -> Vec<usize> {
        let mut seen = HashSet::new();
        self.items
            .iter()
            .map(|(i, _)| *i)
            .filter(|i| seen.insert(*i))
            .collect()
    }

    /// The entries looked up in the ledger: suspect entries, every entry on the slow path, and
    /// every entry of a split batch (whose ledger insert must not skip a whole entry quietly).
    fn lookup(&self, used: &[usize]) -> Vec<Uuid> {
        used.iter()
            .filter(|i| self.entries[**i].suspect || !self.fast || self.mode == Mode::Split)
            .map(|i| self.entries[*i].key)
            .collect()
    }
}

/// PostgreSQL refused the rows themselves: a data exception (class 22: bad values, encodings),
/// an integrity constraint (23: checks, uniques), or a trigger's refusal (P0: `RAISE`). Anything
/// else (a connection, a lock, a read-only standby, a missing table or permission, an internal
/// error) is not the events' fault: it is retried with backoff and never counts toward
/// `MAX_DELIVERIES`, so a misconfiguration can stall the pipeline but not dead-letter a backlog.
fn is_data_error(e: &DbError) -> bool {
    e.sql_state()
        .is_some_and(|c| c.starts_with("22") || c.starts_with("23") || c.starts_with("P0"))
}

/// A failed write as the caller sees it: the data's fault, or worth retrying as is.
fn classify(e: DbError) -> WriteError {
    if is_data_error(&e) {
        WriteError::Data(e)
    } else {
        WriteError::Transient(e)
    }
}

/// "no partition of relation ... found for row": a check violation of the partition bounds,
/// told apart from a table CHECK constraint (same SQLSTATE) by its message.
fn is_missing_partition(e: &DbError) -> bool {
    e.sql_state() == Some("23514") && e.to_string().contains("no partition")
}

/// Binary COPY of `events` into `table`; `meanwhile` runs once the rows are sent, while the
/// server still works through them, before the COPY is finished. Nothing to copy: only
/// `meanwhile`.
async fn copy_events<R>(
    tx: &Tx<'_, '_>,
    table: &'static str,
    events: &[&QueuedEvent],
    meanwhile: impl FnOnce() -> R,
) -> Result<R, DbError> {
    if events.is_empty() {
        return Ok(meanwhile());
    }
    let op = if table == "analytics_events" {
        "copy events"
    } else {
        "copy quarantined events"
    };
    let sql = format!("COPY {table} {COPY_COLUMNS} FROM STDIN (FORMAT binary)");
    let writer = tx.copy_in(&sql, &COPY_TYPES, op).await?;
    pin_mut!(writer);
    rows::write_rows(writer.as_mut(), events)
        .await
        .map_err(DbError::query(op))?;
    let out = meanwhile();
    writer.finish().await.map_err(DbError::query(op))?;
    Ok(out)
}
