//! Mapping one SDK message onto an event row: pure, no I/O.
//!
//! Segment-format messages (Segment, RudderStack, Jitsu) and PostHog events each become one
//! [`QueuedEvent`]; the fields that fill a column leave the message, everything else the message
//! carried stays in `metadata` under its own top-level key (`type`, `properties`, `traits`,
//! `context`, ...), so `metadata @> '{"properties": {"plan": "pro"}}'` finds a track call by
//! its properties. Keys are never stored (`writeKey`, `api_key`, `token`, `properties.token`).

use std::borrow::Cow;

use chrono::{DateTime, NaiveDateTime, Utc};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use shared::queue::QueuedEvent;
use uuid::Uuid;

use crate::validate::{short_id, within_window, EventName, MAX_METADATA_DEPTH};

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

/// One message's top-level fields, each kept as its raw JSON text (nested values are never
/// parsed into trees: they are copied into `metadata` as they came). Sorted by name, a name
/// given twice keeps its last value (as PostgreSQL's `jsonb` does); a message has a dozen
/// fields, so a sorted vector beats a tree map (one allocation, binary search).
#[derive(Debug, Default)]
struct Fields<'a>(Vec<(Key<'a>, &'a RawValue)>);

impl<'a> Fields<'a> {
    fn position(&self, k: &str) -> Result<usize, usize> {
        self.0.binary_search_by(|(key, _)| key.0.as_ref().cmp(k))
    }

    fn get(&self, k: &str) -> Option<&'a RawValue> {
        self.position(k).ok().map(|i| self.0[i].1)
    }

    fn contains_key(&self, k: &str) -> bool {
        self.position(k).is_ok()
    }

    fn remove(&mut self, k: &str) -> Option<&'a RawValue> {
        self.position(k).ok().map(|i| self.0.remove(i).1)
    }

    fn iter(&self) -> impl Iterator<Item = (&str, &'a RawValue)> + '_ {
        self.0.iter().map(|(k, v)| (k.0.as_ref(), *v))
    }
}

/// A field name, borrowed from the body unless it holds an escape.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Key<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a field name")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E>(self, v: String) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v)))
            }
        }
        d.deserialize_str(V)
    }
}

/// One message as read from the body, in the same pass as its envelope: its top-level fields in
/// the order they came, each value as its raw JSON text; no fields when it is not an object.
#[derive(Debug)]
pub struct Message<'a> {
    fields: Option<Vec<(Key<'a>, &'a RawValue)>>,
    /// Its size as compact JSON, what the SDKs measure against their own 32 KB limit.
    pub bytes: usize,
}

impl<'a> Message<'a> {
    /// A message from its raw text (a non-object, or text that is not JSON, gives no fields).
    pub fn from_raw(raw: &'a RawValue) -> Self {
        serde_json::from_str(raw.get()).unwrap_or(Message {
            fields: None,
            bytes: raw.get().len(),
        })
    }

    fn object(&self) -> Result<&[(Key<'a>, &'a RawValue)], String> {
        self.fields
            .as_deref()
            .ok_or_else(|| "the message must be a JSON object".to_owned())
    }

