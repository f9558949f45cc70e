//! The entry ledger: the entries' transaction-scoped locks, what the ledger holds for them, and
//! their rows once written (whole, or in parts for a split batch).

use std::collections::HashMap;

use futures::pin_mut;
use shared::db::DbError;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::Type;
use tokio_postgres::Transaction;
use uuid::Uuid;

use super::Mode;

/// What the ledger holds for an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Ledger {
    Whole,
    Parts,
}

/// The advisory lock id of an entry: its ledger key folded to 64 bits.
pub fn entry_lock_id(key: Uuid) -> i64 {
    let (hi, lo) = key.as_u64_pair();
    (hi ^ lo.rotate_left(32)) as i64
}

/// Takes a transaction-scoped advisory lock per entry, in key order (so two writers never wait
/// on each other in a cycle). The lock id is the entry key folded to 64 bits; a collision only
/// makes one writer wait for another.
pub(super) async fn lock_entries(
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
pub(super) async fn ledger_rows(
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

/// Records the call's entries in the ledger. Whole: entries without a row get one by plain COPY
/// (a row that appeared meanwhile fails the transaction, never is skipped quietly), entries
/// written in parts before are marked whole. Split: entries without a row get a "parts" row; an
/// entry may be in several parts of one split, so an existing row is kept.
pub(super) async fn record_entries(
    tx: &Transaction<'_>,
    keys: impl Iterator<Item = Uuid>,
    ledger: &HashMap<Uuid, Ledger>,
    mode: Mode,
) -> Result<(), DbError> {
    let (new, parts) = unrecorded(keys, ledger);
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

/// Among `keys`, the entries without a ledger row (each once: an entry may sit twice in one
/// batch, claimed while a first copy waited) and those written in parts.
fn unrecorded(
    keys: impl Iterator<Item = Uuid>,
    ledger: &HashMap<Uuid, Ledger>,
) -> (Vec<Uuid>, Vec<Uuid>) {
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
    (new, parts)
}

/// Binary COPY of uuids into a one-key table (`table` and `column` are constants of this module);
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
