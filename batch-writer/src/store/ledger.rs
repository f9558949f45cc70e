//! The entry ledger: the entries' transaction-scoped locks, what the ledger holds for them, and
//! their rows once written (whole, or in parts for a split batch).

use std::collections::HashMap;

use futures::pin_mut;
use shared::db::DbError;
use tokio_postgres::types::Type;
use uuid::Uuid;

use super::tx::Tx;
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

/// The entries' advisory lock ids, in key order (so two writers never wait on each other in a
/// cycle), each once. The lock id is the entry key folded to 64 bits; a collision only makes one
/// writer wait for another.
fn lock_ids(keys: impl Iterator<Item = Uuid>) -> Vec<i64> {
    let mut ids: Vec<i64> = keys.map(entry_lock_id).collect();
    ids.sort_unstable();
    ids.dedup();
    ids
}

/// The statement that takes a transaction-scoped advisory lock per entry (`$1`, in key order)
/// and tells the summary trigger that this transaction records its own pending rows
/// ([`crate::pending`]); its one row is materialized before anything that follows it in a
/// statement reads it.
macro_rules! lock_cte {
    () => {
        "WITH locks AS MATERIALIZED (SELECT (SELECT count(pg_advisory_xact_lock(id)) \
         FROM unnest($1::bigint[]) AS id) AS n, \
         set_config('sluice.summary_pending', 'written', true) AS told) "
    };
}

/// Takes the entries' locks (see [`lock_cte`]).
pub(super) async fn lock_entries(
    tx: &Tx<'_, '_>,
    keys: impl Iterator<Item = Uuid>,
) -> Result<(), DbError> {
    let ids = lock_ids(keys);
    if ids.is_empty() {
        return Ok(());
    }
    const SQL: &str = concat!(lock_cte!(), "SELECT n, told FROM locks");
    tx.query(SQL, &[&ids], "lock entries").await?;
    Ok(())
}

/// The first delivery of entries written whole (nothing to look up): takes their locks and
/// records them in the ledger in one statement, the locks first (the ledger rows are inserted
/// from the lock statement's one row). A ledger row that exists fails the transaction (23505),
/// never is skipped quietly, as the COPY of [`record_entries`] does. Saves the COPY's two round
/// trips at the end of the transaction.
pub(super) async fn lock_and_record(
    tx: &Tx<'_, '_>,
    keys: impl Iterator<Item = Uuid> + Clone,
) -> Result<(), DbError> {
    let ids = lock_ids(keys.clone());
    let (new, _) = unrecorded(keys, &HashMap::new());
    if new.is_empty() {
        return Ok(());
    }
    const SQL: &str = concat!(
        lock_cte!(),
        "INSERT INTO entry_ledger (entry_key) \
         SELECT k FROM locks, unnest($2::uuid[]) AS k WHERE locks.n >= 0 AND locks.told = 'written'"
    );
    let inserted = tx
        .execute(SQL, &[&ids, &new], "lock and record entries")
        .await?;
    debug_assert_eq!(inserted, new.len() as u64);
    Ok(())
}

/// What the ledger holds for the entries among `keys`.
pub(super) async fn ledger_rows(
    tx: &Tx<'_, '_>,
    keys: &[Uuid],
) -> Result<HashMap<Uuid, Ledger>, DbError> {
    if keys.is_empty() {
        return Ok(HashMap::new());
    }
    let rows = tx
        .query(
            "SELECT entry_key, whole FROM entry_ledger WHERE entry_key = ANY($1)",
            &[&keys],
            "look up entry ledger",
        )
        .await?;
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
    tx: &Tx<'_, '_>,
    keys: impl Iterator<Item = Uuid>,
    ledger: &HashMap<Uuid, Ledger>,
    mode: Mode,
) -> Result<(), DbError> {
    let (new, parts) = unrecorded(keys, ledger);
    match mode {
        Mode::Whole => {
            copy_uuids(tx, new.iter()).await?;
            if !parts.is_empty() {
                tx.execute(
                    "UPDATE entry_ledger SET whole = true WHERE entry_key = ANY($1)",
                    &[&parts],
                    "complete ledger rows",
                )
                .await?;
            }
        }
        Mode::Split if !new.is_empty() => {
            tx.execute(
                "INSERT INTO entry_ledger (entry_key, whole) SELECT unnest($1::uuid[]), false \
                 ON CONFLICT (entry_key) DO NOTHING",
                &[&new],
                "record split entries",
            )
            .await?;
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

/// Binary COPY of ledger keys; a key that exists fails the transaction.
async fn copy_uuids<'k>(
    tx: &Tx<'_, '_>,
    keys: impl ExactSizeIterator<Item = &'k Uuid>,
) -> Result<(), DbError> {
    if keys.len() == 0 {
        return Ok(());
    }
    let op = "copy ledger rows";
    let writer = tx
        .copy_in(
            "COPY entry_ledger (entry_key) FROM STDIN (FORMAT binary)",
            &[Type::UUID],
            op,
        )
        .await?;
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
