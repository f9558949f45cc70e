//! Routing of client requests to their handlers, CORS, and the state they share.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use shared::db::Pools;
use shared::ops::{Readiness, ReadyCheck};
use tokio_util::sync::CancellationToken;

use crate::auth::KeyCache;
use crate::config::GatewayConfig;
use crate::queue::Queue;
use crate::stats::{self, Kind::Daily, Kind::Top};
use crate::{ingest, privacy, reply};

/// Every route the gateway answers, as (method, path): the OpenAPI description must list the
/// same (a test checks).
pub const ROUTES: &[(&str, &str)] = &[
    ("post", "/v1/events"),
    ("options", "/v1/events"),
    ("get", "/v1/stats/daily"),
    ("get", "/v1/stats/top-events"),
    ("get", "/"),
    ("get", "/healthz"),
    ("get", "/readyz"),
    ("post", "/v1/batch"),
    ("post", "/v1/track"),
    ("post", "/v1/identify"),
    ("post", "/v1/page"),
    ("post", "/v1/screen"),
    ("post", "/v1/group"),
    ("post", "/v1/alias"),
    ("post", "/batch"),
    ("post", "/batch/"),
    ("post", "/capture"),
    ("post", "/capture/"),
    ("post", "/e"),
    ("post", "/e/"),
    ("post", "/i/v0/e"),
    ("post", "/i/v0/e/"),
    ("post", "/i/v1/analytics/events"),
    ("post", "/api/s/{type}"),
    ("post", "/api/s/s2s/{type}"),
    ("post", "/v1/privacy/erasures"),
    ("get", "/v1/privacy/erasures/{id}"),
];

/// Error codes answered by the router itself, besides [`crate::error::ApiError`]'s.
pub const ROUTER_CODES: &[&str] = &[
    "not_found",
    "method_not_allowed",
    "not_preflight",
    "origin_not_allowed",
];

/// Everything a request handler needs.
pub struct AppState {
    pub config: GatewayConfig,
    pub pools: Pools,
    pub keys: KeyCache,
    pub queue: Arc<Queue>,
    pub cache: Arc<crate::cache::Cache>,
    pub privacy: Arc<crate::privacy::Privacy>,
    pub shutdown: CancellationToken,
}

/// Answers one request; counts it under its route label (a fixed set) with its status.
pub async fn handle(state: Arc<AppState>, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let started = Instant::now();
    let origin = req
        .headers()
        .get(header::ORIGIN)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let (route, mut resp) = match crate::sdk::route(req.uri().path()) {
        Some(sdk) => sdk_route(&state, req, sdk, origin.as_deref()).await,
        None => route(&state, req, origin.as_deref()).await,
    };
    if let Some(o) = origin.as_deref() {
        add_cors(&state, o, &mut resp);
    }
    shared::metrics::http_request(route, resp.status().as_u16(), started.elapsed());
    resp
}

/// The SDK routes: `POST` and CORS preflights.
async fn sdk_route(
    state: &AppState,
    req: Request<Incoming>,
    sdk: crate::sdk::Route,
    origin: Option<&str>,
) -> (&'static str, Response<Full<Bytes>>) {
    match *req.method() {
        Method::POST => (
            sdk.api.route_label(),
            crate::sdk::post(state, req, sdk).await,
        ),
        Method::OPTIONS => ("sdk_preflight", preflight(state, origin)),
        _ => ("sdk_other", method_not_allowed("POST, OPTIONS")),
    }
}

