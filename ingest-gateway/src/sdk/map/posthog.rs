//! One PostHog event (v0 `/batch/`, `/e/`, ... or v1 `/i/v1/analytics/events`) as an event: the
//! fields it reads leave the event's sorted fields; the project token never reaches `metadata`.

use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::value::RawValue;
use shared::queue::QueuedEvent;
use uuid::Uuid;

use super::message::{Fields, Message};
use super::metadata::{metadata, push_key};
use super::{event_id, occurred_at, parse_time, session_id, string, text, user_id, Context};
use crate::validate::EventName;

/// The key a PostHog event carries itself (posthog-js puts the project token in `properties`).
pub fn posthog_key(msg: &Message<'_>) -> Option<String> {
    let msg = msg.sorted().ok()?;
    ["api_key", "token", "$token"]
        .iter()
        .find_map(|k| text(msg.get(k)))
        .or_else(|| {
            let props = Message::from_raw(msg.get("properties")?).sorted().ok()?;
            text(props.get("token"))
        })
}

/// A PostHog event's own `uuid`, to name it in a v1 answer.
pub fn posthog_uuid(msg: &Message<'_>) -> Option<String> {
    let (_, v) = msg
        .object()
        .ok()?
        .iter()
        .rev()
        .find(|(k, _)| k.0 == "uuid")?;
    serde_json::from_str::<String>(v.get()).ok()
}

/// One PostHog event (v0 `/batch/`, `/e/`, ... or v1 `/i/v1/analytics/events`).
pub fn posthog(msg: &Message<'_>, ctx: &Context<'_>) -> Result<QueuedEvent, String> {
    let mut msg = msg.sorted()?;
    let name = match string(msg.remove("event")) {
        Some(e) => EventName::parse(&e)?,
        None => return Err("event is required".into()),
    };
    let (event_id, client_id) = uuid(ctx.app_id, &mut msg);
    for k in ["api_key", "token", "$token"] {
        msg.remove(k);
    }
    let props = Props::read(msg.get("properties"))?;
    let user = take_text(&mut msg, "distinct_id")
        .or_else(|| take_text(&mut msg, "$distinct_id"))
        .or(props.distinct_id);
    let session = take_text(&mut msg, "session_id").or(props.session_id);
    let no_skew = props.ignore_sent_at || skew_correction_disabled(msg.get("options"));
    let occurred = time(&mut msg, ctx, !no_skew)?;
    let extra: Vec<(&str, String)> = props
        .rebuilt
        .map(|p| ("properties", p))
        .into_iter()
        .collect();
    Ok(QueuedEvent {
        event_id,
        app_id: ctx.app_id.to_owned(),
        event_name: name.into_inner(),
        occurred_at_us: occurred.timestamp_micros(),
        received_at_us: ctx.received_at.timestamp_micros(),
        user_id: user_id(user)?,
        session_id: session_id(session)?,
        metadata: metadata(msg.iter(), &extra, ctx)?,
        client_id,
    })
}

/// The event id from `uuid` ([`event_id`]); a `uuid` that is the event's own id leaves the
/// fields.
fn uuid(app_id: &str, msg: &mut Fields<'_>) -> (Uuid, bool) {
    let uuid = text(msg.get("uuid"));
    let (id, client_id) = event_id(app_id, uuid.as_deref());
    if uuid.as_deref().and_then(|m| Uuid::try_parse(m).ok()) == Some(id) {
        msg.remove("uuid");
    }
    (id, client_id)
}

/// The event time (`timestamp`), skew-corrected by `sent_at` when `correct`; both leave the
/// fields.
fn time(msg: &mut Fields<'_>, ctx: &Context<'_>, correct: bool) -> Result<DateTime<Utc>, String> {
    let time = string(msg.remove("timestamp")).filter(|s| !s.is_empty());
    let sent = string(msg.remove("sent_at")).and_then(|s| parse_time(&s));
    occurred_at(ctx, time.as_deref(), sent, correct)
}

/// The text of field `k`, which then leaves the fields; `None` (the field kept) when it has none.
fn take_text(msg: &mut Fields<'_>, k: &str) -> Option<String> {
    let t = text(msg.get(k))?;
    msg.remove(k);
    Some(t)
}

/// What the mapping reads in the event's `properties` (when an object).
#[derive(Default)]
struct Props {
    distinct_id: Option<String>,
    session_id: Option<String>,
    ignore_sent_at: bool,
    /// The properties without the project token, when they held it.
    rebuilt: Option<String>,
}

impl Props {
    fn read(properties: Option<&RawValue>) -> Result<Self, String> {
        let Some(p) = properties.filter(|p| p.get().trim_start().starts_with('{')) else {
            return Ok(Props::default());
        };
        let props = Message::from_raw(p).sorted()?;
        let rebuilt = if props.contains_key("token") {
            Some(without_token(&props, p.get().len())?)
        } else {
            None
        };
        Ok(Props {
            distinct_id: text(props.get("distinct_id")),
            session_id: text(props.get("$session_id")),
            ignore_sent_at: props.get("$ignore_sent_at").map(|v| v.get().trim()) == Some("true"),
            rebuilt,
        })
    }
}

/// The project token (the ingest key) is never stored: the properties are rebuilt without it,
/// their values still as they came.
fn without_token(props: &Fields<'_>, capacity: usize) -> Result<String, String> {
    let mut out = String::with_capacity(capacity);
    out.push('{');
    for (k, v) in props.iter().filter(|(k, _)| *k != "token") {
        if out.len() > 1 {
            out.push(',');
        }
        push_key(&mut out, k)?;
        out.push_str(v.get());
    }
    out.push('}');
    Ok(out)
}

/// The part of PostHog's `options` the mapping reads.
#[derive(Deserialize)]
struct Options {
    #[serde(default)]
    disable_skew_correction: Option<bool>,
}

/// Whether the event's `options` turn skew correction off.
fn skew_correction_disabled(options: Option<&RawValue>) -> bool {
    options
        .and_then(|o| serde_json::from_str::<Options>(o.get()).ok())
        .and_then(|o| o.disable_skew_correction)
        == Some(true)
}
