//! Decoding and validation of `POST /v1/events` bodies: pure, no I/O.
//!
//! A body is one event object or an array of them. Each event is checked on its own, so a batch
//! yields the valid events (ready to queue) and, for the others, their index and a clear message.
//! The types below cannot hold an invalid value once built.

use std::borrow::Cow;

use chrono::{DateTime, Duration, Utc};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::Value;
use shared::queue::QueuedEvent;
use uuid::Uuid;

pub const MAX_NAME_BYTES: usize = 200;
pub const MAX_ID_BYTES: usize = 200;
pub const MAX_METADATA_BYTES: usize = 16 * 1024;
pub const MAX_METADATA_DEPTH: usize = 32;

/// Why a whole body was refused (400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    #[error("body is not valid JSON: {0}")]
    InvalidJson(String),
    #[error("body must be a JSON object or an array of objects")]
    NotObjectOrArray,
    #[error("{count} events in one request; at most {max} are allowed")]
    TooManyEvents { count: usize, max: usize },
    #[error("the array holds no events")]
    Empty,
    #[error("the body has no \"batch\" array of messages")]
    MissingBatch,
    #[error("{0}")]
    Unreadable(String),
}

impl BodyError {
    /// The error of a body that is neither an object nor an array: valid JSON of another kind is
    /// a shape error; anything else is not JSON.
    pub fn of_other_json(body: &[u8]) -> Self {
        match serde_json::from_slice::<&RawValue>(body) {
            Ok(_) => BodyError::NotObjectOrArray,
            Err(e) => BodyError::InvalidJson(e.to_string()),
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            BodyError::InvalidJson(_) => "invalid_json",
            BodyError::NotObjectOrArray => "invalid_body",
            BodyError::TooManyEvents { .. } => "too_many_events",
            BodyError::Empty => "empty_batch",
            BodyError::MissingBatch => "missing_batch",
            BodyError::Unreadable(_) => "invalid_body",
        }
    }
}

/// One event refused, with its index in the batch (0 for a single object).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Rejected {
    pub index: usize,
    pub error: String,
}

/// The result of decoding a body.
#[derive(Debug, Default)]
pub struct Decoded {
    pub valid: Vec<QueuedEvent>,
    pub rejected: Vec<Rejected>,
}

/// What validation needs to know besides the body.
#[derive(Debug, Clone)]
pub struct Context<'a> {
    pub app_id: &'a str,
    pub received_at: DateTime<Utc>,
    /// Events older than this are refused (the retention floor).
    pub oldest: DateTime<Utc>,
    pub max_events: usize,
}

/// An event name: 1 to 200 bytes, no control characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventName(String);

impl EventName {
    pub fn parse(s: &str) -> Result<Self, String> {
        if s.is_empty() {
            return Err("event_name must not be empty".into());
        }
        if s.len() > MAX_NAME_BYTES {
            return Err(format!(
                "event_name is {} bytes; at most {MAX_NAME_BYTES} are allowed",
                s.len()
            ));
        }
        if s.chars().any(char::is_control) {
            return Err("event_name must not contain control characters".into());
        }
        Ok(Self(s.to_owned()))
    }

    pub fn into_inner(self) -> String {
        self.0
    }
}

/// A user or session id: at most 200 bytes, no NUL.
pub fn short_id(field: &str, s: &str) -> Result<String, String> {
    if s.len() > MAX_ID_BYTES {
        return Err(format!(
            "{field} is {} bytes; at most {MAX_ID_BYTES} are allowed",
            s.len()
        ));
    }
    if s.contains('\0') {
        return Err(format!("{field} must not contain a NUL character"));
    }
    Ok(s.to_owned())
}

/// Metadata: a JSON object, at most 16 KiB serialized, nesting depth at most 32, no NUL in any
/// key or string. Returns its compact serialization: the text as it came when it is compact and
/// has no escape (so no NUL and no lone surrogate can hide in it), which serde has already
/// checked is JSON; else the text of the parsed value.
pub fn metadata(raw: &RawValue) -> Result<String, String> {
    let text = raw.get();
    if text.starts_with('{') && plain_compact(text.as_bytes()) {
        crate::sdk::map::check_raw(text, 0)?;
        return within_metadata_limit(text.to_owned());
    }
    let value: Value =
        serde_json::from_str(raw.get()).map_err(|e| format!("metadata is not valid JSON: {e}"))?;
    if !value.is_object() {
        return Err("metadata must be a JSON object".into());
    }
    check_value(&value, 1)?;
    within_metadata_limit(value.to_string())
}

fn within_metadata_limit(compact: String) -> Result<String, String> {
    if compact.len() > MAX_METADATA_BYTES {
        return Err(format!(
            "metadata is {} bytes serialized; at most {MAX_METADATA_BYTES} are allowed",
            compact.len()
        ));
    }
    Ok(compact)
}

/// JSON text with no escape and no whitespace outside its strings (without escapes, every `"`
/// opens or closes a string).
fn plain_compact(text: &[u8]) -> bool {
    if memchr::memchr(b'\\', text).is_some() {
        return false;
    }
    let mut in_str = false;
    for &b in text {
        match b {
            b'"' => in_str = !in_str,
            b' ' | b'\t' | b'\n' | b'\r' if !in_str => return false,
            _ => {}
        }
    }
    true
}

