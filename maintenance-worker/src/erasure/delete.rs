//! The `delete` phase of an erasure: the users' rows leave every place the pipeline keeps them,
//! each batch one transaction that also adds its count to `erasures.removed`, so a request
//! resumed after a crash never counts a row twice. The order leaves nothing behind:
//!
//! 1. `dead_letters`, read in id order from `dead_letters_after` and decoded here (MessagePack):
//!    a row goes when one of its events is of the app and one of the users. Raw entries (no
//!    event id) are decoded too; those that do not decode stay.
//! 2. `events_quarantine`, before the partitions: the partitions job moves quarantined rows into
//!    their month, and a row moved after the partition pass would be left behind.
//! 3. Every partition of `analytics_events`, found by `analytics_events_user_idx`, deleted
//!    through the parent (pruned to the partition by its bounds): the summary's statement
//!    trigger fires only there.
//!
//! The summary's members and counts are the `summary` phase's (`jobs::views::fold`): the event
//! batches run with `sluice.erasure_id` set, so the summary's delete trigger records what they
//! deleted in `summary_erased` instead of marking days for recomputation.
//!
//! A place is done when a batch finds no candidate (not when it deletes nothing), so rows moved
//! meanwhile are not missed.

use std::collections::HashSet;

use deadpool_postgres::{Object, Transaction};
use shared::db::DbError;
use shared::queue;
use shared::schema::partitions::{self, Month};

use super::{set_phase, Budget, ErasureError, Request, State, Step};
use crate::metrics;

/// Dead letters read per batch, at most: each is decoded here, and a raw entry holds up to 100
/// events.
const DEAD_LETTERS_PER_BATCH: i64 = 500;

/// SQLSTATE undefined_table: retention dropped a partition between the listing and its pass.
const UNDEFINED_TABLE: &str = "42P01";

/// The places rows are removed from; their keys are `shared::privacy::PLACES`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Place {
    Events,
    Quarantine,
    DeadLetters,
    SummaryMembers,
}

impl Place {
    /// The key in `erasures.removed` and the `place` label.
    pub(super) fn key(self) -> &'static str {
        match self {
            Place::Events => "events",
            Place::Quarantine => "quarantine",
            Place::DeadLetters => "dead_letters",
            Place::SummaryMembers => "summary_members",
        }
    }

    fn op(self) -> &'static str {
        match self {
            Place::Events => "erase events",
            Place::Quarantine => "erase quarantined events",
            Place::DeadLetters => "erase dead letters",
            Place::SummaryMembers => "take the erasure out of the summary",
        }
    }
}

/// One batch of a place: the candidates (`c`, at most $3), those deleted (`d`, rechecked: a row
/// may have moved meanwhile), and the days (UTC) of the deleted events. A place is done when a
/// batch finds no candidate, not when it deletes nothing: a batch whose candidates all moved
/// meanwhile (the quarantine move) says nothing about the rows after them.
fn batch_sql(candidates: &str, delete: &str, day: &str) -> String {
    format!(
        "WITH c AS ({candidates} LIMIT $3), \
         d AS ({delete} AND ctid = ANY(ARRAY(SELECT ctid FROM c)) RETURNING {day} AS day) \
         SELECT (SELECT count(*) FROM c), (SELECT count(*) FROM d), \
                ARRAY(SELECT DISTINCT day FROM d WHERE day IS NOT NULL)"
    )
}

/// $1 app, $2 user ids, $3 batch size.
fn quarantine_sql() -> String {
    batch_sql(
        "SELECT ctid FROM events_quarantine WHERE app_id = $1 AND user_id = ANY($2)",
        "DELETE FROM events_quarantine WHERE app_id = $1 AND user_id = ANY($2)",
        "NULL::date",
    )
}

/// One batch of month `m`'s events: candidates found through the user index on the partition,
/// deleted through the parent (pruned to the partition by the month's bounds), so the summary's
/// statement trigger marks their days. The bounds come from the clock-computed month, never
/// from input.
fn events_sql(m: Month) -> String {
    let (from, to) = (m.start().to_rfc3339(), m.plus(1).start().to_rfc3339());
    batch_sql(
        &format!(
            "SELECT ctid FROM {part} \
              WHERE hashtextextended(app_id || chr(31) || user_id, 0) = ANY(ARRAY(\
                      SELECT hashtextextended($1::text || chr(31) || u, 0) \
                        FROM unnest($2::text[]) u)) \
                AND user_id IS NOT NULL AND app_id = $1 AND user_id = ANY($2)",
            part = m.partition_name()
        ),
        &format!(
            "DELETE FROM analytics_events \
              WHERE occurred_at >= '{from}' AND occurred_at < '{to}' \
                AND app_id = $1 AND user_id = ANY($2)"
        ),
        "(occurred_at AT TIME ZONE 'UTC')::date",
    )
}

