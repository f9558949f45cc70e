//! Writing one batch into PostgreSQL, exactly once, in one transaction:
//! 1. record the batch's dedupe keys in `event_dedupe` (binary COPY; when a key is already there,
//!    the transaction is retried with `INSERT ... ON CONFLICT DO NOTHING RETURNING`, which also
//!    waits out a concurrent writer holding the same key), keeping only the events seen first;
//! 2. binary COPY those events into `analytics_events`, and those whose month has no partition
//!    into `events_quarantine`;
//! 3. commit.
//!
//! Duplicates are rare, so the fast path (plain COPY everywhere) is the usual one.

use std::collections::HashSet;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use futures::pin_mut;
use shared::db::{Db, DbError};
use shared::queue::QueuedEvent;
use shared::schema::partitions::{self, Month};
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::Transaction;
use uuid::Uuid;

use crate::rows::{self, RawJsonb, COPY_COLUMNS, COPY_TYPES};

/// What a written batch came to.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Written {
    pub stored: u64,
    pub quarantined: u64,
    pub duplicates: u64,
}

/// Why a batch was not written.
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

    /// Writes `events` in one transaction, retrying the slow dedupe path or a partition refresh
    /// when needed. Data errors and transient errors are told apart for the caller.
    pub async fn write(&self, events: &[&QueuedEvent]) -> Result<Written, WriteError> {
        let mut fast = true;
        for _ in 0..3 {
            self.refresh_partitions(false)
                .await
                .map_err(WriteError::Transient)?;
            match self.write_once(events, fast).await {
                Ok(w) => return Ok(w),
                Err(e) if e.sql_state() == Some("23505") && fast => fast = false,
                Err(e) if is_missing_partition(&e) => {
                    // A partition vanished (retention) or appeared since the cache was loaded.
                    self.refresh_partitions(true)
                        .await
                        .map_err(WriteError::Transient)?;
                }
                Err(e) if e.is_transient() => return Err(WriteError::Transient(e)),
                Err(e) => return Err(WriteError::Data(e)),
            }
        }
        self.write_once(events, false).await.map_err(|e| {
            if e.is_transient() {
                WriteError::Transient(e)
            } else {
                WriteError::Data(e)
            }
        })
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

    async fn write_once(&self, events: &[&QueuedEvent], fast: bool) -> Result<Written, DbError> {
        let mut client = self.db.get("write batch").await?;
        let tx = client
            .transaction()
            .await
            .map_err(DbError::query("begin batch"))?;
        // The same event twice in one batch (a retry landing next to its original) counts once.
        let mut seen = HashSet::with_capacity(events.len());
        let mut keyed: Vec<(Uuid, &QueuedEvent)> = Vec::with_capacity(events.len());
        for e in events {
            let key = rows::dedupe_key(&e.app_id, &e.event_id);
            if seen.insert(key) {
                keyed.push((key, e));
            }
        }
        let fresh: Vec<&QueuedEvent> = if fast {
            copy_keys(&tx, &keyed).await?;
            keyed.iter().map(|(_, e)| *e).collect()
        } else {
            let new = insert_keys(&tx, &keyed).await?;
            keyed
                .iter()
                .filter(|(k, _)| new.contains(k))
                .map(|(_, e)| *e)
                .collect()
        };
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
        tx.commit().await.map_err(DbError::query("commit batch"))?;
        Ok(Written {
            stored: known.len() as u64,
            quarantined: orphans.len() as u64,
            duplicates: (events.len() - fresh.len()) as u64,
        })
    }
}

/// "no partition of relation ... found for row": a check violation of the partition bounds,
/// told apart from a table CHECK constraint (same SQLSTATE) by its message.
fn is_missing_partition(e: &DbError) -> bool {
    e.sql_state() == Some("23514") && e.to_string().contains("no partition")
}

async fn copy_keys(tx: &Transaction<'_>, keyed: &[(Uuid, &QueuedEvent)]) -> Result<(), DbError> {
    let op = "copy dedupe keys";
    let sink = tx
        .copy_in("COPY event_dedupe (dedupe_key) FROM STDIN (FORMAT binary)")
        .await
        .map_err(DbError::query(op))?;
    let writer = BinaryCopyInWriter::new(sink, &[Type::UUID]);
    pin_mut!(writer);
    for (key, _) in keyed {
        writer
            .as_mut()
            .write(&[key])
            .await
            .map_err(DbError::query(op))?;
    }
    writer.finish().await.map_err(DbError::query(op))?;
    Ok(())
}

async fn insert_keys(
    tx: &Transaction<'_>,
    keyed: &[(Uuid, &QueuedEvent)],
) -> Result<HashSet<Uuid>, DbError> {
    let keys: Vec<Uuid> = keyed.iter().map(|(k, _)| *k).collect();
    let rows = tx
        .query(
            "INSERT INTO event_dedupe (dedupe_key) SELECT unnest($1::uuid[]) \
             ON CONFLICT DO NOTHING RETURNING dedupe_key",
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
    for e in events {
        let occurred = rows::time(e.occurred_at_us);
        let received = rows::time(e.received_at_us);
        let metadata = RawJsonb(e.metadata.as_deref().unwrap_or("{}"));
        let row: [&(dyn ToSql + Sync); 8] = [
            &e.event_id,
            &e.app_id,
            &e.event_name,
            &occurred,
            &received,
            &e.user_id,
            &e.session_id,
            &metadata,
        ];
        writer
            .as_mut()
            .write(&row)
            .await
            .map_err(DbError::query(op))?;
    }
    writer.finish().await.map_err(DbError::query(op))?;
    Ok(())
}
