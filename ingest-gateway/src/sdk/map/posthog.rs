//! One PostHog event (v0 `/batch/`, `/e/`, ... or v1 `/i/v1/analytics/events`) as an event: the
//! fields it reads leave the event's sorted fields; the project token never reaches `metadata`.

use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::value::RawValue;
use shared::queue::QueuedEvent;
use uuid::Uuid;

use super::message::{Fields, Key, Message};
use super::metadata::{metadata, push_key};
use super::{event_id, occurred_at, parse_time, session_id, string, text, user_id, Context};
use crate::validate::EventName;

/// A PostHog event read once: its top-level fields sorted by name, and what the mapping reads
/// in its `properties`. The request's key check and the mapping both use it, so neither the
/// event nor its properties are parsed or sorted twice.
pub struct PostHogEvent<'a> {
    fields: Fields<'a>,
    props: Props<'a>,
    /// The event's size as compact JSON.
    bytes: usize,
}

impl<'a> PostHogEvent<'a> {
    pub fn read(msg: &Message<'a>) -> Result<Self, String> {
        let fields = msg.sorted()?;
        let props = Props::read(fields.get("properties"));
        Ok(Self {
            fields,
            props,
            bytes: msg.bytes,
        })
    }

    /// The key the event carries itself (posthog-js puts the project token in `properties`).
    pub fn key(&self) -> Option<String> {
        ["api_key", "token", "$token"]
            .iter()
            .find_map(|k| text(self.fields.get(k)))
            .or_else(|| text(self.props.last("token")))
    }
}

/// The key a PostHog event carries itself.
pub fn posthog_key(msg: &Message<'_>) -> Option<String> {
    PostHogEvent::read(msg).ok()?.key()
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
pub fn posthog(ev: PostHogEvent<'_>, ctx: &Context<'_>) -> Result<QueuedEvent, String> {
    let PostHogEvent {
        fields: mut msg,
        props,
        bytes,
    } = ev;
    let name = match string(msg.remove("event")) {
        Some(e) => EventName::parse(&e)?,
        None => return Err("event is required".into()),
    };
    let (event_id, client_id) = uuid(ctx.app_id, &mut msg);
    for k in ["api_key", "token", "$token"] {
        msg.remove(k);
    }
    let (user, session) = ids(&mut msg, &props);
    let ignore_sent_at = props.last("$ignore_sent_at").map(RawValue::get) == Some("true");
    let no_skew = ignore_sent_at || skew_correction_disabled(msg.get("options"));
    let occurred = time(&mut msg, ctx, !no_skew)?;
    let extra: Vec<(&str, String)> = props
        .without_token()?
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
        metadata: metadata(msg.iter(), &extra, bytes, ctx)?,
        client_id,
    })
}

/// The user (`distinct_id`, `$distinct_id`, else in the properties) and the session
/// (`session_id`, else `$session_id` in the properties); the top-level fields read leave.
fn ids(msg: &mut Fields<'_>, props: &Props<'_>) -> (Option<String>, Option<String>) {
    let user = take_text(msg, "distinct_id")
        .or_else(|| take_text(msg, "$distinct_id"))
        .or_else(|| text(props.last("distinct_id")));
    let session = take_text(msg, "session_id").or_else(|| text(props.last("$session_id")));
    (user, session)
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

/// The event's `properties` (when an object), their fields in arrival order: the mapping reads
/// four of them, so a linear scan beats sorting a posthog-js event's forty.
#[derive(Default)]
struct Props<'a> {
    fields: Vec<(Key<'a>, &'a RawValue)>,
    len: usize,
}

impl<'a> Props<'a> {
    fn read(properties: Option<&'a RawValue>) -> Self {
        let Some(p) = properties.filter(|p| p.get().starts_with('{')) else {
            return Props::default();
        };
        Props {
            fields: Message::from_raw(p).into_fields(),
            len: p.get().len(),
        }
    }

    /// The value of `k`; the last one when it is given twice (as PostgreSQL's `jsonb` keeps).
    fn last(&self, k: &str) -> Option<&'a RawValue> {
        self.fields
            .iter()
            .rev()
            .find(|(key, _)| key.0 == k)
            .map(|(_, v)| *v)
    }

    /// The project token (the ingest key) is never stored: when the properties hold it, they
    /// are rebuilt without it, the other fields as they came.
    fn without_token(&self) -> Result<Option<String>, String> {
        if self.last("token").is_none() {
            return Ok(None);
        }
        let mut out = String::with_capacity(self.len);
        out.push('{');
        for (k, v) in self.fields.iter().filter(|(k, _)| k.0 != "token") {
            if out.len() > 1 {
                out.push(',');
            }
            push_key(&mut out, &k.0)?;
            out.push_str(v.get());
        }
        out.push('}');
        Ok(Some(out))
    }
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
