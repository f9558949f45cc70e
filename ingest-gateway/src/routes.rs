//! Routing of client requests to their handlers, and the state they share.

use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use shared::db::Pools;
use tokio_util::sync::CancellationToken;

use crate::config::GatewayConfig;
use crate::reply;

/// Everything a request handler needs.
pub struct AppState {
    pub config: GatewayConfig,
    pub pools: Pools,
    pub shutdown: CancellationToken,
}

pub async fn handle(state: Arc<AppState>, req: Request<Incoming>) -> Response<Full<Bytes>> {
    match (req.method(), req.uri().path()) {
        (&Method::GET | &Method::HEAD, "/healthz") => {
            reply::json(StatusCode::OK, &serde_json::json!({"status": "ok"}))
        }
        (&Method::GET | &Method::HEAD, "/readyz") => readyz(&state).await,
        _ => reply::error(StatusCode::NOT_FOUND, "not_found", "no such endpoint"),
    }
}

async fn readyz(state: &AppState) -> Response<Full<Bytes>> {
    if state.shutdown.is_cancelled() {
        return reply::json(
            StatusCode::SERVICE_UNAVAILABLE,
            &serde_json::json!({"ready": false, "detail": {"shutting_down": true}}),
        );
    }
    reply::json(StatusCode::OK, &serde_json::json!({"ready": true}))
}
