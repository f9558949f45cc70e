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
//! without a lookup; its ledger row goes in with a plain COPY, so if any row for the entry
//! exists (whole or parts, however the entry came to be written) the COPY fails and the call is
//! retried on the slow path, which looks every entry and key up first. Duplicates are rare, so
//! the fast path is usual.

use std::collections::{HashMap, HashSet};
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

/// What the ledger holds for an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ledger {
    Whole,
    Parts,
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
        let classify = |e: DbError| {
            if is_data_error(&e) {
                WriteError::Data(e)
            } else {
                WriteError::Transient(e)
            }
        };
        let mut fast = true;
        let mut refreshed = false;
        loop {
            self.refresh_partitions(false)
                .await
                .map_err(WriteError::Transient)?;
            match self.write_once(items, entries, mode, fast).await {
                Ok(w) => return Ok(w),
                // A ledger row or key written meanwhile or before: again, on the slow path,
                // which looks every entry and key up first. On the slow path a unique violation
                // cannot come from the bookkeeping (looked up under the entries' locks): it is the
                // data's (a quarantined event's key), and retrying would fail forever.
                Err(e) if e.sql_state() == Some("23505") && fast => fast = false,
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
            let p = self.partitions.lock().unwrap_or_else(|e| e.into_inner());
            force || p.loaded.is_none_or(|t| t.elapsed() > PARTITIONS_TTL)
        };
        if !stale {
            return Ok(());
        }
        let client = self.db.get("list partitions").await?;
        let months = partitions::existing(&client).await?;
        let legacy_keys: bool = client
            .query_one("SELECT EXISTS (SELECT 1 FROM event_dedupe_legacy)", &[])
            .await
            .map_err(DbError::query("look for legacy dedupe keys"))?
            .get(0);
        let mut p = self.partitions.lock().unwrap_or_else(|e| e.into_inner());
        p.months = months.into_iter().collect();
        p.legacy_keys = legacy_keys;
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
        // then sees what the first committed.
        lock_entries(&tx, used.iter().map(|i| entries[*i].key)).await?;
        // Looked up: suspect entries, every entry on the slow path, and every entry of a split
        // batch (whose ledger insert must not skip a whole entry quietly).
        let lookup: Vec<Uuid> = used
            .iter()
            .filter(|i| entries[**i].suspect || !fast || mode == Mode::Split)
            .map(|i| entries[*i].key)
            .collect();
        let ledger = ledger_rows(&tx, &lookup).await?;
        let mut in_batch = HashSet::with_capacity(items.len());
        let mut keyed: Vec<&QueuedEvent> = Vec::new();
        let mut unkeyed: Vec<&QueuedEvent> = Vec::with_capacity(items.len());
        for (i, e) in items {
            let entry = &entries[*i];
            let state = ledger.get(&entry.key).copied();
            if state == Some(Ledger::Whole) {
                continue;
            }
            if mode == Mode::Split
                || entry.suspect
                || !fast
                || e.client_id
                || state == Some(Ledger::Parts)
            {
                // The same event twice in one batch (a retry next to its original) counts once.
                if in_batch.insert((e.event_id, e.app_id.as_str())) {
                    keyed.push(*e);
                }
            } else {
                unkeyed.push(*e);
            }
        }
        let legacy = self
            .partitions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .legacy_keys;
        if legacy {
            let old = legacy_duplicates(&tx, &keyed).await?;
            keyed.retain(|e| !old.contains(&(e.event_id, e.app_id.as_str())));
        }
        let mut fresh = unkeyed;
        if fast {
            copy_dedupe_keys(&tx, &keyed).await?;
            fresh.extend(keyed.iter().copied());
        } else {
            let new = insert_dedupe_keys(&tx, &keyed).await?;
            fresh.extend(
                keyed
                    .iter()
                    .filter(|e| new.contains(&(e.event_id, e.app_id.clone()))),
            );
        }
        let (known, orphans): (Vec<&QueuedEvent>, Vec<&QueuedEvent>) = {
            let p = self.partitions.lock().unwrap_or_else(|e| e.into_inner());
            fresh
                .iter()
                .partition(|e| p.months.contains(&rows::month(e)))
        };
        copy_events(&tx, "analytics_events", &known).await?;
        crate::pending::copy(&tx, &known).await?;
        if !orphans.is_empty() {
            copy_events(&tx, "events_quarantine", &orphans).await?;
        }
        record_entries(&tx, used.iter().map(|i| entries[*i].key), &ledger, mode).await?;
        tx.commit().await.map_err(DbError::query("commit batch"))?;
        Ok(Written {
            stored: known.len() as u64,
            quarantined: orphans.len() as u64,
            duplicates: (items.len() - fresh.len()) as u64,
        })
    }
}