    /// The fields sorted by name, a repeated name keeping its last value.
    fn sorted(&self) -> Result<Fields<'a>, String> {
        let mut fields: Vec<(Key<'a>, &'a RawValue)> = self
            .object()?
            .iter()
            .map(|(k, v)| (Key(k.0.clone()), *v))
            .collect();
        // A stable sort keeps a repeated name's values in arrival order; the last wins.
        fields.sort_by(|a, b| a.0.cmp(&b.0));
        fields.dedup_by(|later, kept| {
            let same = later.0 == kept.0;
            if same {
                kept.1 = later.1;
            }
            same
        });
        Ok(Fields(fields))
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Message<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        fn not_object<'a>() -> Message<'a> {
            Message {
                fields: None,
                bytes: 0,
            }
        }
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Message<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a message")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Message<'de>, A::Error> {
                let mut fields = Vec::with_capacity(map.size_hint().unwrap_or(16));
                // `{}` and a comma between fields.
                let mut bytes = 1;
                while let Some((k, v)) = map.next_entry::<Key<'de>, &'de RawValue>()? {
                    let key = match &k.0 {
                        Cow::Borrowed(k) => k.len() + 2,
                        Cow::Owned(k) => serde_json::to_string(k).map_or(k.len() + 2, |s| s.len()),
                    };
                    bytes += key + 1 + v.get().len() + 1;
                    fields.push((k, v));
                }
                Ok(Message {
                    fields: Some(fields),
                    bytes: bytes.max(2),
                })
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Message<'de>, A::Error> {
                while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {}
                Ok(not_object())
            }
            fn visit_bool<E>(self, _: bool) -> Result<Message<'de>, E> {
                Ok(not_object())
            }
            fn visit_i64<E>(self, _: i64) -> Result<Message<'de>, E> {
                Ok(not_object())
            }
            fn visit_u64<E>(self, _: u64) -> Result<Message<'de>, E> {
                Ok(not_object())
            }
            fn visit_f64<E>(self, _: f64) -> Result<Message<'de>, E> {
                Ok(not_object())
            }
            fn visit_str<E>(self, _: &str) -> Result<Message<'de>, E> {
                Ok(not_object())
            }
            fn visit_unit<E>(self) -> Result<Message<'de>, E> {
                Ok(not_object())
            }
        }
        d.deserialize_any(V)
    }
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

/// Depth and NUL check of raw JSON text (which serde has already parsed once), without building
/// it: nesting at most `MAX_METADATA_DEPTH` below the metadata object, no `\u0000` escape.
fn check_raw(text: &str, depth_at: usize) -> Result<(), String> {
    let (mut depth, mut in_str, mut escaped) = (depth_at, false, false);
    let bytes = text.as_bytes();
    // The quick proof, which holds for nearly every value: too few brackets to nest past the
    // limit, and no escape at all (so no `\u0000`). Otherwise the exact scan below decides.
    let (mut opens, mut escapes) = (0usize, 0usize);
    for &b in bytes {
        opens += usize::from(b == b'{' || b == b'[');
        escapes += usize::from(b == b'\\');
    }
    if depth_at + opens <= MAX_METADATA_DEPTH && escapes == 0 {
        return Ok(());
    }
    for (i, &b) in bytes.iter().enumerate() {
        if in_str {
            if escaped {
                escaped = false;
                if b == b'u' && bytes.get(i + 1..i + 5) == Some(b"0000") {
                    return Err("metadata must not contain a NUL character".into());
                }
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_str = false;
            }
            continue;
        }
        match b {
            b'"' => in_str = true,
            b'{' | b'[' => {
                depth += 1;
                if depth > MAX_METADATA_DEPTH {
                    return Err(format!(
                        "metadata is nested deeper than {MAX_METADATA_DEPTH} levels"
                    ));
                }
            }
            b'}' | b']' => depth -= 1,
            _ => {}
        }
    }
    Ok(())
}

/// The metadata text of the fields left: one JSON object of the raw values, nulls dropped,
/// depth, NUL and size checked. `extra` are fields rebuilt by the mapping (a merged context).
fn metadata<'v>(
    rest: impl IntoIterator<Item = (&'v str, &'v RawValue)>,
    extra: &[(&str, String)],
    ctx: &Context<'_>,
) -> Result<Option<String>, String> {
    let mut out = String::with_capacity(512);
    out.push('{');
    let mut push = |k: &str, v: &str| -> Result<(), String> {
        if k.contains('\0') {
            return Err("metadata must not contain a NUL character".into());
        }
        check_raw(v, 1)?;
        if out.len() > 1 {
            out.push(',');
        }
        push_key(&mut out, k)?;
        out.push_str(v);
        Ok(())
    };
    for (k, v) in rest {
        if !is_null(v) && !extra.iter().any(|(e, _)| *e == k) {
            push(k, v.get())?;
        }
    }
    for (k, v) in extra {
        push(k, v)?;
    }
    out.push('}');
    if out.len() == 2 {
        return Ok(None);
    }
    if out.len() > ctx.max_event_bytes {
        return Err(format!(
            "the message's fields are {} bytes; at most {} are allowed",
            out.len(),
            ctx.max_event_bytes
        ));
    }
    Ok(Some(out))
}

