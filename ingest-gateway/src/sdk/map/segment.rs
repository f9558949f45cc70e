//! One Segment-format message (Segment, RudderStack, Jitsu) as an event: one pass over its fields
//! picks out those the mapping reads; each step takes what it reads and leaves in [`Rest`] what
//! it does not use, which goes to `metadata` as it came.

use std::borrow::Cow;

use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use shared::queue::QueuedEvent;
use uuid::Uuid;

use super::message::{Key, Message};
use super::metadata::metadata;
use super::{
    event_id, is_null, occurred_at, parse_time, session_id, string, text, user_id, Context,
};
use crate::validate::EventName;

/// The Segment message types and the event name of each (track: its `event`).
pub const SEGMENT_TYPES: &[(&str, &str)] = &[
    ("track", ""),
    ("identify", "$identify"),
    ("page", "$page"),
    ("screen", "$screen"),
    ("group", "$group"),
    ("alias", "$alias"),
];

/// Envelope fields a Segment batch may carry for all its messages.
#[derive(Debug, Default, Clone)]
pub struct SegmentShared {
    pub context: Option<Map<String, Value>>,
    pub integrations: Option<Value>,
}

/// The part of a context the mapping reads.
#[derive(Deserialize)]
struct ContextIds<'a> {
    #[serde(borrow, default, rename = "sessionId")]
    session_id: Option<&'a RawValue>,
}

/// One Segment-format message. `route_type` is the type a single-message route or a Jitsu path
/// names; it fills in a missing `type`.
pub fn segment(
    msg: &Message<'_>,
    route_type: Option<&str>,
    shared: &SegmentShared,
    ctx: &Context<'_>,
) -> Result<QueuedEvent, String> {
    let (known, mut rest) = Known::pick(msg.object()?);
    let (kind, fixed_name) = kind(known.kind, route_type, &mut rest)?;
    let name = name(kind, fixed_name, known.event, &mut rest)?;
    let (event_id, client_id) = message_id(ctx.app_id, known.message_id, &mut rest);
    let user = user(known.user_id, known.anonymous_id, &mut rest);
    let session = known
        .context
        .and_then(|c| serde_json::from_str::<ContextIds<'_>>(c.get()).ok())
        .and_then(|c| text(c.session_id));
    let occurred = time(&known, ctx, &mut rest)?;
    context(known.context, shared, &mut rest);
    integrations(known.integrations, shared, &mut rest);
    Ok(QueuedEvent {
        event_id,
        app_id: ctx.app_id.to_owned(),
        event_name: name.into_inner(),
        occurred_at_us: occurred.timestamp_micros(),
        received_at_us: ctx.received_at.timestamp_micros(),
        user_id: user_id(user)?,
        session_id: session_id(session)?,
        metadata: metadata(rest.left.iter().copied(), &rest.rebuilt, msg.bytes, ctx)?,
        client_id,
    })
}

/// The fields the mapping reads.
#[derive(Default)]
struct Known<'a> {
    kind: Option<&'a RawValue>,
    event: Option<&'a RawValue>,
    message_id: Option<&'a RawValue>,
    user_id: Option<&'a RawValue>,
    anonymous_id: Option<&'a RawValue>,
    context: Option<&'a RawValue>,
    sent_at: Option<&'a RawValue>,
    timestamp: Option<&'a RawValue>,
    original_timestamp: Option<&'a RawValue>,
    integrations: Option<&'a RawValue>,
}

impl<'a> Known<'a> {
    /// The known fields, picked out in one pass (a name given twice keeps its last value, as
    /// `jsonb` does with the rest), and every other field but `writeKey`, in arrival order.
    fn pick(fields: &'a [(Key<'a>, &'a RawValue)]) -> (Self, Rest<'a>) {
        let mut known = Known::default();
        let mut rest = Rest {
            left: Vec::with_capacity(fields.len() + 2),
            rebuilt: Vec::new(),
        };
        for (k, v) in fields {
            let slot = match k.0.as_ref() {
                "type" => &mut known.kind,
                "event" => &mut known.event,
                "messageId" => &mut known.message_id,
                "userId" => &mut known.user_id,
                "anonymousId" => &mut known.anonymous_id,
                "context" => &mut known.context,
                "sentAt" => &mut known.sent_at,
                "timestamp" => &mut known.timestamp,
                "originalTimestamp" => &mut known.original_timestamp,
                "integrations" => &mut known.integrations,
                "writeKey" => continue,
                other => {
                    rest.left.push((other, v));
                    continue;
                }
            };
            *slot = Some(v);
        }
        (known, rest)
    }
}

/// What goes to `metadata`: the message's fields the mapping left, as they came, and the fields
/// it rebuilt.
struct Rest<'a> {
    left: Vec<(&'a str, &'a RawValue)>,
    rebuilt: Vec<(&'static str, String)>,
}

