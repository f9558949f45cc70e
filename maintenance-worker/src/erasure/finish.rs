//! The end of an erasure: the summary folded, the gateways told to retire their cached answers
//! (`privacy_epochs.erasures_done`), and the request done with its clear ids forgotten; or, after
//! [`MAX_ATTEMPTS`] failed attempts, failed (its ids forgotten too).

use std::time::Duration;

use deadpool_postgres::{Object, Transaction};
use shared::db::DbError;
use uuid::Uuid;

use super::{ErasureCtx, ErasureError, Progress, Request, State, Step, MAX_ATTEMPTS};
use crate::jobs::{views, Job};
use crate::metrics;

/// How long the summary phase waits at most for streaming replicas to replay the fold; a
/// replica the worker's role cannot see the position of (it lacks `pg_monitor`) is waited
/// for this long.
pub const REPLICA_WAIT: Duration = Duration::from_secs(30);

/// One more erasure done for the app: the gateways retire the app's cached answers.
const BUMP_ERASURES_DONE: &str = "INSERT INTO privacy_epochs (app_id, erasures_done) \
    VALUES ($1, 1) \
    ON CONFLICT (app_id) DO UPDATE SET erasures_done = privacy_epochs.erasures_done + 1";

/// Folds the summary (recomputing the dirty days) and records the WAL position after it; once
/// every streaming replica has replayed that far (gateways read stats there), bumps the app's
/// `erasures_done` and enters `cache`, in one transaction so the bump happens once.
pub(super) async fn summary(
    ctx: &ErasureCtx,
    client: &mut Object,
    req: &Request,
) -> Result<Step, ErasureError> {
    if !fold_once(ctx, client, req).await? || !replicas_caught_up(client, req).await? {
        return Ok(Step::Wait);
    }
    let tx = client
        .transaction()
        .await
        .map_err(DbError::query("begin erasure cache bump"))?;
    tx.execute(BUMP_ERASURES_DONE, &[&req.app_id])
        .await
        .map_err(DbError::query("bump erasures_done"))?;
    let n = tx
        .execute(
            "UPDATE erasures SET phase = 'cache', phase_at = clock_timestamp() \
             WHERE erasure_id = $1 AND status = 'running' AND phase = 'summary'",
            &[&req.id],
        )
        .await
        .map_err(DbError::query("advance erasure phase"))?;
    if n != 1 {
        return Err(ErasureError::Vanished(req.id));
    }
    tx.commit()
        .await
        .map_err(DbError::query("commit erasure cache bump"))?;
    tracing::info!(erasure_id = %req.id, phase = "cache", "Erasure moved on.");
    Ok(Step::Next(State::Cache))
}

/// The fold done once: true when it was done before, or now (its WAL position recorded); false
/// while a fold runs elsewhere.
async fn fold_once(ctx: &ErasureCtx, client: &Object, req: &Request) -> Result<bool, ErasureError> {
    let folded: bool = client
        .query_one(
            "SELECT fold_lsn IS NOT NULL FROM erasures WHERE erasure_id = $1",
            &[&req.id],
        )
        .await
        .map_err(DbError::query("read erasure fold"))?
        .get(0);
    if folded {
        return Ok(true);
    }
    if !fold(ctx, client, req).await? {
        return Ok(false);
    }
    client
        .execute(
            "UPDATE erasures SET fold_lsn = pg_current_wal_lsn(), phase_at = clock_timestamp() \
             WHERE erasure_id = $1 AND status = 'running' AND phase = 'summary'",
            &[&req.id],
        )
        .await
        .map_err(DbError::query("record erasure fold"))?;
    Ok(true)
}

/// The views fold with this erasure's events taken out of the summary, under the views job's
/// lock (false: a fold is running elsewhere, try again).
async fn fold(ctx: &ErasureCtx, client: &Object, req: &Request) -> Result<bool, ErasureError> {
    let key = Job::Views.lock_key();
    let locked: bool = client
        .query_one("SELECT pg_try_advisory_lock($1)", &[&key])
        .await
        .map_err(DbError::query("take the views lock"))?
        .get(0);
    if !locked {
        return Ok(false);
    }
    let erased = views::Erased {
        erasure_id: req.id,
        app_id: &req.app_id,
    };
    let out = views::fold(&ctx.jobs.db, Some(erased)).await;
    let _ = client
        .query_one("SELECT pg_advisory_unlock($1)", &[&key])
        .await;
    let detail = out?;
    let members = detail["erased_user_members"].as_u64().unwrap_or(0);
    metrics::erasure_rows(super::delete::Place::SummaryMembers.key(), members);
    Ok(true)
}

