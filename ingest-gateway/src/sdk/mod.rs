//! The analytics SDKs' own formats on the gateway's port: Segment and RudderStack
//! (`/v1/batch`, `/v1/track`, ...), PostHog (`/batch/`, `/e/`, `/capture/`, `/i/v0/e/`,
//! `/i/v1/analytics/events`) and Jitsu (`/api/s/{type}`, `/api/s/s2s/{type}`).
//!
//! Each request goes the way of `POST /v1/events` (key cache, rate limit, backpressure, queue,
//! dedupe, metrics); only the envelope, where the key is, the mapping of a message
//! ([`map`]) and the answer differ. Every SDK here counts a request as delivered on exactly
//! `200` with a JSON body, and RudderStack's Python SDK retries a 4xx whose body lacks `code` or
//! `message`: every answer here is `200` JSON on success and `{"code", "message"}` otherwise.

pub mod map;

use std::borrow::Cow;

use base64::Engine;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use http::header::{HeaderMap, AUTHORIZATION};
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use shared::metrics;
use shared::queue::QueuedEvent;
use shared::schema::partitions::retention_floor;

use crate::apps::KeyKind;
use crate::auth::Grant;
use crate::error::ApiError;
use crate::routes::AppState;
use crate::validate::{BodyError, Rejected};

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
    if path == "/v1/batch" {
        return Some(Route {
            api: Api::Segment,
            kind: None,
        });
    }
    if let Some(&(_, kind)) = SEGMENT_SINGLE.iter().find(|(p, _)| *p == path) {
        return Some(Route {
            api: Api::Segment,
            kind: Some(kind),
        });
    }
    if POSTHOG_PATHS.contains(&path) {
        return Some(Route {
            api: Api::PostHog,
            kind: None,
        });
    }
    if path == "/i/v1/analytics/events" {
        return Some(Route {
            api: Api::PostHogV1,
            kind: None,
        });
    }
    let jitsu = path
        .strip_prefix("/api/s/s2s/")
        .or_else(|| path.strip_prefix("/api/s/"))?;
    map::SEGMENT_TYPES
        .iter()
        .find(|(t, _)| *t == jitsu)
        .map(|&(t, _)| Route {
            api: Api::Jitsu,
            kind: Some(t),
        })
}

pub async fn post(state: &AppState, req: Request<Incoming>, route: Route) -> Response<Full<Bytes>> {
    match handle(state, req, route).await {
        Ok(resp) => resp,
        Err(e) => {
            crate::ingest::count_refusal(route.api.label(), &e);
            e.into_sdk_response()
        }
    }
}

/// The key in the request's headers, by the family's rules.
fn header_key(api: Api, headers: &HeaderMap) -> Vec<String> {
    let auth = headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::trim);
    let basic = auth.and_then(basic_user);
    let bearer = crate::auth::bearer(headers).map(str::to_owned);
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty())
    };
    match api {
        Api::Segment => basic
            .or(bearer)
            .or_else(|| header("x-write-key"))
            .or_else(|| header("x-api-key"))
            .into_iter()
            .collect(),
        Api::PostHogV1 => bearer.into_iter().collect(),
        Api::PostHog => Vec::new(),
        Api::Jitsu => {
            // `id:secret`: the ingest key alone, or as either half.
            let Some(v) = header("x-write-key").or(basic) else {
                return Vec::new();
            };
            let mut keys = vec![v.clone()];
            if let Some((a, b)) = v.split_once(':') {
                keys.extend(
                    [a, b]
                        .into_iter()
                        .filter(|k| !k.is_empty())
                        .map(str::to_owned),
                );
            }
            keys
        }
    }
}

/// The user of `Basic base64(user:password)`.
fn basic_user(v: &str) -> Option<String> {
    if v.len() <= 6 || !v[..6].eq_ignore_ascii_case("basic ") {
        return None;
    }
    let raw = base64::engine::general_purpose::STANDARD
        .decode(v[6..].trim())
        .ok()?;
    let text = String::from_utf8(raw).ok()?;
    let user = text.split(':').next().unwrap_or("");
    (!user.is_empty()).then(|| user.to_owned())
}

/// The first of `keys` that names a live ingest key (Jitsu's `id:secret` gives three tries).
async fn authenticate(state: &AppState, keys: &[String]) -> Result<Grant, ApiError> {
    let mut last = ApiError::MissingKey;
    for key in keys {
        match crate::ingest::grant_for(state, key, KeyKind::Ingest).await {
            Err(e @ (ApiError::UnknownKey | ApiError::RevokedKey)) => last = e,
            decided => return decided,
        }
    }
    Err(last)
}

