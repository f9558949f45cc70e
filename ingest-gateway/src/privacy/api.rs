//! The privacy routes: `POST /v1/privacy/erasures` and `GET /v1/privacy/erasures/{id}`, for
//! the app's admin key only.

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use serde::Deserialize;
use shared::privacy::user_digest;
use uuid::Uuid;

use super::erasure::{check_user_ids, create_erasure, get_erasure, Erasure};
use crate::apps::KeyKind;
use crate::auth::{grant_for, presented_key, Grant};
use crate::error::ApiError;
use crate::routes::AppState;

/// The largest erasure request body: 1,000 ids of 200 bytes, each byte escaped as `\\u00XX`.
pub const MAX_ERASURE_BODY: usize = 2 * 1024 * 1024;

/// The body of `POST /v1/privacy/erasures`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ErasureBody {
    user_ids: Vec<String>,
    #[serde(default)]
    suppress: bool,
}

/// The app of the request's admin key, taken from a header only: a key in the query string
/// ends up in proxies' and servers' access logs.
async fn admin(state: &AppState, req: &Request<Incoming>) -> Result<Grant, ApiError> {
    let key = presented_key(req.headers(), None).ok_or(ApiError::MissingKey)?;
    grant_for(state, key, KeyKind::Admin).await
}

/// `POST /v1/privacy/erasures`.
pub async fn post(state: &AppState, req: Request<Incoming>) -> Response<Full<Bytes>> {
    match post_inner(state, req).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn post_inner(
    state: &AppState,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, ApiError> {
    if state.shutdown.is_cancelled() {
        return Err(ApiError::ShuttingDown);
    }
    let grant = admin(state, &req).await?;
    let body = read_body(state, req).await?;
    let ids = check_user_ids(&body.user_ids).map_err(ApiError::InvalidErasure)?;
    let erasure = record(state, &grant, &ids, body.suppress).await?;
    tracing::info!(erasure_id = %erasure.erasure_id, app_id = %grant.app_id, users = ids.len(), suppress = body.suppress, "Erasure requested.");
    Ok(crate::reply::json(
        StatusCode::ACCEPTED,
        &serde_json::json!({"erasure_id": erasure.erasure_id, "status": erasure.status}),
    ))
}

/// The request's body, within [`MAX_ERASURE_BODY`] and the body read timeout.
async fn read_body(state: &AppState, req: Request<Incoming>) -> Result<ErasureBody, ApiError> {
    let gzip = crate::body::check_headers(req.headers())?;
    let (parts, incoming) = req.into_parts();
    let bytes = crate::body::read(
        &parts.headers,
        incoming,
        gzip,
        MAX_ERASURE_BODY,
        state.config.body_read_timeout,
    )
    .await?;
    serde_json::from_slice(&bytes).map_err(|e| {
        ApiError::InvalidErasure(format!(
            "the body must be {{\"user_ids\": [\"...\"], \"suppress\": true|false}}: {e}"
        ))
    })
}

/// Records the request; a suppression applies on this gateway before the answer.
async fn record(
    state: &AppState,
    grant: &Grant,
    ids: &[String],
    suppress: bool,
) -> Result<Erasure, ApiError> {
    let (erasure, epoch) = create_erasure(&state.pools.write, &grant.app_id, ids, suppress)
        .await
        .map_err(|e| {
            tracing::warn!(error = %e, "Cannot record an erasure request.");
            ApiError::DbUnavailable
        })?;
    if let Some(epoch) = epoch {
        let digests: Vec<[u8; 32]> = ids.iter().map(|u| user_digest(&grant.app_id, u)).collect();
        state.privacy.add_local(&grant.app_id, epoch, &digests);
    }
    Ok(erasure)
}

/// `GET /v1/privacy/erasures/{id}`.
pub async fn get(state: &AppState, req: Request<Incoming>, id: &str) -> Response<Full<Bytes>> {
    let answer = async {
        let grant = admin(state, &req).await?;
        let id = Uuid::try_parse(id).map_err(|_| ApiError::ErasureNotFound)?;
        let erasure = get_erasure(&state.pools.write, &grant.app_id, id)
            .await
            .map_err(|e| {
                tracing::warn!(error = %e, "Cannot read an erasure request.");
                ApiError::DbUnavailable
            })?
            .ok_or(ApiError::ErasureNotFound)?;
        Ok::<_, ApiError>(crate::reply::json(StatusCode::OK, &erasure))
    };
    answer.await.unwrap_or_else(ApiError::into_response)
}
