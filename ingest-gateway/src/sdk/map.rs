//! Mapping one SDK message onto an event row: pure, no I/O.
//!
//! Segment-format messages (Segment, RudderStack, Jitsu) and PostHog events each become one
//! [`QueuedEvent`](shared::queue::QueuedEvent); the fields that fill a column leave the message, everything else the message
//! carried stays in `metadata` under its own top-level key (`type`, `properties`, `traits`,
//! `context`, ...), so `metadata @> '{"properties": {"plan": "pro"}}'` finds a track call by
//! its properties. Keys are never stored (`writeKey`, `api_key`, `token`, `properties.token`).
//!
//! Here: what both families share (ids, times, user and session ids). `message.rs`: a message as
//! read. `segment.rs` and `posthog.rs`: each family's mapping. `metadata.rs`: the `metadata` text.

mod message;
mod metadata;
mod posthog;
mod segment;

use chrono::{DateTime, NaiveDateTime, Utc};
use serde_json::value::RawValue;
use uuid::Uuid;

use crate::validate::{short_id, within_window};

pub use message::Message;
pub use metadata::check_raw;
pub use posthog::{posthog, posthog_key, posthog_uuid, PostHogEvent};
pub use segment::{segment, SegmentShared, SEGMENT_TYPES};

/// The namespace of event ids derived from an SDK's non-UUID message id:
/// `UUIDv5(SDK_NAMESPACE, app_id + ":" + messageId)`.
pub const SDK_NAMESPACE: Uuid = uuid::uuid!("5a1c3e0d-7b4f-4c2a-9e8d-3f6b1a2c4d5e");

/// What mapping needs besides the message.
#[derive(Debug, Clone)]
pub struct Context<'a> {
    pub app_id: &'a str,
    pub received_at: DateTime<Utc>,
    /// Events older than this are refused (the retention floor).
    pub oldest: DateTime<Utc>,
    /// When the client sent the request (envelope `sentAt`/`sent_at`, a header), for skew
    /// correction when the message has no `sentAt` of its own.
    pub sent_at: Option<DateTime<Utc>>,
    pub max_event_bytes: usize,
}

/// A time in RFC 3339, or without an offset (taken as UTC), as SDKs send them.
pub fn parse_time(s: &str) -> Option<DateTime<Utc>> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Some(t.with_timezone(&Utc));
    }
    NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%.f")
        .ok()
        .map(|t| t.and_utc())
}

/// A string field, or a number's text (SDKs stringify numeric ids, but hand-written clients may
/// not). Empty strings and other types count as absent.
fn text(v: Option<&RawValue>) -> Option<String> {
    let t = v?.get().trim();
    match t.as_bytes().first()? {
        b'"' => serde_json::from_str::<String>(t)
            .ok()
            .filter(|s| !s.is_empty()),
        b'-' | b'0'..=b'9' => Some(t.to_owned()),
        _ => None,
    }
}

/// (A raw value's text has no whitespace around it.)
fn is_null(v: &RawValue) -> bool {
    v.get() == "null"
}

/// A string field's value (`None` for another type).
fn string(v: Option<&RawValue>) -> Option<String> {
    serde_json::from_str(v?.get()).ok()
}

/// The event id of a message id: the UUID itself, else a UUIDv5 of the app and the id (so the
/// SDK's retries of the message are stored once); a fresh UUIDv7 when there is none.
/// The second value says whether the id came from the client (the writer keeps a dedupe key).
pub fn event_id(app_id: &str, message_id: Option<&str>) -> (Uuid, bool) {
    match message_id {
        None => (Uuid::now_v7(), false),
        Some(m) => match Uuid::try_parse(m) {
            Ok(id) if !id.is_nil() => (id, true),
            _ => (v5(app_id, m), true),
        },
    }
}

/// `UUIDv5(SDK_NAMESPACE, app_id + ":" + message_id)`, hashed in place by a SHA-1 that uses
/// the CPU's SHA extensions where it has them.
fn v5(app_id: &str, message_id: &str) -> Uuid {
    use sha1::{Digest, Sha1};
    let digest = Sha1::new()
        .chain_update(SDK_NAMESPACE.as_bytes())
        .chain_update(app_id.as_bytes())
        .chain_update(b":")
        .chain_update(message_id.as_bytes())
        .finalize();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    uuid::Builder::from_sha1_bytes(bytes).into_uuid()
}

/// Event time from the message's time (skew-corrected by when it was sent), else now; within
/// the retention window and at most a day ahead.
fn occurred_at(
    ctx: &Context<'_>,
    time: Option<&str>,
    sent: Option<DateTime<Utc>>,
    correct: bool,
) -> Result<DateTime<Utc>, String> {
    let mut occurred = match time {
        None => ctx.received_at,
        Some(s) => {
            parse_time(s).ok_or_else(|| format!("timestamp {s:?} is not an RFC 3339 time"))?
        }
    };
    if let (Some(sent), Some(_), true) = (sent.or(ctx.sent_at), time, correct) {
        occurred = occurred
            .checked_add_signed(ctx.received_at - sent)
            .ok_or("timestamp corrected by sentAt is out of range")?;
    }
    within_window(occurred, ctx.received_at, ctx.oldest)?;
    Ok(occurred)
}

fn user_id(v: Option<String>) -> Result<Option<String>, String> {
    v.map(|s| short_id("user_id", &s)).transpose()
}

fn session_id(v: Option<String>) -> Result<Option<String>, String> {
    v.map(|s| short_id("session_id", &s)).transpose()
}

#[cfg(test)]
mod tests;