impl<'a> Rest<'a> {
    fn keep(&mut self, k: &'a str, v: Option<&'a RawValue>) {
        if let Some(v) = v {
            self.left.push((k, v));
        }
    }
}

/// The message's type, else the route's (then written into the metadata), as its entry in
/// [`SEGMENT_TYPES`]: the type and its event name. The given `type` is kept.
fn kind<'a>(
    given: Option<&'a RawValue>,
    route_type: Option<&str>,
    rest: &mut Rest<'a>,
) -> Result<(&'static str, &'static str), String> {
    let kind = match given.filter(|t| !is_null(t)) {
        Some(t) => match serde_json::from_str::<&str>(t.get()) {
            Ok(s) => Cow::Borrowed(s),
            Err(_) => Cow::Owned(string(Some(t)).ok_or("type must be a string")?),
        },
        None => {
            let t = route_type.ok_or("type is required")?;
            let json = serde_json::to_string(t).map_err(|e| e.to_string())?;
            rest.rebuilt.push(("type", json));
            Cow::Borrowed(t)
        }
    };
    rest.keep("type", given);
    match SEGMENT_TYPES.iter().find(|(t, _)| *t == kind) {
        Some(&entry) => Ok(entry),
        None => Err(format!(
            "type {kind:?} is not one of track, identify, page, screen, group, alias"
        )),
    }
}

/// A track call's `event`; the type's own name otherwise (an `event` then kept).
fn name<'a>(
    kind: &str,
    fixed_name: &str,
    event: Option<&'a RawValue>,
    rest: &mut Rest<'a>,
) -> Result<EventName, String> {
    if kind != "track" {
        rest.keep("event", event);
        return EventName::parse(fixed_name);
    }
    match string(event) {
        Some(e) => EventName::parse(&e),
        None => Err("a track message needs an event name (\"event\")".into()),
    }
}

/// The event id from `messageId` ([`event_id`]); a `messageId` that is not the event's own id is
/// kept, so the client's id is never lost.
fn message_id<'a>(app_id: &str, given: Option<&'a RawValue>, rest: &mut Rest<'a>) -> (Uuid, bool) {
    let message_id = text(given);
    let (id, client_id) = event_id(app_id, message_id.as_deref());
    if message_id.as_deref().and_then(|m| Uuid::try_parse(m).ok()) != Some(id) {
        rest.keep("messageId", given);
    }
    (id, client_id)
}

/// `userId`, else `anonymousId`; the one not used is kept (`anonymousId` always is).
fn user<'a>(
    user_id: Option<&'a RawValue>,
    anonymous_id: Option<&'a RawValue>,
    rest: &mut Rest<'a>,
) -> Option<String> {
    let user = match text(user_id) {
        Some(u) => Some(u),
        None => {
            rest.keep("userId", user_id);
            text(anonymous_id)
        }
    };
    rest.keep("anonymousId", anonymous_id);
    user
}

/// The event time: `timestamp`, else `originalTimestamp`, skew-corrected by `sentAt`; the one
/// not used is kept (both when neither is given).
fn time<'a>(
    known: &Known<'a>,
    ctx: &Context<'_>,
    rest: &mut Rest<'a>,
) -> Result<DateTime<Utc>, String> {
    let sent = string(known.sent_at).and_then(|s| parse_time(&s));
    let (time, unused) = if text(known.timestamp).is_some() {
        (
            known.timestamp,
            ("originalTimestamp", known.original_timestamp),
        )
    } else if text(known.original_timestamp).is_some() {
        (known.original_timestamp, ("timestamp", known.timestamp))
    } else {
        (None, ("timestamp", known.timestamp))
    };
    rest.keep(unused.0, unused.1);
    if time.is_none() {
        rest.keep("originalTimestamp", known.original_timestamp);
    }
    occurred_at(ctx, string(time).as_deref(), sent, true)
}

/// The message's context, kept as it came, or merged with the envelope's when the batch has one.
fn context<'a>(own: Option<&'a RawValue>, shared: &SegmentShared, rest: &mut Rest<'a>) {
    let Some(env) = &shared.context else {
        rest.keep("context", own);
        return;
    };
    // The envelope's context fills in what the message's own does not say (rare: no SDK here
    // sends one), so this is the one place a nested value is parsed.
    let mut merged: Map<String, Value> = own
        .and_then(|c| serde_json::from_str(c.get()).ok())
        .unwrap_or_default();
    for (k, v) in env {
        merged.entry(k.clone()).or_insert_with(|| v.clone());
    }
    rest.rebuilt
        .push(("context", Value::Object(merged).to_string()));
}

/// The message's `integrations`, else the envelope's.
fn integrations<'a>(own: Option<&'a RawValue>, shared: &SegmentShared, rest: &mut Rest<'a>) {
    match (own, &shared.integrations) {
        (Some(i), _) => rest.keep("integrations", Some(i)),
        (None, Some(i)) => rest.rebuilt.push(("integrations", i.to_string())),
        (None, None) => {}
    }
}
