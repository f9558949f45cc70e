//! Request bodies as messages: posthog-js form bodies, envelopes (a batch with the key, the send
//! time and context shared by its messages) and single messages.

use std::borrow::Cow;

use base64::Engine;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use http::header::HeaderMap;
use serde::Deserialize;
use serde_json::Value;

use super::{map, Api, Route, MAX_MESSAGES};
use crate::validate::BodyError;

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
pub(super) struct Parsed<'a> {
    pub messages: Vec<map::Message<'a>>,
    pub key: Option<String>,
    pub sent_at: Option<DateTime<Utc>>,
    pub shared: map::SegmentShared,
}

impl Envelope<'_> {
    /// The key the envelope names (`writeKey`, `api_key` or `token`).
    fn key(&self) -> Option<String> {
        self.write_key
            .as_deref()
            .or(self.api_key.as_deref())
            .or(self.token.as_deref())
            .filter(|k| !k.is_empty())
            .map(str::to_owned)
    }

    /// When the client sent the batch (`sentAt` or `sent_at`).
    fn sent_at(&self) -> Option<DateTime<Utc>> {
        self.sent_at_camel
            .as_deref()
            .or(self.sent_at.as_deref())
            .and_then(map::parse_time)
    }
}

/// UTF-8 is checked once for the whole body, so the parser borrows its strings unchecked.
pub(super) fn parse_json<'a, T: Deserialize<'a>>(text: &'a [u8]) -> Result<T, BodyError> {
    let text = std::str::from_utf8(text)
        .map_err(|e| BodyError::InvalidJson(format!("the body is not UTF-8: {e}")))?;
    serde_json::from_str(text).map_err(|e| BodyError::InvalidJson(e.to_string()))
}

fn first_byte(b: &[u8]) -> Option<u8> {
    b.iter().find(|c| !c.is_ascii_whitespace()).copied()
}

/// posthog-js may post `data=<JSON or base64 JSON>` form-encoded; gives the JSON.
pub(super) fn unform(body: Bytes, query: Option<&str>) -> Result<Bytes, BodyError> {
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
    padding_indifferent()
        .decode(clean.as_bytes())
        .map(Bytes::from)
        .map_err(|e| BodyError::Unreadable(format!("the data field is not base64 JSON: {e}")))
}

/// Standard base64, padded or not (posthog-js strips the padding).
fn padding_indifferent() -> base64::engine::GeneralPurpose {
    base64::engine::GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        base64::engine::GeneralPurposeConfig::new()
            .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
    )
}

/// The body's messages and what its envelope says. A single-message route (and Jitsu) takes the
/// body as the message; PostHog v0 takes an array, a batch, or one event.
pub(super) fn parse<'a>(api: Api, route: Route, body: &'a [u8]) -> Result<Parsed<'a>, BodyError> {
    let first = first_byte(body);
    if api == Api::PostHog && first == Some(b'[') {
        return Ok(Parsed {
            messages: parse_json(body)?,
            key: None,
            sent_at: None,
            shared: map::SegmentShared::default(),
        });
    }
    if first != Some(b'{') {
        return Err(BodyError::of_other_json(body));
    }
    let env: Envelope<'a> = parse_json(body)?;
    let (key, sent_at) = (env.key(), env.sent_at());
    let single = route.kind.is_some() || api == Api::Jitsu;
    let messages = match (env.batch, single) {
        (Some(b), false) => b,
        (None, false) if api != Api::PostHog => return Err(BodyError::MissingBatch),
        _ => vec![parse_json::<map::Message<'a>>(body)?],
    };
    let shared = if single {
        map::SegmentShared::default()
    } else {
        shared(env.context, env.integrations)
    };
    Ok(Parsed {
        messages,
        key,
        sent_at,
        shared,
    })
}

/// What a batch's envelope gives all its messages.
fn shared(context: Option<Value>, integrations: Option<Value>) -> map::SegmentShared {
    map::SegmentShared {
        context: match context {
            Some(Value::Object(m)) => Some(m),
            _ => None,
        },
        integrations,
    }
}

/// At most [`MAX_MESSAGES`] messages, and at least one.
pub(super) fn check_count(n: usize) -> Result<(), BodyError> {
    match n {
        0 => Err(BodyError::Empty),
        n if n > MAX_MESSAGES => Err(BodyError::TooManyEvents {
            count: n,
            max: MAX_MESSAGES,
        }),
        _ => Ok(()),
    }
}

/// When the client sent the request, from the headers or the query when the body does not say.
pub(super) fn header_sent_at(headers: &HeaderMap, query: Option<&str>) -> Option<DateTime<Utc>> {
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