/// `"key":`, escaped only when it has to be.
fn push_key(out: &mut String, k: &str) -> Result<(), String> {
    if k.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        out.push('"');
        out.push_str(k);
        out.push('"');
    } else {
        out.push_str(&serde_json::to_string(k).map_err(|e| e.to_string())?);
    }
    out.push(':');
    Ok(())
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
/// names; it fills in a missing `type`. One pass over the fields picks out those the mapping
/// reads; the rest go to `metadata` as they came.
pub fn segment(
    msg: &Message<'_>,
    route_type: Option<&str>,
    shared: &SegmentShared,
    ctx: &Context<'_>,
) -> Result<QueuedEvent, String> {
    let fields = msg.object()?;
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
    let mut known = Known::default();
    let mut rest: Vec<(&str, &RawValue)> = Vec::with_capacity(fields.len() + 2);
    for (k, v) in fields {
        // A name given twice keeps its last value (as `jsonb` does with the rest).
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
                rest.push((other, v));
                continue;
            }
        };
        *slot = Some(v);
    }
    let mut extra: Vec<(&str, String)> = Vec::new();
    let kind = match known.kind.filter(|t| !is_null(t)) {
        Some(t) => match serde_json::from_str::<&str>(t.get()) {
            Ok(s) => Cow::Borrowed(s),
            Err(_) => match serde_json::from_str::<String>(t.get()) {
                Ok(s) => Cow::Owned(s),
                Err(_) => return Err("type must be a string".into()),
            },
        },
        None => match route_type {
            Some(t) => {
                extra.push(("type", serde_json::to_string(t).map_err(|e| e.to_string())?));
                Cow::Borrowed(t)
            }
            None => return Err("type is required".into()),
        },
    };
    if let Some(t) = known.kind {
        rest.push(("type", t));
    }
    let Some(&(_, fixed_name)) = SEGMENT_TYPES.iter().find(|(t, _)| *t == kind) else {
        return Err(format!(
            "type {kind:?} is not one of track, identify, page, screen, group, alias"
        ));
    };
    let name = if kind == "track" {
        match known.event.map(|v| serde_json::from_str::<String>(v.get())) {
            Some(Ok(e)) => EventName::parse(&e)?,
            _ => return Err("a track message needs an event name (\"event\")".into()),
        }
    } else {
        if let Some(e) = known.event {
            rest.push(("event", e));
        }
        EventName::parse(fixed_name)?
    };
    let message_id = text(known.message_id);
    let (event_id, client_id) = event_id(ctx.app_id, message_id.as_deref());
    if let Some(m) = known.message_id {
        if message_id.as_deref().and_then(|m| Uuid::try_parse(m).ok()) != Some(event_id) {
            // Not the event's own id: kept, so the client's id is never lost.
            rest.push(("messageId", m));
        }
    }
    let user = match text(known.user_id) {
        Some(u) => Some(u),
        None => {
            if let Some(u) = known.user_id {
                rest.push(("userId", u));
            }
            text(known.anonymous_id)
        }
    };
    if let Some(a) = known.anonymous_id {
        rest.push(("anonymousId", a));
    }
    let session = known
        .context
        .and_then(|c| serde_json::from_str::<ContextIds<'_>>(c.get()).ok())
        .and_then(|c| text(c.session_id));
    let sent = known
        .sent_at
        .and_then(|v| serde_json::from_str::<String>(v.get()).ok())
        .and_then(|s| parse_time(&s));
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
    if let (k, Some(v)) = unused {
        rest.push((k, v));
    }
    if time.is_none() {
        if let Some(v) = known.original_timestamp {
            rest.push(("originalTimestamp", v));
        }
    }
    let time = time.and_then(|v| serde_json::from_str::<String>(v.get()).ok());
    let occurred = occurred_at(ctx, time.as_deref(), sent, true)?;
    match &shared.context {
        Some(env) => {
            // The envelope's context fills in what the message's own does not say (rare: no
            // SDK here sends one), so this is the one place a nested value is parsed.
            let mut merged: Map<String, Value> = match known.context {
                Some(c) => serde_json::from_str(c.get()).unwrap_or_default(),
                None => Map::new(),
            };
            for (k, v) in env {
                merged.entry(k.clone()).or_insert_with(|| v.clone());
            }
            extra.push(("context", Value::Object(merged).to_string()));
        }
        None => {
            if let Some(c) = known.context {
                rest.push(("context", c));
            }
        }
    }
    match (known.integrations, &shared.integrations) {
        (Some(i), _) => rest.push(("integrations", i)),
        (None, Some(i)) => extra.push(("integrations", i.to_string())),
        (None, None) => {}
    }
    Ok(QueuedEvent {
        event_id,
        app_id: ctx.app_id.to_owned(),
        event_name: name.into_inner(),
        occurred_at_us: occurred.timestamp_micros(),
        received_at_us: ctx.received_at.timestamp_micros(),
        user_id: user_id(user)?,
        session_id: session_id(session)?,
        metadata: metadata(rest.iter().copied(), &extra, ctx)?,
        client_id,
    })
}

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

