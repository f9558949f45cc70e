//! Erasure requests carried out (migration 0007, `docs/privacy.md`). The leader takes the oldest
//! open request and advances it through its phases, each persisted in `erasures.phase`, so a
//! restart of any daemon resumes where it was:
//!
//! 1. `pending` becomes `running`, in phase `queue`.
//! 2. `queue`: waits until every pipeline's queue low-water mark is [`QUEUE_MARGIN`] past the
//!    request, so everything queued before it has been written or dead-lettered.
//! 3. `delete` (`erasure/delete.rs`): dead letters, quarantine, every partition, then summary
//!    members, in bounded batches that each commit their counts in `removed`.
//! 4. `summary` (`erasure/finish.rs`): the views fold recomputes the days the deletions marked
//!    dirty.
//! 5. `cache`: `privacy_epochs.erasures_done` is bumped, then [`CACHE_WAIT`] later the request is
//!    done and its clear ids are forgotten.
//!
//! Errors that are transient leave the request for the next tick; others count an attempt, and
//! the [`MAX_ATTEMPTS`]th fails it.
//!
//! Only rows are deleted, never tables locked, so writers never wait on an erasure. Each tick
//! holds the advisory lock [`LOCK_KEY`], so the daemon and `erasures run-once` never work at once.

mod delete;
mod finish;
mod request;

use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::Object;
use serde::Serialize;
use shared::db::DbError;
use shared::tasks::Tasks;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::jobs::JobCtx;
use crate::leader::Leadership;
use request::{load_oldest, set_phase, start, Request};

/// The advisory lock a tick holds (beside the jobs' `0x736c_7569_6365_1000 + n` and the
/// leader's `..._2000`).
pub const LOCK_KEY: i64 = 0x736c_7569_6365_3000;

/// How often the leader looks at the open requests.
pub const TICK: Duration = Duration::from_secs(1);

/// Rows one batch deletes, at most; each batch is one short transaction.
pub const BATCH_ROWS: i64 = 5_000;

/// How far past a request every queue's low-water mark must be: a push a gateway started before
/// the request and Redis took late (within the gateway's Redis timeout), and a suppression
/// reaching every gateway (notified within milliseconds). The mark is in PostgreSQL's clock.
pub const QUEUE_MARGIN: Duration = Duration::from_secs(5);

/// How long the bump of `erasures_done` is visible before the request is done: ample for every
/// gateway to hear its notification, so whoever sees "done" and then reads the stats API is
/// answered without the erased users.
pub const CACHE_WAIT: Duration = Duration::from_millis(1200);

/// Failed attempts (errors that are not transient) after which a request is `failed`.
pub const MAX_ATTEMPTS: i32 = 5;

/// What the executor needs.
#[derive(Clone, Debug)]
pub struct ErasureCtx {
    pub jobs: JobCtx,
    /// Rows one batch deletes, at most.
    pub batch_rows: i64,
    /// Batches one tick runs, at most (tests interrupt a request with it); `None` goes on
    /// until the request is done or must wait.
    pub batches_per_tick: Option<u32>,
    pub cache_wait: Duration,
    /// Cancelled at shutdown: a tick stops between batches.
    pub stop: CancellationToken,
}

impl ErasureCtx {
    pub fn new(jobs: JobCtx, stop: CancellationToken) -> Self {
        Self {
            jobs,
            batch_rows: BATCH_ROWS,
            batches_per_tick: None,
            cache_wait: CACHE_WAIT,
            stop,
        }
    }
}

/// Where a request is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    Queue,
    Delete,
    Summary,
    Cache,
    Done,
    Failed,
}

impl State {
    /// The `phase` (or, for the last two, `status`) value stored.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Queue => "queue",
            State::Delete => "delete",
            State::Summary => "summary",
            State::Cache => "cache",
            State::Done => "done",
            State::Failed => "failed",
        }
    }

    fn of_phase(phase: &str) -> Option<State> {
        [State::Queue, State::Delete, State::Summary, State::Cache]
            .into_iter()
            .find(|s| s.as_str() == phase)
    }
}

