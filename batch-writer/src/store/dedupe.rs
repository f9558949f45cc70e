//! Dedupe keys: which events of a call need one, the keys already held (exact, or legacy from
//! before migration 4), and the new ones recorded, by COPY on the fast path.

use std::collections::{HashMap, HashSet};

use futures::pin_mut;
use shared::db::DbError;
use shared::queue::QueuedEvent;
use tokio_postgres::types::Type;
use uuid::Uuid;

use super::ledger::Ledger;
use super::tx::Tx;
use super::Attempt;
use crate::rows;

/// The events of `attempt` not stored before: those without a key, and those whose key is
/// recorded now (on the fast path every key goes in by COPY, which fails the transaction on a
/// key that exists; on the slow path existing keys are skipped). `legacy`: look the legacy keys
/// up too.
pub(super) async fn first_seen<'e>(
    tx: &Tx<'_, '_>,
    attempt: &Attempt<'_, 'e>,
    ledger: &HashMap<Uuid, Ledger>,
    legacy: bool,
) -> Result<Vec<&'e QueuedEvent>, DbError> {
    let (mut keyed, unkeyed) = sort_out(attempt, ledger);
    if legacy {
        let old = legacy_duplicates(tx, &keyed).await?;
        keyed.retain(|e| !old.contains(&(e.event_id, e.app_id.as_str())));
    }
    let mut fresh = unkeyed;
    if attempt.fast {
        copy_dedupe_keys(tx, &keyed).await?;
        fresh.extend(keyed.iter().copied());
    } else {
        let new = insert_dedupe_keys(tx, &keyed).await?;
        fresh.extend(
            keyed
                .iter()
                .filter(|e| new.contains(&(e.event_id, e.app_id.clone()))),
        );
    }
    Ok(fresh)
}

/// The events that need a dedupe key (each once) and those that do not; events of entries
/// written whole are left out. A key is needed in a split, on the slow path, for a suspect entry
/// or one written in parts, and for a client-chosen id.
fn sort_out<'e>(
    attempt: &Attempt<'_, 'e>,
    ledger: &HashMap<Uuid, Ledger>,
) -> (Vec<&'e QueuedEvent>, Vec<&'e QueuedEvent>) {
    let mut in_batch = HashSet::with_capacity(attempt.items.len());
    let mut keyed: Vec<&QueuedEvent> = Vec::new();
    let mut unkeyed: Vec<&QueuedEvent> = Vec::with_capacity(attempt.items.len());
    for (i, e) in attempt.items {
        let entry = &attempt.entries[*i];
        let state = ledger.get(&entry.key).copied();
        if state == Some(Ledger::Whole) {
            continue;
        }
        if attempt.mode == super::Mode::Split
            || entry.suspect
            || !attempt.fast
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
    (keyed, unkeyed)
}

/// The events among `events` whose key sits in `event_dedupe_legacy` (written before keys became
/// exact, and still inside the dedupe window).
async fn legacy_duplicates<'e>(
    tx: &Tx<'_, '_>,
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
            "look up legacy dedupe keys",
        )
        .await?;
    Ok(found
        .iter()
        .filter_map(|r| keys.get(&r.get::<_, Uuid>(0)))
        .map(|e| (e.event_id, e.app_id.as_str()))
        .collect())
}

/// Binary COPY of the events' dedupe keys; a key that exists fails the transaction.
async fn copy_dedupe_keys(tx: &Tx<'_, '_>, events: &[&QueuedEvent]) -> Result<(), DbError> {
    if events.is_empty() {
        return Ok(());
    }
    let op = "copy dedupe keys";
    let writer = tx
        .copy_in(
            "COPY event_dedupe (event_id, app_id) FROM STDIN (FORMAT binary)",
            &[Type::UUID, Type::TEXT],
            op,
        )
        .await?;
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
    tx: &Tx<'_, '_>,
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
            "insert dedupe keys",
        )
        .await?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}