/// The fields of an envelope (or of a single message, which carries the same ones).
#[derive(Deserialize, Default)]
struct Envelope<'a> {
    #[serde(borrow, default)]
    batch: Option<Vec<map::Message<'a>>>,
    #[serde(borrow, default, rename = "writeKey")]
    write_key: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    api_key: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    token: Option<Cow<'a, str>>,
    #[serde(borrow, default, rename = "sentAt")]
    sent_at_camel: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    sent_at: Option<Cow<'a, str>>,
    #[serde(default)]
    context: Option<Value>,
    #[serde(default)]
    integrations: Option<Value>,
}

/// A request body as messages, with what its envelope says.
struct Parsed<'a> {
    messages: Vec<map::Message<'a>>,
    key: Option<String>,
    sent_at: Option<DateTime<Utc>>,
    shared: map::SegmentShared,
}

/// UTF-8 is checked once for the whole body, so the parser borrows its strings unchecked.
fn parse_json<'a, T: Deserialize<'a>>(text: &'a [u8]) -> Result<T, BodyError> {
    let text = std::str::from_utf8(text)
        .map_err(|e| BodyError::InvalidJson(format!("the body is not UTF-8: {e}")))?;
    serde_json::from_str(text).map_err(|e| BodyError::InvalidJson(e.to_string()))
}

fn first_byte(b: &[u8]) -> Option<u8> {
    b.iter().find(|c| !c.is_ascii_whitespace()).copied()
}

/// posthog-js may post `data=<JSON or base64 JSON>` form-encoded; gives the JSON.
fn unform(body: Bytes, query: Option<&str>) -> Result<Bytes, BodyError> {
    if !body.starts_with(b"data=") {
        return Ok(body);
    }
    if query.is_some_and(|q| q.split('&').any(|kv| kv == "compression=lz64")) {
        return Err(BodyError::Unreadable(
            "lz64 compression is not supported; use gzip-js or base64".into(),
        ));
    }
    let data = form_urlencoded::parse(&body)
        .find(|(k, _)| k == "data")
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default();
    if matches!(first_byte(data.as_bytes()), Some(b'{' | b'[')) {
        return Ok(Bytes::from(data));
    }
    let clean: String = data.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    let engine = base64::engine::general_purpose::GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        base64::engine::GeneralPurposeConfig::new()
            .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
    );
    engine
        .decode(clean.as_bytes())
        .map(Bytes::from)
        .map_err(|e| BodyError::Unreadable(format!("the data field is not base64 JSON: {e}")))
}

fn parse<'a>(api: Api, route: Route, body: &'a [u8]) -> Result<Parsed<'a>, BodyError> {
    let first = first_byte(body);
    if api == Api::PostHog && first == Some(b'[') {
        let messages: Vec<map::Message<'a>> = parse_json(body)?;
        return Ok(Parsed {
            messages,
            key: None,
            sent_at: None,
            shared: map::SegmentShared::default(),
        });
    }
    if first != Some(b'{') {
        return match serde_json::from_slice::<&RawValue>(body) {
            Ok(_) => Err(BodyError::NotObjectOrArray),
            Err(e) => Err(BodyError::InvalidJson(e.to_string())),
        };
    }
    let env: Envelope<'a> = parse_json(body)?;
    let key = env
        .write_key
        .as_deref()
        .or(env.api_key.as_deref())
        .or(env.token.as_deref())
        .filter(|k| !k.is_empty())
        .map(str::to_owned);
    let sent_at = env
        .sent_at_camel
        .as_deref()
        .or(env.sent_at.as_deref())
        .and_then(map::parse_time);
    let single = route.kind.is_some() || api == Api::Jitsu;
    let messages = match (env.batch, single, api) {
        (Some(b), false, _) => b,
        (None, false, _) if api != Api::PostHog => return Err(BodyError::MissingBatch),
        _ => vec![parse_json::<map::Message<'a>>(body)?],
    };
    let shared = if single {
        map::SegmentShared::default()
    } else {
        map::SegmentShared {
            context: match env.context {
                Some(Value::Object(m)) => Some(m),
                _ => None,
            },
            integrations: env.integrations,
        }
    };
    Ok(Parsed {
        messages,
        key,
        sent_at,
        shared,
    })
}

/// When the client sent the request, from the headers or the query when the body does not say.
fn header_sent_at(headers: &HeaderMap, query: Option<&str>) -> Option<DateTime<Utc>> {
    if let Some(t) = headers
        .get("posthog-request-timestamp")
        .and_then(|v| v.to_str().ok())
        .and_then(map::parse_time)
    {
        return Some(t);
    }
    // posthog-js: `?_=<milliseconds>` is the send time.
    let ms = query?
        .split('&')
        .find_map(|kv| kv.strip_prefix("_="))?
        .parse::<i64>()
        .ok()?;
    DateTime::from_timestamp_millis(ms)
}

