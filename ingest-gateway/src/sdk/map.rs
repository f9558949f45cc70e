//! Mapping one SDK message onto an event row: pure, no I/O.
//!
//! Segment-format messages (Segment, RudderStack, Jitsu) and PostHog events each become one
//! [`QueuedEvent`]; the fields that fill a column leave the message, everything else the message
//! carried stays in `metadata` under its own top-level key (`type`, `properties`, `traits`,
//! `context`, ...), so `metadata @> '{"properties": {"plan": "pro"}}'` finds a track call by
//! its properties. Keys are never stored (`writeKey`, `api_key`, `token`, `properties.token`).

use chrono::{DateTime, Duration, NaiveDateTime, Utc};
use serde_json::{Map, Value};
use shared::queue::QueuedEvent;
use uuid::Uuid;

use crate::validate::{check_value, short_id, EventName};

/// The namespace of event ids derived from an SDK's non-UUID message id:
/// `UUIDv5(SDK_NAMESPACE, app_id + ":" + messageId)`.
pub const SDK_NAMESPACE: Uuid = uuid::uuid!("5a1c3e0d-7b4f-4c2a-9e8d-3f6b1a2c4d5e");

/// The Segment message types and the event name of each (track: its `event`).
pub const SEGMENT_TYPES: &[(&str, &str)] = &[
    ("track", ""),
    ("identify", "$identify"),
    ("page", "$page"),
    ("screen", "$screen"),
    ("group", "$group"),
    ("alias", "$alias"),
];

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
fn text(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// The event id of a message id: the UUID itself, else a UUIDv5 of the app and the id (so the
/// SDK's retries of the message are stored once); a fresh UUIDv7 when there is none.
/// The second value says whether the id came from the client (the writer keeps a dedupe key).
pub fn event_id(app_id: &str, message_id: Option<&str>) -> (Uuid, bool) {
    match message_id {
        None => (Uuid::now_v7(), false),
        Some(m) => match Uuid::try_parse(m) {
            Ok(id) if !id.is_nil() => (id, true),
            _ => (
                Uuid::new_v5(&SDK_NAMESPACE, format!("{app_id}:{m}").as_bytes()),
                true,
            ),
        },
    }
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
    if occurred < ctx.oldest {
        return Err(format!(
            "timestamp {} is older than the retention window (oldest accepted: {})",
            occurred.to_rfc3339(),
            ctx.oldest.to_rfc3339()
        ));
    }
    if occurred > ctx.received_at + Duration::days(1) {
        return Err(format!(
            "timestamp {} is more than 1 day in the future",
            occurred.to_rfc3339()
        ));
    }
    Ok(occurred)
}

/// The metadata text of what is left of a message: nulls dropped, depth and NUL checked.
fn metadata(mut rest: Map<String, Value>, ctx: &Context<'_>) -> Result<Option<String>, String> {
    rest.retain(|_, v| !v.is_null());
    if rest.is_empty() {
        return Ok(None);
    }
    let value = Value::Object(rest);
    check_value(&value, 1)?;
    let text = value.to_string();
    if text.len() > ctx.max_event_bytes {
        return Err(format!(
            "the message's fields are {} bytes; at most {} are allowed",
            text.len(),
            ctx.max_event_bytes
        ));
    }
    Ok(Some(text))
}

fn user_id(v: Option<String>) -> Result<Option<String>, String> {
    v.map(|s| short_id("user_id", &s)).transpose()
}

fn session_id(v: Option<String>) -> Result<Option<String>, String> {
    v.map(|s| short_id("session_id", &s)).transpose()
}

/// Envelope fields a Segment batch may carry for all its messages.
#[derive(Debug, Default, Clone)]
pub struct SegmentShared {
    pub context: Option<Map<String, Value>>,
    pub integrations: Option<Value>,
}

/// One Segment-format message. `route_type` is the type a single-message route or a Jitsu path
/// names; it fills in a missing `type`.
pub fn segment(
    mut msg: Map<String, Value>,
    route_type: Option<&str>,
    shared: &SegmentShared,
    ctx: &Context<'_>,
) -> Result<QueuedEvent, String> {
    let kind = match msg.get("type") {
        Some(Value::String(t)) => t.clone(),
        None | Some(Value::Null) => match route_type {
            Some(t) => {
                msg.insert("type".into(), Value::String(t.to_owned()));
                t.to_owned()
            }
            None => return Err("type is required".into()),
        },
        Some(_) => return Err("type must be a string".into()),
    };
    let Some(&(_, fixed_name)) = SEGMENT_TYPES.iter().find(|(t, _)| *t == kind) else {
        return Err(format!(
            "type {kind:?} is not one of track, identify, page, screen, group, alias"
        ));
    };
    let name = if kind == "track" {
        match msg.remove("event") {
            Some(Value::String(e)) => EventName::parse(&e)?,
            _ => return Err("a track message needs an event name (\"event\")".into()),
        }
    } else {
        EventName::parse(fixed_name)?
    };
    let message_id = text(msg.get("messageId"));
    let (event_id, client_id) = event_id(ctx.app_id, message_id.as_deref());
    if message_id.as_deref().and_then(|m| Uuid::try_parse(m).ok()) == Some(event_id) {
        // The id is the event's own: stored once, in `event_id`.
        msg.remove("messageId");
    }
    let user = match text(msg.get("userId")) {
        Some(u) => {
            msg.remove("userId");
            Some(u)
        }
        None => text(msg.get("anonymousId")),
    };
    let session = msg
        .get("context")
        .and_then(Value::as_object)
        .and_then(|c| text(c.get("sessionId")));
    let sent = msg
        .remove("sentAt")
        .and_then(|v| v.as_str().and_then(parse_time));
    let time_key = if text(msg.get("timestamp")).is_some() {
        Some("timestamp")
    } else if text(msg.get("originalTimestamp")).is_some() {
        Some("originalTimestamp")
    } else {
        None
    };
    let time = time_key.and_then(|k| msg.remove(k)).and_then(|v| match v {
        Value::String(s) => Some(s),
        _ => None,
    });
    let occurred = occurred_at(ctx, time.as_deref(), sent, true)?;
    msg.remove("writeKey");
    if let Some(env) = &shared.context {
        match msg.get_mut("context") {
            Some(Value::Object(own)) => {
                for (k, v) in env {
                    own.entry(k.clone()).or_insert_with(|| v.clone());
                }
            }
            _ => {
                msg.insert("context".into(), Value::Object(env.clone()));
            }
        }
    }
    if let Some(i) = &shared.integrations {
        msg.entry("integrations").or_insert_with(|| i.clone());
    }
    Ok(QueuedEvent {
        event_id,
        app_id: ctx.app_id.to_owned(),
        event_name: name.into_inner(),
        occurred_at_us: occurred.timestamp_micros(),
        received_at_us: ctx.received_at.timestamp_micros(),
        user_id: user_id(user)?,
        session_id: session_id(session)?,
        metadata: metadata(msg, ctx)?,
        client_id,
    })
}

/// The key a PostHog event carries itself (posthog-js puts the project token in `properties`).
pub fn posthog_key(msg: &Map<String, Value>) -> Option<&str> {
    ["api_key", "token", "$token"]
        .iter()
        .find_map(|k| msg.get(*k).and_then(Value::as_str))
        .or_else(|| {
            msg.get("properties")
                .and_then(Value::as_object)
                .and_then(|p| p.get("token"))
                .and_then(Value::as_str)
        })
        .filter(|k| !k.is_empty())
}

/// One PostHog event (v0 `/batch/`, `/e/`, ... or v1 `/i/v1/analytics/events`).
pub fn posthog(mut msg: Map<String, Value>, ctx: &Context<'_>) -> Result<QueuedEvent, String> {
    let name = match msg.remove("event") {
        Some(Value::String(e)) => EventName::parse(&e)?,
        _ => return Err("event is required".into()),
    };
    let uuid = text(msg.get("uuid"));
    let (event_id, client_id) = event_id(ctx.app_id, uuid.as_deref());
    if uuid.as_deref().and_then(|m| Uuid::try_parse(m).ok()) == Some(event_id) {
        msg.remove("uuid");
    }
    for k in ["api_key", "token", "$token"] {
        msg.remove(k);
    }
    let props = msg.get_mut("properties").and_then(Value::as_object_mut);
    let (prop_distinct, prop_session, ignore_sent_at) = match props {
        Some(p) => {
            p.remove("token");
            (
                text(p.get("distinct_id")),
                text(p.get("$session_id")),
                p.get("$ignore_sent_at") == Some(&Value::Bool(true)),
            )
        }
        None => (None, None, false),
    };
    let user = if let Some(u) = text(msg.get("distinct_id")) {
        msg.remove("distinct_id");
        Some(u)
    } else if let Some(u) = text(msg.get("$distinct_id")) {
        msg.remove("$distinct_id");
        Some(u)
    } else {
        prop_distinct
    };
    let session = match text(msg.get("session_id")) {
        Some(s) => {
            msg.remove("session_id");
            Some(s)
        }
        None => prop_session,
    };
    let no_skew = ignore_sent_at
        || msg
            .get("options")
            .and_then(|o| o.get("disable_skew_correction"))
            == Some(&Value::Bool(true));
    let time = match msg.remove("timestamp") {
        Some(Value::String(s)) if !s.is_empty() => Some(s),
        _ => None,
    };
    let sent = msg
        .remove("sent_at")
        .and_then(|v| v.as_str().and_then(parse_time));
    let occurred = occurred_at(ctx, time.as_deref(), sent, !no_skew)?;
    Ok(QueuedEvent {
        event_id,
        app_id: ctx.app_id.to_owned(),
        event_name: name.into_inner(),
        occurred_at_us: occurred.timestamp_micros(),
        received_at_us: ctx.received_at.timestamp_micros(),
        user_id: user_id(user)?,
        session_id: session_id(session)?,
        metadata: metadata(msg, ctx)?,
        client_id,
    })
}

#[cfg(test)]
mod tests;