/// The part of PostHog's `options` the mapping reads.
#[derive(Deserialize)]
struct Options {
    #[serde(default)]
    disable_skew_correction: Option<bool>,
}

/// One PostHog event (v0 `/batch/`, `/e/`, ... or v1 `/i/v1/analytics/events`).
pub fn posthog(msg: &Message<'_>, ctx: &Context<'_>) -> Result<QueuedEvent, String> {
    let mut msg = msg.sorted()?;
    let mut extra: Vec<(&str, String)> = Vec::new();
    let name = match msg
        .remove("event")
        .map(|v| serde_json::from_str::<String>(v.get()))
    {
        Some(Ok(e)) => EventName::parse(&e)?,
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
    let (mut prop_distinct, mut prop_session, mut ignore_sent_at) = (None, None, false);
    if let Some(p) = msg
        .get("properties")
        .filter(|p| p.get().trim_start().starts_with('{'))
    {
        let props = Message::from_raw(p).sorted()?;
        prop_distinct = text(props.get("distinct_id"));
        prop_session = text(props.get("$session_id"));
        ignore_sent_at = props.get("$ignore_sent_at").map(|v| v.get().trim()) == Some("true");
        if props.contains_key("token") {
            // The project token (the ingest key) is never stored: the properties are rebuilt
            // without it, their values still as they came.
            let mut out = String::with_capacity(p.get().len());
            out.push('{');
            for (k, v) in props.iter().filter(|(k, _)| *k != "token") {
                if out.len() > 1 {
                    out.push(',');
                }
                push_key(&mut out, k)?;
                out.push_str(v.get());
            }
            out.push('}');
            extra.push(("properties", out));
        }
    }
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
            .and_then(|o| serde_json::from_str::<Options>(o.get()).ok())
            .and_then(|o| o.disable_skew_correction)
            == Some(true);
    let time = msg
        .remove("timestamp")
        .and_then(|v| serde_json::from_str::<String>(v.get()).ok())
        .filter(|s| !s.is_empty());
    let sent = msg
        .remove("sent_at")
        .and_then(|v| serde_json::from_str::<String>(v.get()).ok())
        .and_then(|s| parse_time(&s));
    let occurred = occurred_at(ctx, time.as_deref(), sent, !no_skew)?;
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

#[cfg(test)]
mod tests;
