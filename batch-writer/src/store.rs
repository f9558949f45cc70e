//! Writing events into PostgreSQL exactly once, in one transaction per call:
//! 1. drop events whose stream entry is already in `entry_ledger` (a redelivery of a committed
//!    entry), looked up only for entries that may have been seen before;
//! 2. record a dedupe key in `event_dedupe` for each event that needs one (a client-chosen id,
//!    or an event of an entry that may have been partly written), keeping only events seen first;
//! 3. binary COPY the events into `analytics_events`, and those whose month has no partition into
//!    `events_quarantine`;
//! 4. record the entries in `entry_ledger` when they are written whole;
//! 5. commit.
//!
//! Keys and ledger rows go in with binary COPY; if one already exists (a unique violation), the
//! transaction is retried with `INSERT ... ON CONFLICT DO NOTHING RETURNING`, which also waits
//! out a concurrent writer holding the same key. Duplicates are rare, so the fast path is usual.

use std::collections::HashSet;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use futures::pin_mut;
use shared::db::{Db, DbError};
use shared::queue::QueuedEvent;
use shared::schema::partitions::{self, Month};
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::Type;
use tokio_postgres::Transaction;
use uuid::Uuid;

use crate::rows::{self, COPY_COLUMNS, COPY_TYPES};

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
    /// Part of a split batch: every event gets a dedupe key, no entry goes to the ledger.
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
    /// PostgreSQL refused the data itself: split the batch to find the bad events.
    #[error("data: {0}")]
    Data(DbError),
}

/// The months that have a partition, refreshed when stale or when a write says one is missing.
struct PartitionCache {
    months: HashSet<Month>,
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
        let classify = |e: DbError| {
            // A unique key still colliding after the retries below is a race, not bad data.
            if e.is_transient() || e.sql_state() == Some("23505") {
                WriteError::Transient(e)
            } else {
                WriteError::Data(e)
            }
        };
        let mut fast = true;
        for _ in 0..3 {
            self.refresh_partitions(false)
                .await
                .map_err(WriteError::Transient)?;
            match self.write_once(items, entries, mode, fast).await {
                Ok(w) => return Ok(w),
                // A key written meanwhile by another transaction: again, on the slow path, which
                // looks every entry and key up first.
                Err(e) if e.sql_state() == Some("23505") => fast = false,
                Err(e) if is_missing_partition(&e) => {
                    // A partition vanished (retention) or appeared since the cache was loaded.
                    self.refresh_partitions(true)
                        .await
                        .map_err(WriteError::Transient)?;
                }
                Err(e) => return Err(classify(e)),
            }
        }
        self.write_once(items, entries, mode, false)
            .await
            .map_err(classify)
    }

    async fn refresh_partitions(&self, force: bool) -> Result<(), DbError> {
        let stale = {
            let p = self.partitions.lock().unwrap_or_else(|e| e.into_inner());
            force || p.loaded.is_none_or(|t| t.elapsed() > PARTITIONS_TTL)
        };
        if !stale {
            return Ok(());
        }
        let client = self.db.get("list partitions").await?;
        let months = partitions::existing(&client).await?;
        let mut p = self.partitions.lock().unwrap_or_else(|e| e.into_inner());
        p.months = months.into_iter().collect();
        p.loaded = Some(Instant::now());
        Ok(())
    }

    async fn write_once(
        &self,
        items: &[Item<'_>],
        entries: &[EntryInfo],
        mode: Mode,
        fast: bool,
    ) -> Result<Written, DbError> {
        let mut client = self.db.get("write batch").await?;
        let tx = client
            .transaction()
            .await
            .map_err(DbError::query("begin batch"))?;
        let used: Vec<usize> = {
            let mut seen = HashSet::new();
            items
                .iter()
                .map(|(i, _)| *i)
                .filter(|i| seen.insert(*i))
                .collect()
        };
        // Two transactions may hold the same entry: its first reader's, stalled or cut off, and
        // that of the writer that claimed it meanwhile. They take the entry's lock first, so
        // the second waits for the first, and its ledger lookup (next statement, new snapshot)
        // then sees what the first committed. The first reader's copy carries no per-event key,
        // so without this the second could write the entry again.
        lock_entries(&tx, used.iter().map(|i| entries[*i].key)).await?;
        // On the slow path (a key already existed), every entry is looked up.
        let suspects: Vec<Uuid> = used
            .iter()
            .filter(|i| entries[**i].suspect || !fast)
            .map(|i| entries[*i].key)
            .collect();
        let done = committed_entries(&tx, &suspects).await?;
        // Per-event keys: for client-chosen ids, for events of suspect entries, and for all
        // events of a split batch; the rest are new by construction.
        let mut in_batch = HashSet::with_capacity(items.len());
        let mut keyed: Vec<(Uuid, &QueuedEvent)> = Vec::new();
        let mut unkeyed: Vec<&QueuedEvent> = Vec::with_capacity(items.len());
        for (i, e) in items {
            let entry = &entries[*i];
            if done.contains(&entry.key) {
                continue;
            }
            if mode == Mode::Split || entry.suspect || !fast || e.client_id {
                let key = rows::dedupe_key(&e.app_id, &e.event_id);
                // The same event twice in one batch (a retry next to its original) counts once.
                if in_batch.insert(key) {
                    keyed.push((key, *e));
                }
            } else {
                unkeyed.push(*e);
            }
        }
        let mut fresh = unkeyed;
        if fast {
            copy_uuids(
                &tx,
                "event_dedupe",
                "dedupe_key",
                keyed.iter().map(|(k, _)| k),
            )
            .await?;
            fresh.extend(keyed.iter().map(|(_, e)| *e));
        } else {
            let keys: Vec<Uuid> = keyed.iter().map(|(k, _)| *k).collect();
            let new = insert_uuids(&tx, "event_dedupe", "dedupe_key", &keys).await?;
            fresh.extend(
                keyed
                    .iter()
                    .filter(|(k, _)| new.contains(k))
                    .map(|(_, e)| *e),
            );
        }
        let (known, orphans): (Vec<&QueuedEvent>, Vec<&QueuedEvent>) = {
            let p = self.partitions.lock().unwrap_or_else(|e| e.into_inner());
            fresh
                .iter()
                .partition(|e| p.months.contains(&rows::month(e)))
        };
        copy_events(&tx, "analytics_events", &known).await?;
        if !orphans.is_empty() {
            copy_events(&tx, "events_quarantine", &orphans).await?;
        }
        if mode == Mode::Whole {
            // An entry may sit twice in one batch (claimed while a first copy waited): one row.
            let mut ledger: Vec<Uuid> = used
                .iter()
                .map(|i| entries[*i].key)
                .filter(|k| !done.contains(k))
                .collect();
            ledger.sort_unstable();
            ledger.dedup();
            // A plain COPY on both paths: a ledger row that exists already must fail the
            // transaction (and the retry finds the entry done), never be skipped quietly.
            copy_uuids(&tx, "entry_ledger", "entry_key", ledger.iter()).await?;
        }
        tx.commit().await.map_err(DbError::query("commit batch"))?;
        Ok(Written {
            stored: known.len() as u64,
            quarantined: orphans.len() as u64,
            duplicates: (items.len() - fresh.len()) as u64,
        })
    }
}