/// Where one tick left a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Progress {
    pub erasure_id: Uuid,
    pub state: State,
    /// It can go no further until time passes (the queue, the cache wait, a views fold running
    /// elsewhere); false when the tick stopped on its batch budget or at shutdown.
    pub waiting: bool,
}

/// Why a tick did not complete.
#[derive(Debug, thiserror::Error)]
pub enum ErasureError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("erasures are being carried out by another process")]
    Busy,
    #[error("erasure {0} is in phase {1:?}, which this build does not know")]
    UnknownPhase(Uuid, Option<String>),
    #[error("erasure {0} changed or disappeared while being carried out")]
    Vanished(Uuid),
}

impl ErasureError {
    /// Transient errors leave the request as it is for the next tick; others count an attempt.
    pub fn is_transient(&self) -> bool {
        match self {
            ErasureError::Db(e) => e.is_transient(),
            ErasureError::Busy => true,
            ErasureError::UnknownPhase(..) | ErasureError::Vanished(_) => false,
        }
    }
}

/// What a phase did.
enum Step {
    Next(State),
    /// Blocked until time passes.
    Wait,
    /// Out of batches for this tick, or stopping.
    Pause,
}

/// Batches left in a tick.
struct Budget<'a> {
    rows: i64,
    batches_left: Option<u32>,
    stop: &'a CancellationToken,
}

impl Budget<'_> {
    fn exhausted(&self) -> bool {
        self.stop.is_cancelled() || self.batches_left == Some(0)
    }

    fn spend(&mut self) {
        if let Some(n) = &mut self.batches_left {
            *n = n.saturating_sub(1);
        }
    }
}

/// Advances the oldest open request as far as it can go now, under [`LOCK_KEY`]. `None` when no
/// request is open.
pub async fn tick(ctx: &ErasureCtx) -> Result<Option<Progress>, ErasureError> {
    // A job slot keeps the pool within its budget: this tick's connection, plus the views
    // fold's two when it runs one (which takes the other slot).
    let _slot = crate::jobs::slot().await;
    let mut client = ctx.jobs.db.get("erasure lock").await?;
    let locked: bool = client
        .query_one("SELECT pg_try_advisory_lock($1)", &[&LOCK_KEY])
        .await
        .map_err(DbError::query("take erasure lock"))?
        .get(0);
    if !locked {
        return Err(ErasureError::Busy);
    }
    let out = advance_oldest(ctx, &mut client).await;
    let unlocked = client
        .query_one("SELECT pg_advisory_unlock($1)", &[&LOCK_KEY])
        .await;
    if unlocked.is_err() {
        // A session that may still hold the lock must not go back to the pool: closing it
        // frees the lock.
        drop(Object::take(client));
    }
    out
}