/// Every other route, by path then method: the route label and the answer.
async fn route(
    state: &AppState,
    req: Request<Incoming>,
    origin: Option<&str>,
) -> (&'static str, Response<Full<Bytes>>) {
    let get = matches!(*req.method(), Method::GET | Method::HEAD);
    match (req.method(), req.uri().path()) {
        (&Method::POST, "/v1/events") => ("events", ingest::post_events(state, req).await),
        (&Method::OPTIONS, "/v1/events") => ("events_preflight", preflight(state, origin)),
        (_, "/v1/events") => ("events", method_not_allowed("POST, OPTIONS")),
        (&Method::GET, "/v1/stats/daily") => {
            ("stats_daily", stats::handle(state, req, Daily).await)
        }
        (&Method::GET, "/v1/stats/top-events") => {
            ("stats_top", stats::handle(state, req, Top).await)
        }
        (_, "/v1/stats/daily" | "/v1/stats/top-events") => ("stats", method_not_allowed("GET")),
        (&Method::POST, "/v1/privacy/erasures") => ("privacy", privacy::post(state, req).await),
        (_, "/v1/privacy/erasures") => ("privacy", method_not_allowed("POST")),
        (method, p) if erasure_id(p).is_some() => {
            let id = erasure_id(p).unwrap_or_default().to_owned();
            match *method {
                Method::GET => ("privacy", privacy::get(state, req, &id).await),
                _ => ("privacy", method_not_allowed("GET")),
            }
        }
        (_, "/") if get => ("page", crate::page::serve()),
        (_, "/") => ("page", method_not_allowed("GET, HEAD")),
        (_, "/healthz") if get => ("healthz", healthz()),
        (_, "/readyz") if get => ("readyz", readyz(state).await),
        _ => ("other", not_found()),
    }
}

fn healthz() -> Response<Full<Bytes>> {
    reply::json(StatusCode::OK, &serde_json::json!({"status": "ok"}))
}

/// The `{id}` of `/v1/privacy/erasures/{id}`.
fn erasure_id(path: &str) -> Option<&str> {
    path.strip_prefix("/v1/privacy/erasures/")
        .filter(|id| !id.is_empty() && !id.contains('/'))
}

fn add_cors(state: &AppState, origin: &str, resp: &mut Response<Full<Bytes>>) {
    if let Some(allowed) = state.config.cors.allow(origin) {
        if let Ok(v) = HeaderValue::from_str(&allowed) {
            let h = resp.headers_mut();
            h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, v);
            h.insert(header::VARY, HeaderValue::from_static("Origin"));
        }
    }
}

/// The request headers a browser may send (the SDKs' among them).
const ALLOWED_HEADERS: &str = "authorization, content-type, content-encoding, x-api-key, \
     x-write-key, posthog-sdk-info, posthog-attempt, posthog-request-id, posthog-request-timestamp";

/// The answer to a CORS preflight: `204` with what the origin may send, for a day.
fn preflight(state: &AppState, origin: Option<&str>) -> Response<Full<Bytes>> {
    let Some(origin) = origin else {
        return reply::error(
            StatusCode::BAD_REQUEST,
            "not_preflight",
            "an Origin header is required",
        );
    };
    if state.config.cors.allow(origin).is_none() {
        return reply::error(
            StatusCode::FORBIDDEN,
            "origin_not_allowed",
            "this origin may not send events",
        );
    }
    let mut resp = reply::json(StatusCode::NO_CONTENT, &serde_json::json!({}));
    *resp.body_mut() = Full::new(Bytes::new());
    let h = resp.headers_mut();
    h.remove(header::CONTENT_TYPE);
    h.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("POST, OPTIONS"),
    );
    h.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static(ALLOWED_HEADERS),
    );
    h.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from_static("86400"),
    );
    resp
}

fn not_found() -> Response<Full<Bytes>> {
    reply::error(StatusCode::NOT_FOUND, "not_found", "no such endpoint")
}

fn method_not_allowed(allow: &'static str) -> Response<Full<Bytes>> {
    let mut r = reply::error(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "method not allowed",
    );
    r.headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static(allow));
    r
}

/// The daemon's readiness check: [`readiness`] of the running gateway.
pub fn ready_check(state: Arc<AppState>) -> ReadyCheck {
    Arc::new(move || {
        let state = state.clone();
        Box::pin(async move {
            let (ready, detail) = readiness(&state).await;
            Readiness { ready, detail }
        })
    })
}

/// Ready: not shutting down, and the queue reachable and below its high-water mark.
pub async fn readiness(state: &AppState) -> (bool, serde_json::Value) {
    if state.shutdown.is_cancelled() {
        return (false, serde_json::json!({"shutting_down": true}));
    }
    state.queue.readiness()
}

async fn readyz(state: &AppState) -> Response<Full<Bytes>> {
    let (ready, detail) = readiness(state).await;
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    reply::json(
        status,
        &serde_json::json!({"ready": ready, "detail": detail}),
    )
}