/// "no partition of relation ... found for row": a check violation of the partition bounds,
/// told apart from a table CHECK constraint (same SQLSTATE) by its message.
fn is_missing_partition(e: &DbError) -> bool {
    e.sql_state() == Some("23514") && e.to_string().contains("no partition")
}

/// Takes a transaction-scoped advisory lock per entry, in key order (so two writers never wait
/// on each other in a cycle). The lock id is the entry key folded to 64 bits; a collision only
/// makes one writer wait for another.
async fn lock_entries(
    tx: &Transaction<'_>,
    keys: impl Iterator<Item = Uuid>,
) -> Result<(), DbError> {
    let mut ids: Vec<i64> = keys
        .map(|k| {
            let (hi, lo) = k.as_u64_pair();
            (hi ^ lo.rotate_left(32)) as i64
        })
        .collect();
    if ids.is_empty() {
        return Ok(());
    }
    ids.sort_unstable();
    ids.dedup();
    tx.execute(
        "SELECT count(pg_advisory_xact_lock(id)) FROM unnest($1::bigint[]) AS id",
        &[&ids],
    )
    .await
    .map_err(DbError::query("lock entries"))?;
    Ok(())
}

/// The entries among `keys` already committed.
async fn committed_entries(tx: &Transaction<'_>, keys: &[Uuid]) -> Result<HashSet<Uuid>, DbError> {
    if keys.is_empty() {
        return Ok(HashSet::new());
    }
    let rows = tx
        .query(
            "SELECT entry_key FROM entry_ledger WHERE entry_key = ANY($1)",
            &[&keys],
        )
        .await
        .map_err(DbError::query("look up entry ledger"))?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// Binary COPY of uuids into a one-key table (`table` and `column` are constants of this file).
async fn copy_uuids<'k>(
    tx: &Transaction<'_>,
    table: &'static str,
    column: &'static str,
    keys: impl ExactSizeIterator<Item = &'k Uuid>,
) -> Result<(), DbError> {
    if keys.len() == 0 {
        return Ok(());
    }
    let op = "copy dedupe keys";
    let sink = tx
        .copy_in(&format!(
            "COPY {table} ({column}) FROM STDIN (FORMAT binary)"
        ))
        .await
        .map_err(DbError::query(op))?;
    let writer = BinaryCopyInWriter::new(sink, &[Type::UUID]);
    pin_mut!(writer);
    for key in keys {
        writer
            .as_mut()
            .write(&[key])
            .await
            .map_err(DbError::query(op))?;
    }
    writer.finish().await.map_err(DbError::query(op))?;
    Ok(())
}

/// Inserts uuids that are not there yet; returns those inserted.
async fn insert_uuids(
    tx: &Transaction<'_>,
    table: &'static str,
    column: &'static str,
    keys: &[Uuid],
) -> Result<HashSet<Uuid>, DbError> {
    if keys.is_empty() {
        return Ok(HashSet::new());
    }
    let rows = tx
        .query(
            &format!(
                "INSERT INTO {table} ({column}) SELECT unnest($1::uuid[]) \
                 ON CONFLICT DO NOTHING RETURNING {column}"
            ),
            &[&keys],
        )
        .await
        .map_err(DbError::query("insert dedupe keys"))?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

async fn copy_events(
    tx: &Transaction<'_>,
    table: &'static str,
    events: &[&QueuedEvent],
) -> Result<(), DbError> {
    if events.is_empty() {
        return Ok(());
    }
    let op = if table == "analytics_events" {
        "copy events"
    } else {
        "copy quarantined events"
    };
    let sink = tx
        .copy_in(&format!(
            "COPY {table} {COPY_COLUMNS} FROM STDIN (FORMAT binary)"
        ))
        .await
        .map_err(DbError::query(op))?;
    let writer = BinaryCopyInWriter::new(sink, &COPY_TYPES);
    pin_mut!(writer);
    rows::write_rows(writer.as_mut(), events)
        .await
        .map_err(DbError::query(op))?;
    writer.finish().await.map_err(DbError::query(op))?;
    Ok(())
}