/// Runs batches until every place is empty of the users (then moves to `summary`), or the
/// tick's budget is spent. The views job's lock is held meanwhile (and scheduled folds wait while
/// a request is in this phase or the next): a fold recomputing one of the users' days between
/// their deletion and the summary phase would take their events out twice.
pub(super) async fn run(
    client: &mut Object,
    req: &mut Request,
    budget: &mut Budget<'_>,
) -> Result<Step, ErasureError> {
    let views = crate::jobs::Job::Views.lock_key();
    let locked: bool = client
        .query_one("SELECT pg_try_advisory_lock($1)", &[&views])
        .await
        .map_err(DbError::query("take the views lock"))?
        .get(0);
    if !locked {
        return Ok(Step::Wait);
    }
    let out = passes(client, req, budget).await;
    let unlocked = client
        .query_one("SELECT pg_advisory_unlock($1)", &[&views])
        .await;
    if let Err(e) = unlocked {
        return Err(DbError::query("release the views lock")(e).into());
    }
    match out? {
        true => set_phase(client, req, State::Delete, State::Summary).await,
        false => Ok(Step::Pause),
    }
}

/// Every place in order; false when the budget ran out first.
async fn passes(
    client: &mut Object,
    req: &mut Request,
    budget: &mut Budget<'_>,
) -> Result<bool, ErasureError> {
    if !dead_letters(client, req, budget).await?
        || !drain(client, req, Place::Quarantine, &quarantine_sql(), budget).await?
    {
        return Ok(false);
    }
    for m in partitions::existing(client).await? {
        if !drain_partition(client, req, m, budget).await? {
            return Ok(false);
        }
    }
    Ok(true)
}

async fn drain_partition(
    client: &mut Object,
    req: &mut Request,
    m: Month,
    budget: &mut Budget<'_>,
) -> Result<bool, ErasureError> {
    match drain(client, req, Place::Events, &events_sql(m), budget).await {
        Err(ErasureError::Db(e)) if e.sql_state() == Some(UNDEFINED_TABLE) => Ok(true),
        other => other,
    }
}

/// Runs batches of `sql` (see [`batch_sql`]) until one finds no candidate (true) or the budget
/// is spent (false). Each batch commits its deletions with their count and days.
async fn drain(
    client: &mut Object,
    req: &mut Request,
    place: Place,
    sql: &str,
    budget: &mut Budget<'_>,
) -> Result<bool, ErasureError> {
    loop {
        if budget.exhausted() {
            return Ok(false);
        }
        let Some((n, days)) = delete_batch(client, req, place, sql, budget.rows).await? else {
            return Ok(true);
        };
        for d in days {
            if !req.days.contains(&d) {
                req.days.push(d);
            }
        }
        metrics::erasure_rows(place.key(), n);
        budget.spend();
    }
}

/// One batch of `sql` of at most `rows` rows, in a transaction of its own committed with its
/// count; the rows deleted and their days, or `None` when it found no candidate.
async fn delete_batch(
    client: &mut Object,
    req: &Request,
    place: Place,
    sql: &str,
    rows: i64,
) -> Result<Option<(u64, Vec<chrono::NaiveDate>)>, ErasureError> {
    let tx = client
        .transaction()
        .await
        .map_err(DbError::query("begin erasure batch"))?;
    if place == Place::Events {
        // The summary's delete trigger records these events for the erasure to take out of
        // the summary itself, instead of marking their days for recomputation.
        tx.execute(
            "SELECT set_config('sluice.erasure_id', $1, true)",
            &[&req.id.to_string()],
        )
        .await
        .map_err(DbError::query("mark the batch as the erasure's"))?;
    }
    let row = tx
        .query_one(sql, &[&req.app_id, &req.user_ids, &rows])
        .await
        .map_err(DbError::query(place.op()))?;
    let (found, n, days): (i64, i64, Vec<chrono::NaiveDate>) = (row.get(0), row.get(1), row.get(2));
    if found == 0 {
        return Ok(None);
    }
    count(&tx, req, place, n as u64, None, &days).await?;
    tx.commit()
        .await
        .map_err(DbError::query("commit erasure batch"))?;
    Ok(Some((n as u64, days)))
}

/// Adds `n` rows of `place` to the request's counts (and moves its dead-letter cursor), in the
/// batch's transaction.
async fn count(
    tx: &Transaction<'_>,
    req: &Request,
    place: Place,
    n: u64,
    dead_letters_after: Option<i64>,
    days: &[chrono::NaiveDate],
) -> Result<(), ErasureError> {
    let updated = tx
        .execute(
            "UPDATE erasures SET removed = removed || jsonb_build_object($2::text, \
               coalesce((removed ->> $2::text)::bigint, 0) + $3::bigint), \
             dead_letters_after = coalesce($4, dead_letters_after), \
             days = ARRAY(SELECT DISTINCT d FROM unnest(days || $5::date[]) AS d ORDER BY 1) \
             WHERE erasure_id = $1 AND status = 'running' AND phase = 'delete'",
            &[
                &req.id,
                &place.key(),
                &(n as i64),
                &dead_letters_after,
                &days,
            ],
        )
        .await
        .map_err(DbError::query("count erased rows"))?;
    if updated != 1 {
        return Err(ErasureError::Vanished(req.id));
    }
    Ok(())
}