/// Every streaming replica has replayed the fold, or [`REPLICA_WAIT`] has passed since it.
async fn replicas_caught_up(client: &Object, req: &Request) -> Result<bool, ErasureError> {
    let (behind, waited): (i64, bool) = client
        .query_one(
            "SELECT (SELECT count(*) FROM pg_stat_replication r \
                      WHERE r.replay_lsn IS NULL OR r.replay_lsn < e.fold_lsn), \
                    clock_timestamp() - e.phase_at > $2::bigint * interval '1 ms' \
               FROM erasures e WHERE e.erasure_id = $1",
            &[&req.id, &(REPLICA_WAIT.as_millis() as i64)],
        )
        .await
        .map(|r| (r.get(0), r.get(1)))
        .map_err(DbError::query("read replicas' replay"))?;
    if behind > 0 && waited {
        tracing::warn!(erasure_id = %req.id, replicas = behind, "Replicas have not replayed the erasure's summary (or their position cannot be read: grant pg_monitor); going on.");
    }
    Ok(behind == 0 || waited)
}

/// Once the bump has been visible for the cache wait: done, the clear ids forgotten.
pub(super) async fn cache(
    ctx: &ErasureCtx,
    client: &mut Object,
    req: &Request,
) -> Result<Step, ErasureError> {
    if !cache_waited(ctx, client, req).await? {
        return Ok(Step::Wait);
    }
    let tx = client
        .transaction()
        .await
        .map_err(DbError::query("begin erasure finish"))?;
    let removed: Option<serde_json::Value> = tx
        .query_opt(
            "UPDATE erasures SET status = 'done', phase = NULL, phase_at = NULL, \
             finished_at = now() WHERE erasure_id = $1 AND status = 'running' AND phase = 'cache' \
             RETURNING removed",
            &[&req.id],
        )
        .await
        .map_err(DbError::query("finish erasure"))?
        .map(|r| r.get(0));
    let Some(removed) = removed else {
        return Err(ErasureError::Vanished(req.id));
    };
    forget_ids(&tx, req.id).await?;
    tx.commit()
        .await
        .map_err(DbError::query("commit erasure finish"))?;
    metrics::erasure_finished("done");
    tracing::info!(erasure_id = %req.id, %removed, "Erasure done.");
    Ok(Step::Next(State::Done))
}

/// Milliseconds since the request entered its phase.
const PHASE_MS: &str = "SELECT \
    coalesce(extract(epoch FROM clock_timestamp() - phase_at) * 1000, 0)::float8 \
    FROM erasures WHERE erasure_id = $1";

/// The request has been in phase `cache` for the cache wait.
async fn cache_waited(ctx: &ErasureCtx, client: &Object, req: &Request) -> Result<bool, DbError> {
    let waited_ms: f64 = client
        .query_one(PHASE_MS, &[&req.id])
        .await
        .map_err(DbError::query("read erasure phase time"))?
        .get(0);
    Ok(waited_ms >= ctx.cache_wait.as_millis() as f64)
}

async fn forget_ids(tx: &Transaction<'_>, id: Uuid) -> Result<(), DbError> {
    tx.execute(
        "UPDATE erasure_users SET user_id = NULL WHERE erasure_id = $1",
        &[&id],
    )
    .await
    .map_err(DbError::query("forget erased user ids"))?;
    Ok(())
}

/// Counts a failed attempt and keeps its error; the last allowed attempt fails the request
/// (its clear ids forgotten). Returns the request failed, or the error to retry next tick.
pub(super) async fn record_failure(
    client: &mut Object,
    req: &Request,
    e: ErasureError,
) -> Result<Progress, ErasureError> {
    let tx = client
        .transaction()
        .await
        .map_err(DbError::query("begin erasure failure"))?;
    let status: Option<String> = tx
        .query_opt(
            "UPDATE erasures SET attempts = attempts + 1, error = $2, \
             status = CASE WHEN attempts + 1 >= $3 THEN 'failed' ELSE status END, \
             phase = CASE WHEN attempts + 1 >= $3 THEN NULL ELSE phase END, \
             finished_at = CASE WHEN attempts + 1 >= $3 THEN now() END \
             WHERE erasure_id = $1 AND status IN ('pending', 'running') RETURNING status",
            &[&req.id, &e.to_string(), &MAX_ATTEMPTS],
        )
        .await
        .map_err(DbError::query("record erasure failure"))?
        .map(|r| r.get(0));
    if status.as_deref() == Some("failed") {
        forget_ids(&tx, req.id).await?;
    }
    tx.commit()
        .await
        .map_err(DbError::query("commit erasure failure"))?;
    if status.as_deref() != Some("failed") {
        return Err(e);
    }
    metrics::erasure_finished("failed");
    tracing::error!(erasure_id = %req.id, error = %e, attempts = MAX_ATTEMPTS, "Erasure failed.");
    Ok(req.progress(State::Failed, false))
}
