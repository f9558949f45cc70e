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
use crate::auth::{authenticate, Grant};
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

/// Counts the events of a request that was queued: those queued as accepted, those refused one
/// by one as invalid.
pub fn count_accepted(api: &'static str, queued: usize, rejected: usize) {
    metrics::events_accepted(api, queued as u64);
    if rejected > 0 {
        metrics::events_rejected(api, "invalid_event", rejected as u64);
    }
}

async fn handle(
    state: &AppState,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, ApiError> {
    if state.shutdown.is_cancelled() {
        return Err(ApiError::ShuttingDown);
    }
    let grant = authenticate(state, &req, KeyKind::Ingest).await?;
    let bytes = read_body(state, req).await?;
    let decoded = decode(state, &grant, &bytes)?;
    let queued = enqueue(state, "native", &grant, &decoded.valid).await?;
    count_accepted("native", queued, decoded.rejected.len());
    Ok(crate::reply::json(
        StatusCode::ACCEPTED,
        &serde_json::json!({"accepted": decoded.valid.len(), "rejected": decoded.rejected}),
    ))
}

/// The body, within the size and time limits, inflated when gzip.
async fn read_body(state: &AppState, req: Request<Incoming>) -> Result<Bytes, ApiError> {
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
    Ok(bytes)
}

/// The body's events, validated one by one for the app; an error when none is valid.
fn decode(state: &AppState, grant: &Grant, bytes: &[u8]) -> Result<validate::Decoded, ApiError> {
    let received_at = Utc::now();
    let ctx = validate::Context {
        app_id: &grant.app_id,
        received_at,
        oldest: retention_floor(received_at, state.config.retention_months),
        max_events: state.config.max_events_per_request,
    };
    let decoded = validate::body(bytes, &ctx)?;
    if decoded.valid.is_empty() {
        return Err(ApiError::AllInvalid(decoded.rejected));
    }
    Ok(decoded)
}
