//! An open request: loaded at the start of a tick, started, and moved from phase to phase, each
//! step persisted in `erasures`.

use chrono::{DateTime, Utc};
use deadpool_postgres::Object;
use shared::db::DbError;
use uuid::Uuid;

use super::{ErasureError, Progress, State, Step};

/// An open request as loaded at the start of a tick.
pub(super) struct Request {
    pub(super) id: Uuid,
    pub(super) app_id: String,
    pub(super) pending: bool,
    /// `None` while pending, or for a phase this build does not know.
    pub(super) state: Option<State>,
    pub(super) raw_phase: Option<String>,
    pub(super) requested_at: DateTime<Utc>,
    pub(super) dead_letters_after: i64,
    /// The days of the events removed so far (where the users' summary members can be).
    pub(super) days: Vec<chrono::NaiveDate>,
    pub(super) user_ids: Vec<String>,
}

impl Request {
    pub(super) fn progress(&self, state: State, waiting: bool) -> Progress {
        Progress {
            erasure_id: self.id,
            state,
            waiting,
        }
    }
}

/// The oldest open request, with its users' ids.
pub(super) async fn load_oldest(client: &Object) -> Result<Option<Request>, DbError> {
    let Some(row) = client
        .query_opt(
            "SELECT erasure_id, app_id, status, phase, requested_at, dead_letters_after, days \
             FROM erasures WHERE status IN ('pending', 'running') \
             ORDER BY requested_at, erasure_id LIMIT 1",
            &[],
        )
        .await
        .map_err(DbError::query("read open erasures"))?
    else {
        return Ok(None);
    };
    let id: Uuid = row.get(0);
    let status: String = row.get(2);
    let raw_phase: Option<String> = row.get(3);
    let pending = status == "pending";
    let state = match pending {
        true => None,
        false => raw_phase.as_deref().and_then(State::of_phase),
    };
    Ok(Some(Request {
        id,
        app_id: row.get(1),
        pending,
        state,
        raw_phase,
        requested_at: row.get(4),
        dead_letters_after: row.get(5),
        days: row.get(6),
        user_ids: user_ids(client, id).await?,
    }))
}

/// The clear user ids of a request (forgotten once it is done or failed).
async fn user_ids(client: &Object, id: Uuid) -> Result<Vec<String>, DbError> {
    Ok(client
        .query(
            "SELECT user_id FROM erasure_users WHERE erasure_id = $1 AND user_id IS NOT NULL",
            &[&id],
        )
        .await
        .map_err(DbError::query("read erasure users"))?
        .iter()
        .map(|r| r.get(0))
        .collect())
}

/// pending -> running, phase `queue`, every count at zero.
pub(super) async fn start(client: &Object, req: &mut Request) -> Result<(), ErasureError> {
    let places: Vec<&str> = shared::privacy::PLACES.to_vec();
    let n = client
        .execute(
            "UPDATE erasures SET status = 'running', started_at = now(), phase = 'queue', \
             phase_at = clock_timestamp(), \
             removed = (SELECT jsonb_object_agg(p, 0) FROM unnest($2::text[]) p) || removed \
             WHERE erasure_id = $1 AND status = 'pending'",
            &[&req.id, &places],
        )
        .await
        .map_err(DbError::query("start erasure"))?;
    if n != 1 {
        return Err(ErasureError::Vanished(req.id));
    }
    tracing::info!(erasure_id = %req.id, users = req.user_ids.len(), "Erasure started.");
    req.pending = false;
    req.state = Some(State::Queue);
    Ok(())
}

/// Moves a running request from phase `from` to `to`.
pub(super) async fn set_phase(
    client: &Object,
    req: &Request,
    from: State,
    to: State,
) -> Result<Step, ErasureError> {
    let n = client
        .execute(
            "UPDATE erasures SET phase = $3, phase_at = clock_timestamp() \
             WHERE erasure_id = $1 AND status = 'running' AND phase = $2",
            &[&req.id, &from.as_str(), &to.as_str()],
        )
        .await
        .map_err(DbError::query("advance erasure phase"))?;
    if n != 1 {
        return Err(ErasureError::Vanished(req.id));
    }
    tracing::info!(erasure_id = %req.id, phase = to.as_str(), "Erasure moved on.");
    Ok(Step::Next(to))
}