/// Records the call's entries in the ledger. Whole: entries without a row get one by plain COPY
/// (a row that appeared meanwhile fails the transaction, never is skipped quietly), entries
/// written in parts before are marked whole. Split: entries without a row get a "parts" row; an
/// entry may be in several parts of one split, so an existing row is kept.
async fn record_entries(
    tx: &Transaction<'_>,
    keys: impl Iterator<Item = Uuid>,
    ledger: &HashMap<Uuid, Ledger>,
    mode: Mode,
) -> Result<(), DbError> {
    // An entry may sit twice in one batch (claimed while a first copy waited): one row.
    let mut new: Vec<Uuid> = Vec::new();
    let mut parts: Vec<Uuid> = Vec::new();
    for k in keys {
        match ledger.get(&k) {
            None => new.push(k),
            Some(Ledger::Parts) => parts.push(k),
            Some(Ledger::Whole) => {}
        }
    }
    new.sort_unstable();
    new.dedup();
    match mode {
        Mode::Whole => {
            copy_uuids(tx, "entry_ledger", "entry_key", new.iter()).await?;
            if !parts.is_empty() {
                tx.execute(
                    "UPDATE entry_ledger SET whole = true WHERE entry_key = ANY($1)",
                    &[&parts],
                )
                .await
                .map_err(DbError::query("complete ledger rows"))?;
            }
        }
        Mode::Split if !new.is_empty() => {
            tx.execute(
                "INSERT INTO entry_ledger (entry_key, whole) SELECT unnest($1::uuid[]), false \
                 ON CONFLICT (entry_key) DO NOTHING",
                &[&new],
            )
            .await
            .map_err(DbError::query("record split entries"))?;
        }
        Mode::Split => {}
    }
    Ok(())
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

/// "no partition of relation ... found for row": a check violation of the partition bounds,
/// told apart from a table CHECK constraint (same SQLSTATE) by its message.
fn is_missing_partition(e: &DbError) -> bool {
    e.sql_state() == Some("23514") && e.to_string().contains("no partition")
}

/// The advisory lock id of an entry: its ledger key folded to 64 bits.
pub fn entry_lock_id(key: Uuid) -> i64 {
    let (hi, lo) = key.as_u64_pair();
    (hi ^ lo.rotate_left(32)) as i64
}

/// Takes a transaction-scoped advisory lock per entry, in key order (so two writers never wait
/// on each other in a cycle). The lock id is the entry key folded to 64 bits; a collision only
/// makes one writer wait for another.
async fn lock_entries(
    tx: &Transaction<'_>,
    keys: impl Iterator<Item = Uuid>,
) -> Result<(), DbError> {
    let mut ids: Vec<i64> = keys.map(entry_lock_id).collect();
    if ids.is_empty() {
        return Ok(());
    }
    ids.sort_unstable();
    ids.dedup();
    // The same statement tells the summary trigger that this transaction records its own
    // pending rows ([`crate::pending`]).
    tx.execute(
        &format!(
            "SELECT (SELECT count(pg_advisory_xact_lock(id)) FROM unnest($1::bigint[]) AS id), {}",
            crate::pending::TELL_TRIGGER
        ),
        &[&ids],
    )
    .await
    .map_err(DbError::query("lock entries"))?;
    Ok(())
}

/// What the ledger holds for the entries among `keys`.
async fn ledger_rows(
    tx: &Transaction<'_>,
    keys: &[Uuid],
) -> Result<HashMap<Uuid, Ledger>, DbError> {
    if keys.is_empty() {
        return Ok(HashMap::new());
    }
    let rows = tx
        .query(
            "SELECT entry_key, whole FROM entry_ledger WHERE entry_key = ANY($1)",
            &[&keys],
        )
        .await
        .map_err(DbError::query("look up entry ledger"))?;
    Ok(rows
        .iter()
        .map(|r| {
            let whole: bool = r.get(1);
            (r.get(0), if whole { Ledger::Whole } else { Ledger::Parts })
        })
        .collect())
}

/// The events among `events` whose key sits in `event_dedupe_legacy` (written before keys became
/// exact, and still inside the dedupe window).
async fn legacy_duplicates<'e>(
    tx: &Transaction<'_>,
    events: &[&'e QueuedEvent],
) -> Result<HashSet<(Uuid, &'e str)>, DbError> {
    if events.is_empty() {
        return Ok(HashSet::new());
    }
    let keys: HashMap<Uuid, &QueuedEvent> = events
        .iter()
        .map(|e| (rows::legacy_dedupe_key(&e.app_id, &e.event_id), *e))
        .collect();
    let list: Vec<Uuid> = keys.keys().copied().collect();
    let found = tx
        .query(
            "SELECT dedupe_key FROM event_dedupe_legacy WHERE dedupe_key = ANY($1)",
            &[&list],
        )
        .await
        .map_err(DbError::query("look up legacy dedupe keys"))?;
    Ok(found
        .iter()
        .filter_map(|r| keys.get(&r.get::<_, Uuid>(0)))
        .map(|e| (e.event_id, e.app_id.as_str()))
        .collect())
}

/// Binary COPY of the events' dedupe keys; a key that exists fails the transaction.
async fn copy_dedupe_keys(tx: &Transaction<'_>, events: &[&QueuedEvent]) -> Result<(), DbError> {
    if events.is_empty() {
        return Ok(());
    }
    let op = "copy dedupe keys";
    let sink = tx
        .copy_in("COPY event_dedupe (event_id, app_id) FROM STDIN (FORMAT binary)")
        .await
        .map_err(DbError::query(op))?;
    let writer = BinaryCopyInWriter::new(sink, &[Type::UUID, Type::TEXT]);
    pin_mut!(writer);
    for e in events {
        writer
            .as_mut()
            .write(&[&e.event_id, &e.app_id])
            .await
            .map_err(DbError::query(op))?;
    }
    writer.finish().await.map_err(DbError::query(op))?;
    Ok(())
}

/// Inserts the events' dedupe keys that are not there yet; returns those inserted.
async fn insert_dedupe_keys(
    tx: &Transaction<'_>,
    events: &[&QueuedEvent],
) -> Result<HashSet<(Uuid, String)>, DbError> {
    if events.is_empty() {
        return Ok(HashSet::new());
    }
    let ids: Vec<Uuid> = events.iter().map(|e| e.event_id).collect();
    let apps: Vec<&str> = events.iter().map(|e| e.app_id.as_str()).collect();
    let rows = tx
        .query(
            "INSERT INTO event_dedupe (event_id, app_id) \
             SELECT * FROM unnest($1::uuid[], $2::text[]) \
             ON CONFLICT DO NOTHING RETURNING event_id, app_id",
            &[&ids, &apps],
        )
        .await
        .map_err(DbError::query("insert dedupe keys"))?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

/// Binary COPY of uuids into a one-key table (`table` and `column` are constants of this file);
/// a key that exists fails the transaction.
async fn copy_uuids<'k>(
    tx: &Transaction<'_>,
    table: &'static str,
    column: &'static str,
    keys: impl ExactSizeIterator<Item = &'k Uuid>,
) -> Result<(), DbError> {
    if keys.len() == 0 {
        return Ok(());
    }
    let op = "copy ledger rows";
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
