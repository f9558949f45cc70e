//! The analytics SDKs' own formats on the gateway's port: Segment and RudderStack
//! (`/v1/batch`, `/v1/track`, ...), PostHog (`/batch/`, `/e/`, `/capture/`, `/i/v0/e/`,
//! `/i/v1/analytics/events`) and Jitsu (`/api/s/{type}`, `/api/s/s2s/{type}`).
//!
//! Each request goes the way of `POST /v1/events` (key cache, rate limit, backpressure, queue,
//! dedupe, metrics); only the envelope, where the key is, the mapping of a message
//! ([`map`]) and the answer differ. Every SDK here counts a request as delivered on exactly
//! `200` with a JSON body, and RudderStack's Python SDK retries a 4xx whose body lacks `code` or
//! `message`: every answer here is `200` JSON on success and `{"code", "message"}` otherwise.
//!
//! Here: the routes and a request's steps. `keys.rs`: where each family's key is.
//! `envelope.rs`: bodies as messages. [`map`]: one message onto an event (pure). `outcome.rs`:
//! every message mapped, and each family's answer.

mod envelope;
mod keys;
pub mod map;
mod outcome;

use bytes::Bytes;
use chrono::Utc;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use shared::schema::partitions::retention_floor;

use crate::error::ApiError;
use crate::ingest::{count_accepted, count_refusal, enqueue};
use crate::routes::AppState;
use envelope::{check_count, header_sent_at, parse, unform, Parsed};
use keys::{body_grant, header_grant};
use outcome::map_all;

/// Messages in one SDK request, at most (Segment's own limit).
pub const MAX_MESSAGES: usize = 2500;

/// The SDK families, the `api` label of the event counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    Segment,
    PostHog,
    PostHogV1,
    Jitsu,
}

impl Api {
    /// The `api` label: one value per wire format family.
    pub fn label(self) -> &'static str {
        match self {
            Api::Segment => "segment",
            Api::PostHog | Api::PostHogV1 => "posthog",
            Api::Jitsu => "jitsu",
        }
    }

    /// The `route` label of the request duration histogram.
    pub fn route_label(self) -> &'static str {
        match self {
            Api::Segment => "sdk_segment",
            Api::PostHog | Api::PostHogV1 => "sdk_posthog",
            Api::Jitsu => "sdk_jitsu",
        }
    }
}

/// An SDK route: the family, and the message type a single-message route or a Jitsu path names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    pub api: Api,
    pub kind: Option<&'static str>,
}

/// Segment's single-message routes, with the type each one sets.
const SEGMENT_SINGLE: &[(&str, &str)] = &[
    ("/v1/track", "track"),
    ("/v1/identify", "identify"),
    ("/v1/page", "page"),
    ("/v1/screen", "screen"),
    ("/v1/group", "group"),
    ("/v1/alias", "alias"),
];

/// PostHog's v0 routes (posthog-node and posthog-python use `/batch/`, posthog-js `/e/`).
pub const POSTHOG_PATHS: &[&str] = &[
    "/batch",
    "/batch/",
    "/capture",
    "/capture/",
    "/e",
    "/e/",
    "/i/v0/e",
    "/i/v0/e/",
];

/// The SDK route of a path, if it is one. Jitsu's `{type}` must be one of the Segment types.
pub fn route(path: &str) -> Option<Route> {
    let (api, kind) = match path {
        "/v1/batch" => (Api::Segment, None),
        "/i/v1/analytics/events" => (Api::PostHogV1, None),
        p if POSTHOG_PATHS.contains(&p) => (Api::PostHog, None),
        p => match SEGMENT_SINGLE.iter().find(|(single, _)| *single == p) {
            Some(&(_, kind)) => (Api::Segment, Some(kind)),
            None => (Api::Jitsu, Some(jitsu_type(p)?)),
        },
    };
    Some(Route { api, kind })
}

/// The `{type}` of `/api/s/{type}` and `/api/s/s2s/{type}`.
fn jitsu_type(path: &str) -> Option<&'static str> {
    let jitsu = path
        .strip_prefix("/api/s/s2s/")
        .or_else(|| path.strip_prefix("/api/s/"))?;
    map::SEGMENT_TYPES
        .iter()
        .find(|(t, _)| *t == jitsu)
        .map(|&(t, _)| t)
}

pub async fn post(state: &AppState, req: Request<Incoming>, route: Route) -> Response<Full<Bytes>> {
    match handle(state, req, route).await {
        Ok(resp) => resp,
        Err(e) => {
            count_refusal(route.api.label(), &e);
            e.into_sdk_response()
        }
    }
}

async fn handle(
    state: &AppState,
    req: Request<Incoming>,
    route: Route,
) -> Result<Response<Full<Bytes>>, ApiError> {
    if state.shutdown.is_cancelled() {
        return Err(ApiError::ShuttingDown);
    }
    let api = route.api;
    let early = header_grant(state, api, req.headers()).await?;
    let (parts, bytes) = read_body(state, req, api).await?;
    let parsed = parse(api, route, &bytes)?;
    check_count(parsed.messages.len())?;
    let (grant, request_key) = body_grant(state, api, early, &parsed).await?;
    let ctx = mapping_context(state, &grant.app_id, &parsed, &parts);
    let outcome = map_all(api, route, &parsed, &ctx, request_key.as_deref());
    if outcome.valid.is_empty() {
        return Err(ApiError::AllInvalid(outcome.rejected));
    }
    let queued = enqueue(state, api.label(), &grant, &outcome.valid).await?;
    count_accepted(api.label(), queued, outcome.rejected.len());
    Ok(crate::reply::json(StatusCode::OK, &outcome.answer(api)))
}

/// The body, within the size and time limits, decompressed (and, for PostHog v0, taken out of
/// posthog-js's form).
async fn read_body(
    state: &AppState,
    req: Request<Incoming>,
    api: Api,
) -> Result<(http::request::Parts, Bytes), ApiError> {
    let encoding = crate::body::sdk_encoding(req.headers())?;
    let (parts, incoming) = req.into_parts();
    let cfg = &state.config;
    let bytes = crate::body::read_sdk(
        &parts.headers,
        incoming,
        encoding,
        cfg.sdk_max_body_bytes,
        cfg.body_read_timeout,
    )
    .await?;
    let bytes = match api {
        Api::PostHog => unform(bytes, parts.uri.query())?,
        _ => bytes,
    };
    Ok((parts, bytes))
}

/// What mapping needs: the app, now, the retention floor, when the client sent the request (the
/// envelope's time, else the headers' or query's) and the message size limit.
fn mapping_context<'a>(
    state: &AppState,
    app_id: &'a str,
    parsed: &Parsed<'_>,
    parts: &http::request::Parts,
) -> map::Context<'a> {
    let received_at = Utc::now();
    map::Context {
        app_id,
        received_at,
        oldest: retention_floor(received_at, state.config.retention_months),
        sent_at: parsed
            .sent_at
            .or_else(|| header_sent_at(&parts.headers, parts.uri.query())),
        max_event_bytes: state.config.sdk_max_event_bytes,
    }
}

#[cfg(test)]
mod tests;