struct Outcome {
    valid: Vec<QueuedEvent>,
    rejected: Vec<Rejected>,
    /// PostHog v1 names each refused event by its `uuid` (else its index).
    refused_ids: Vec<(String, String)>,
}

fn map_all(
    api: Api,
    route: Route,
    parsed: &Parsed<'_>,
    ctx: &map::Context<'_>,
    request_key: Option<&str>,
) -> Outcome {
    let mut out = Outcome {
        valid: Vec::with_capacity(parsed.messages.len()),
        rejected: Vec::new(),
        refused_ids: Vec::new(),
    };
    for (index, msg) in parsed.messages.iter().enumerate() {
        let mut id = None;
        let result = (|| {
            if msg.bytes > ctx.max_event_bytes {
                return Err(format!(
                    "the message is {} bytes; at most {} are allowed",
                    msg.bytes, ctx.max_event_bytes
                ));
            }
            match api {
                Api::Segment | Api::Jitsu => map::segment(msg, route.kind, &parsed.shared, ctx),
                Api::PostHog | Api::PostHogV1 => {
                    id = map::posthog_uuid(msg);
                    if let (Some(own), Some(req)) = (map::posthog_key(msg), request_key) {
                        if own != req {
                            return Err("the event carries another key than the request".into());
                        }
                    }
                    map::posthog(msg, ctx)
                }
            }
        })();
        match result {
            Ok(e) => out.valid.push(e),
            Err(error) => {
                if api == Api::PostHogV1 {
                    out.refused_ids
                        .push((id.unwrap_or_else(|| index.to_string()), error.clone()));
                }
                out.rejected.push(Rejected { index, error });
            }
        }
    }
    out
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
    let cfg = &state.config;
    let from_headers = header_key(api, req.headers());
    // A key in the headers is checked before the body is read.
    let early = if from_headers.is_empty() {
        None
    } else {
        Some(authenticate(state, &from_headers).await?)
    };
    let encoding = crate::body::sdk_encoding(req.headers())?;
    let (parts, incoming) = req.into_parts();
    let bytes = crate::body::read_sdk(
        &parts.headers,
        incoming,
        encoding,
        cfg.sdk_max_body_bytes,
        cfg.body_read_timeout,
    )
    .await?;
    let query = parts.uri.query();
    let bytes = if api == Api::PostHog {
        unform(bytes, query)?
    } else {
        bytes
    };
    let parsed = parse(api, route, &bytes)?;
    if parsed.messages.len() > MAX_MESSAGES {
        return Err(BodyError::TooManyEvents {
            count: parsed.messages.len(),
            max: MAX_MESSAGES,
        }
        .into());
    }
    if parsed.messages.is_empty() {
        return Err(BodyError::Empty.into());
    }
    let mut request_key = parsed.key.clone();
    let grant = match early {
        Some(g) => g,
        None => {
            if request_key.is_none() && api == Api::PostHog {
                // posthog-js puts the token in each event.
                request_key = parsed.messages.first().and_then(map::posthog_key);
            }
            let key = request_key.clone().ok_or(ApiError::MissingKey)?;
            authenticate(state, &[key]).await?
        }
    };
    let received_at = Utc::now();
    let ctx = map::Context {
        app_id: &grant.app_id,
        received_at,
        oldest: retention_floor(received_at, cfg.retention_months),
        sent_at: parsed
            .sent_at
            .or_else(|| header_sent_at(&parts.headers, query)),
        max_event_bytes: cfg.sdk_max_event_bytes,
    };
    let outcome = map_all(api, route, &parsed, &ctx, request_key.as_deref());
    if outcome.valid.is_empty() {
        return Err(ApiError::AllInvalid(outcome.rejected));
    }
    let queued = crate::ingest::enqueue(state, api.label(), &grant, &outcome.valid).await?;
    metrics::events_accepted(api.label(), queued as u64);
    if !outcome.rejected.is_empty() {
        metrics::events_rejected(api.label(), "invalid_event", outcome.rejected.len() as u64);
    }
    let body = match api {
        Api::Segment => serde_json::json!({"success": true}),
        Api::PostHog => serde_json::json!({"status": 1}),
        Api::PostHogV1 => {
            let results: Map<String, Value> = outcome
                .refused_ids
                .into_iter()
                .map(|(id, details)| {
                    (
                        id,
                        serde_json::json!({"result": "drop", "details": details}),
                    )
                })
                .collect();
            serde_json::json!({"results": results})
        }
        Api::Jitsu => serde_json::json!({"ok": true}),
    };
    Ok(crate::reply::json(StatusCode::OK, &body))
}

#[cfg(test)]
mod tests;