/// Ticks until no request is open, the oldest must wait for something other than the cache wait
/// (which it sleeps through), or `stop`; the `erasures run-once` command. Returns where each
/// request it touched was left.
pub async fn run_open(ctx: &ErasureCtx) -> Result<Vec<Progress>, ErasureError> {
    let mut seen: Vec<Progress> = Vec::new();
    while let Some(p) = tick(ctx).await? {
        match seen.last_mut() {
            Some(last) if last.erasure_id == p.erasure_id => *last = p,
            _ => seen.push(p),
        }
        if (p.waiting && p.state != State::Cache) || ctx.stop.is_cancelled() {
            break;
        }
        if p.waiting {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(seen)
}

/// The erasure loop of the daemon: a tick every [`TICK`] while this replica leads.
pub fn spawn(ctx: ErasureCtx, leader: Leadership, watched: &Tasks) -> tokio::task::JoinHandle<()> {
    let stop = watched.stop_token();
    let ctx = Arc::new(ctx);
    watched.spawn(
        "erasures",
        shared::shutdown::every(TICK, stop, move || {
            let (ctx, leader) = (ctx.clone(), leader.clone());
            async move {
                if leader.is_leader() {
                    log_tick(tick(&ctx).await);
                }
            }
        }),
    )
}

fn log_tick(out: Result<Option<Progress>, ErasureError>) {
    match out {
        Ok(_) => {}
        Err(ErasureError::Busy) => {
            tracing::debug!("Erasures are being carried out by another process.")
        }
        Err(e) if e.is_transient() => {
            tracing::warn!(error = %e, "Erasure tick failed; retrying next tick.")
        }
        Err(e) => tracing::error!(error = %e, "Erasure tick failed."),
    }
}

async fn advance_oldest(
    ctx: &ErasureCtx,
    client: &mut Object,
) -> Result<Option<Progress>, ErasureError> {
    let Some(mut req) = load_oldest(client).await? else {
        return Ok(None);
    };
    match advance(ctx, client, &mut req).await {
        Ok(p) => Ok(Some(p)),
        Err(e) if e.is_transient() => Err(e),
        Err(e) => finish::record_failure(client, &req, e).await.map(Some),
    }
}

/// Runs phases until one must wait or pause, or the request is done.
async fn advance(
    ctx: &ErasureCtx,
    client: &mut Object,
    req: &mut Request,
) -> Result<Progress, ErasureError> {
    if req.pending {
        start(client, req).await?;
    }
    let mut budget = Budget {
        rows: ctx.batch_rows.max(1),
        batches_left: ctx.batches_per_tick,
        stop: &ctx.stop,
    };
    loop {
        let Some(state) = req.state else {
            return Err(ErasureError::UnknownPhase(req.id, req.raw_phase.clone()));
        };
        let step = match state {
            State::Queue => queue(client, req).await?,
            State::Delete => delete::run(client, req, &mut budget).await?,
            State::Summary => finish::summary(ctx, client, req).await?,
            State::Cache => finish::cache(ctx, client, req).await?,
            State::Done | State::Failed => return Ok(req.progress(state, false)),
        };
        match step {
            Step::Next(next) => req.state = Some(next),
            Step::Wait => return Ok(req.progress(state, true)),
            Step::Pause => return Ok(req.progress(state, false)),
        }
    }
}

/// Waits for every pipeline's low-water mark to pass the request. No pipeline at all means
/// nothing was ever queued; a pipeline that has not reported a mark yet is waited for.
async fn queue(client: &Object, req: &Request) -> Result<Step, ErasureError> {
    let after = req.requested_at + QUEUE_MARGIN;
    let behind: i64 = client
        .query_one(
            "SELECT count(*) FROM stream_pipelines \
             WHERE queue_low_water_db IS NULL OR queue_low_water_db < $1",
            &[&after],
        )
        .await
        .map_err(DbError::query("read queue low water"))?
        .get(0);
    if behind > 0 {
        tracing::debug!(erasure_id = %req.id, pipelines = behind, "Erasure waits for the queue.");
        return Ok(Step::Wait);
    }
    set_phase(client, req, State::Queue, State::Delete).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_round_trip_and_statuses_are_not_phases() {
        for s in [State::Queue, State::Delete, State::Summary, State::Cache] {
            assert_eq!(State::of_phase(s.as_str()), Some(s));
        }
        assert_eq!(State::of_phase("done"), None);
        assert_eq!(State::of_phase("bogus"), None);
    }

    #[test]
    fn a_budget_runs_out_or_stops() {
        let stop = CancellationToken::new();
        let mut b = Budget {
            rows: 2,
            batches_left: Some(1),
            stop: &stop,
        };
        assert!(!b.exhausted());
        b.spend();
        assert!(b.exhausted());
        let unbounded = Budget {
            rows: 2,
            batches_left: None,
            stop: &stop,
        };
        assert!(!unbounded.exhausted());
        stop.cancel();
        assert!(unbounded.exhausted());
    }
}
