//! `POST /v1/events`: authenticate, read the body within limits, validate each event, apply the
//! rate limit, queue the valid events, and answer 202 only once Redis has them.

use bytes::Bytes;
use chrono::Utc;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use shared::metrics;
use shared::schema::partitions::retention_floor;

use crate::apps::KeyKind;
use crate::auth::{presented_key, Grant, KeyCheck};
use crate::error::ApiError;
use crate::routes::AppState;
use crate::{body, validate};

pub async fn post_events(state: &AppState, req: Request<Incoming>) -> Response<Full<Bytes>> {
    match handle(state, req).await {
        Ok(resp) => resp,
        Err(e) => {
            count_refusal("native", &e);
            e.into_response()
        }
    }
}

/// Counts the events of a refused request as rejected, under the route family `api`.
pub fn count_refusal(api: &'static str, e: &ApiError) {
    let (_, _, _, reason) = e.parts();
    let n = match e {
        ApiError::AllInvalid(r) => r.len() as u64,
        _ => 1,
    };
    metrics::events_rejected(api, reason, n);
}

/// The app behind the request's key, which must be of kind `want`.
pub async fn authenticate(
    state: &AppState,
    req: &Request<Incoming>,
    want: KeyKind,
) -> Result<Grant, ApiError> {
    let key = presented_key(req.headers(), req.uri().query()).ok_or(ApiError::MissingKey)?;
    grant_for(state, key, want).await
}

/// The app behind `key`, which must be of kind `want`.
pub async fn grant_for(state: &AppState, key: &str, want: KeyKind) -> Result<Grant, ApiError> {
    let grant = match state.keys.check(&state.pools.write, key).await {
        Ok(KeyCheck::Live(g)) => g,
        Ok(KeyCheck::Unknown) => return Err(ApiError::UnknownKey),
        Ok(KeyCheck::Revoked) => return Err(ApiError::RevokedKey),
        Ok(KeyCheck::Busy) => return Err(ApiError::KeyLookupBusy),
        Err(e) => {
            tracing::warn!(error = %e, "Cannot look an API key up.");
            return Err(ApiError::DbUnavailable);
        }
    };
    match (want, grant.kind) {
        (want, kind) if want == kind => Ok(grant),
        (_, KeyKind::Admin) => Err(ApiError::AdminKeyCannotIngestOrRead),
        (KeyKind::Admin, _) => Err(ApiError::AdminKeyRequired),
        (KeyKind::Ingest, _) => Err(ApiError::ReadKeyCannotIngest),
        (KeyKind::Read, _) => Err(ApiError::IngestKeyCannotRead),
    }
}

/// The app's rate limit, the suppression list, then the queue: what every ingest route does with
/// its valid events. Returns how many were queued; the suppressed users' events are counted
/// under `api` and dropped (the client hears them accepted).
pub async fn enqueue(
    state: &AppState,
    api: &'static str,
    grant: &Grant,
    events: &[shared::queue::QueuedEvent],
) -> Result<usize, ApiError> {
    let limit = grant
        .rate_limit
        .unwrap_or(state.config.rate_limit_events_per_sec);
    if limit > 0
        && !state
            .queue
            .rate_allows(&grant.app_id, events.len(), limit)
            .await?
    {
        return Err(ApiError::RateLimited { limit });
    }
    let (events, suppressed) = state.privacy.without_suppressed(&grant.app_id, events);
    if suppressed > 0 {
        metrics::events_suppressed(api, suppressed as u64);
    }
    if !events.is_empty() {
        state.queue.push(&events).await?;
    }
    Ok(events.len())
}

async fn handle(
    state: &AppState,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, ApiError> {
    if state.shutdown.is_cancelled() {
        return Err(ApiError::ShuttingDown);
    }
    let grant = authenticate(state, &req, KeyKind::Ingest).await?;
    let gzip = body::check_headers(req.headers())?;
    let (parts, incoming) = req.into_parts();
    let cfg = &state.config;
    let bytes = body::read(
        &parts.headers,
        incoming,
        gzip,
        cfg.max_body_bytes,
        cfg.body_read_timeout,
    )
    .await?;
    let received_at = Utc::now();
    let ctx = validate::Context {
        app_id: &grant.app_id,
        received_at,
        oldest: retention_floor(received_at, cfg.retention_months),
        max_events: cfg.max_events_per_request,
    };
    let decoded = validate::body(&bytes, &ctx)?;
    if decoded.valid.is_empty() {
        return Err(ApiError::AllInvalid(decoded.rejected));
    }
    let queued = enqueue(state, "native", &grant, &decoded.valid).await?;
    let accepted = decoded.valid.len();
    metrics::events_accepted("native", queued as u64);
    if !decoded.rejected.is_empty() {
        metrics::events_rejected("native", "invalid_event", decoded.rejected.len() as u64);
    }
    Ok(crate::reply::json(
        StatusCode::ACCEPTED,
        &serde_json::json!({"accepted": accepted, "rejected": decoded.rejected}),
    ))
}