/// Examines the dead letters after the cursor, a batch at a time, until none is left (true) or
/// the budget is spent (false).
async fn dead_letters(
    client: &mut Object,
    req: &mut Request,
    budget: &mut Budget<'_>,
) -> Result<bool, ErasureError> {
    let limit = budget.rows.min(DEAD_LETTERS_PER_BATCH);
    loop {
        if budget.exhausted() {
            return Ok(false);
        }
        let Some(last) = dead_letter_batch(client, req, limit).await? else {
            return Ok(true);
        };
        req.dead_letters_after = last;
        budget.spend();
    }
}

/// One batch of dead letters; returns the last id examined, `None` when none was left.
async fn dead_letter_batch(
    client: &mut Object,
    req: &Request,
    limit: i64,
) -> Result<Option<i64>, ErasureError> {
    let rows = client
        .query(
            "SELECT id, payload FROM dead_letters \
             WHERE id > $1 AND (app_id = $2 OR event_id IS NULL) ORDER BY id LIMIT $3",
            &[&req.dead_letters_after, &req.app_id, &limit],
        )
        .await
        .map_err(DbError::query("read dead letters"))?;
    let Some(last) = rows.last().map(|r| r.get::<_, i64>(0)) else {
        return Ok(None);
    };
    let doomed = doomed(&rows, req);
    let tx = client
        .transaction()
        .await
        .map_err(DbError::query("begin erasure batch"))?;
    let n = tx
        .execute("DELETE FROM dead_letters WHERE id = ANY($1)", &[&doomed])
        .await
        .map_err(DbError::query(Place::DeadLetters.op()))?;
    count(&tx, req, Place::DeadLetters, n, Some(last), &[]).await?;
    tx.commit()
        .await
        .map_err(DbError::query("commit erasure batch"))?;
    metrics::erasure_rows(Place::DeadLetters.key(), n);
    Ok(Some(last))
}

/// The ids among dead letter `rows` (id, payload) that hold an event of the request's users.
fn doomed(rows: &[tokio_postgres::Row], req: &Request) -> Vec<i64> {
    let users: HashSet<&str> = req.user_ids.iter().map(String::as_str).collect();
    rows.iter()
        .filter(|r| mentions(r.get(1), &req.app_id, &users))
        .map(|r| r.get(0))
        .collect()
}

/// True when a dead letter's payload (one event, or a raw entry of several) holds an event of
/// `app` by one of `users`. A payload that does not decode shows nobody's, so it stays.
fn mentions(payload: &[u8], app: &str, users: &HashSet<&str>) -> bool {
    queue::decode(payload).is_ok_and(|events| {
        events
            .iter()
            .any(|e| e.app_id == app && e.user_id.as_deref().is_some_and(|u| users.contains(u)))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared::queue::QueuedEvent;

    fn event(app: &str, user: Option<&str>) -> QueuedEvent {
        QueuedEvent {
            event_id: uuid::Uuid::nil(),
            app_id: app.to_owned(),
            event_name: "e".to_owned(),
            occurred_at_us: 0,
            received_at_us: 0,
            user_id: user.map(str::to_owned),
            session_id: None,
            metadata: None,
            client_id: false,
        }
    }

    #[test]
    fn place_keys_are_the_shared_ones() {
        let keys = [
            Place::Events,
            Place::Quarantine,
            Place::DeadLetters,
            Place::SummaryMembers,
        ]
        .map(Place::key);
        assert_eq!(keys, shared::privacy::PLACES);
    }

    #[test]
    fn a_dead_letter_mentions_a_user_only_of_the_same_app() {
        let users: HashSet<&str> = ["u1", "u2"].into();
        let enc = |events: &[QueuedEvent]| queue::encode(events).expect("encode");
        assert!(mentions(&enc(&[event("a", Some("u1"))]), "a", &users));
        assert!(!mentions(&enc(&[event("b", Some("u1"))]), "a", &users));
        assert!(!mentions(&enc(&[event("a", None)]), "a", &users));
        // A raw entry of many events goes when any of them is the user's.
        let many: Vec<_> = (0..60)
            .map(|i| event("a", Some(if i == 59 { "u2" } else { "x" })))
            .collect();
        assert!(mentions(&enc(&many), "a", &users));
        assert!(!mentions(b"\xc1 not messagepack", "a", &users));
    }
}