pub fn check_value(v: &Value, depth: usize) -> Result<(), String> {
    let nested = match v {
        Value::Object(_) | Value::Array(_) => true,
        Value::String(s) if s.contains('\0') => {
            return Err("metadata must not contain a NUL character".into())
        }
        _ => false,
    };
    if nested && depth > MAX_METADATA_DEPTH {
        return Err(format!(
            "metadata is nested deeper than {MAX_METADATA_DEPTH} levels"
        ));
    }
    match v {
        Value::Object(map) => {
            for (k, child) in map {
                if k.contains('\0') {
                    return Err("metadata must not contain a NUL character".into());
                }
                check_value(child, depth + 1)?;
            }
        }
        Value::Array(items) => {
            for child in items {
                check_value(child, depth + 1)?;
            }
        }
        _ => {}
    }
    Ok(())
}

/// The fields a client may send; any other field is an error.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEvent<'a> {
    #[serde(borrow, default)]
    event_name: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    timestamp: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    event_id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    user_id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    session_id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    metadata: Option<&'a RawValue>,
    #[serde(borrow, default)]
    sent_at: Option<Cow<'a, str>>,
}

pub fn rfc3339(field: &str, s: &str) -> Result<DateTime<Utc>, String> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| format!("{field} is not an RFC 3339 time with offset ({e})"))
}

/// An event time must lie within the retention window and at most a day ahead of its receipt.
pub fn within_window(
    occurred: DateTime<Utc>,
    received_at: DateTime<Utc>,
    oldest: DateTime<Utc>,
) -> Result<(), String> {
    if occurred < oldest {
        return Err(format!(
            "timestamp {} is older than the retention window (oldest accepted: {})",
            occurred.to_rfc3339(),
            oldest.to_rfc3339()
        ));
    }
    if occurred > received_at + Duration::days(1) {
        return Err(format!(
            "timestamp {} is more than 1 day in the future",
            occurred.to_rfc3339()
        ));
    }
    Ok(())
}

/// Validates one event.
pub fn event(raw: &RawValue, ctx: &Context<'_>) -> Result<QueuedEvent, String> {
    let text = raw.get();
    if !text.starts_with('{') {
        return Err("event must be a JSON object".into());
    }
    let ev: RawEvent<'_> = serde_json::from_str(text).map_err(|e| strip_position(&e))?;
    let name = EventName::parse(ev.event_name.as_deref().ok_or("event_name is required")?)?;
    let event_id = event_id(ev.event_id.as_deref())?;
    let occurred = occurred_at(&ev, ctx)?;
    Ok(QueuedEvent {
        event_id,
        app_id: ctx.app_id.to_owned(),
        event_name: name.into_inner(),
        occurred_at_us: occurred.timestamp_micros(),
        received_at_us: ctx.received_at.timestamp_micros(),
        user_id: ev.user_id.map(|s| short_id("user_id", &s)).transpose()?,
        session_id: ev
            .session_id
            .map(|s| short_id("session_id", &s))
            .transpose()?,
        metadata: ev.metadata.map(metadata).transpose()?,
        client_id: ev.event_id.is_some(),
    })
}

/// The client's event id, a UUID other than nil; a new UUIDv7 when there is none.
fn event_id(given: Option<&str>) -> Result<Uuid, String> {
    let Some(s) = given else {
        return Ok(Uuid::now_v7());
    };
    let id = Uuid::try_parse(s).map_err(|_| format!("event_id {s:?} is not a UUID"))?;
    if id.is_nil() {
        return Err("event_id must not be the nil UUID".into());
    }
    Ok(id)
}

/// The event's time (now when it has none), corrected by the client's clock skew when it says
/// when it was sent; within the retention window and at most a day ahead.
fn occurred_at(ev: &RawEvent<'_>, ctx: &Context<'_>) -> Result<DateTime<Utc>, String> {
    let mut occurred = match ev.timestamp.as_deref() {
        None => ctx.received_at,
        Some(s) => rfc3339("timestamp", s)?,
    };
    if let (Some(sent), Some(_)) = (ev.sent_at.as_deref(), ev.timestamp.as_deref()) {
        let sent = rfc3339("sent_at", sent)?;
        occurred = occurred
            .checked_add_signed(ctx.received_at - sent)
            .ok_or("timestamp corrected by sent_at is out of range")?;
    } else if let Some(sent) = ev.sent_at.as_deref() {
        rfc3339("sent_at", sent)?;
    }
    within_window(occurred, ctx.received_at, ctx.oldest)?;
    Ok(occurred)
}

/// serde's messages end with "at line L column C", which says nothing useful inside one element.
fn strip_position(e: &serde_json::Error) -> String {
    let s = e.to_string();
    match s.rfind(" at line ") {
        Some(i) => s[..i].to_owned(),
        None => s,
    }
}

/// Decodes a whole body: a single event object or an array of them.
pub fn body(bytes: &[u8], ctx: &Context<'_>) -> Result<Decoded, BodyError> {
    let items = items(bytes)?;
    if items.len() > ctx.max_events {
        return Err(BodyError::TooManyEvents {
            count: items.len(),
            max: ctx.max_events,
        });
    }
    if items.is_empty() {
        return Err(BodyError::Empty);
    }
    let mut out = Decoded {
        valid: Vec::with_capacity(items.len()),
        rejected: Vec::new(),
    };
    for (index, raw) in items.into_iter().enumerate() {
        match event(raw, ctx) {
            Ok(e) => out.valid.push(e),
            Err(error) => out.rejected.push(Rejected { index, error }),
        }
    }
    Ok(out)
}

/// The body's events, each as its raw text.
fn items(bytes: &[u8]) -> Result<Vec<&RawValue>, BodyError> {
    let invalid = |e: serde_json::Error| BodyError::InvalidJson(e.to_string());
    match bytes.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'[') => serde_json::from_slice(bytes).map_err(invalid),
        Some(b'{') => Ok(vec![serde_json::from_slice(bytes).map_err(invalid)?]),
        _ => Err(BodyError::of_other_json(bytes)),
    }
}

#[cfg(test)]
mod tests;
