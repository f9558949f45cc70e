use chrono::{Duration, TimeZone};
use serde_json::json;

use serde_json::value::RawValue;
use serde_json::Value;
use shared::queue::QueuedEvent;

use super::metadata::check_raw;
use super::*;
use crate::validate::MAX_METADATA_DEPTH;

fn ctx() -> Context<'static> {
    let now = Utc
        .with_ymd_and_hms(2026, 11, 30, 12, 0, 0)
        .single()
        .expect("time");
    Context {
        app_id: "app1",
        received_at: now,
        oldest: now - Duration::days(365),
        sent_at: None,
        max_event_bytes: 32 * 1024,
    }
}

fn obj(v: Value) -> Box<RawValue> {
    RawValue::from_string(v.to_string()).expect("raw")
}

// The mapping, from a message's raw text as the body parser reads it.
fn segment(
    raw: &RawValue,
    route_type: Option<&str>,
    shared: &SegmentShared,
    ctx: &Context<'_>,
) -> Result<QueuedEvent, String> {
    super::segment(&Message::from_raw(raw), route_type, shared, ctx)
}

fn posthog(raw: &RawValue, ctx: &Context<'_>) -> Result<QueuedEvent, String> {
    super::posthog(super::PostHogEvent::read(&Message::from_raw(raw))?, ctx)
}

fn posthog_key(raw: &RawValue) -> Option<String> {
    super::posthog_key(&Message::from_raw(raw))
}

fn meta(e: &QueuedEvent) -> Value {
    serde_json::from_str(e.metadata.as_deref().expect("metadata")).expect("json")
}

#[test]
fn a_segment_track_call_maps_as_the_contract_says() {
    let msg = obj(json!({
        "type": "track", "event": "Order Completed", "userId": "u1", "anonymousId": "a1",
        "messageId": "msg-1", "timestamp": "2026-11-30T11:00:00.000Z",
        "properties": {"plan": "pro"}, "context": {"library": {"name": "x"}, "sessionId": 42},
        "integrations": {}, "writeKey": "secret", "_metadata": {"nodeVersion": "v20"}
    }));
    let e = segment(&msg, None, &SegmentShared::default(), &ctx()).expect("valid");
    assert_eq!(e.event_name, "Order Completed");
    assert_eq!(e.user_id.as_deref(), Some("u1"));
    assert_eq!(e.session_id.as_deref(), Some("42"));
    assert!(e.client_id);
    assert_eq!(e.event_id, event_id("app1", Some("msg-1")).0);
    assert_eq!(e.event_id.get_version_num(), 5);
    assert_eq!(
        e.occurred_at_us,
        Utc.with_ymd_and_hms(2026, 11, 30, 11, 0, 0)
            .single()
            .expect("t")
            .timestamp_micros()
    );
    let m = meta(&e);
    assert_eq!(m["type"], "track");
    assert_eq!(m["properties"]["plan"], "pro");
    assert_eq!(m["anonymousId"], "a1");
    assert_eq!(m["messageId"], "msg-1", "a non-UUID message id is kept");
    assert_eq!(m["_metadata"]["nodeVersion"], "v20");
    for gone in ["event", "userId", "timestamp", "writeKey"] {
        assert!(m.get(gone).is_none(), "{gone} left metadata: {m}");
    }
}

#[test]
fn event_ids_are_stable_per_app_and_message_id() {
    let (a, client) = event_id("app1", Some("node-next-1-x"));
    assert!(client);
    assert_eq!(
        a,
        event_id("app1", Some("node-next-1-x")).0,
        "a retry gets the same id"
    );
    assert_ne!(
        a,
        event_id("app2", Some("node-next-1-x")).0,
        "another app, another id"
    );
    assert_eq!(
        a,
        Uuid::new_v5(&SDK_NAMESPACE, b"app1:node-next-1-x"),
        "the UUIDv5 of the app and the message id"
    );
    let u = "01890000-0000-7000-8000-700000000000";
    assert_eq!(
        event_id("app1", Some(u)).0.to_string(),
        u,
        "a UUID is kept as is"
    );
    let nil = "00000000-0000-0000-0000-000000000000";
    assert_ne!(event_id("app1", Some(nil)).0.to_string(), nil);
    let (fresh, client) = event_id("app1", None);
    assert!(!client);
    assert_eq!(fresh.get_version_num(), 7);
}

#[test]
fn every_segment_type_gets_its_name_and_the_route_type_fills_in() {
    for (kind, name) in [
        ("identify", "$identify"),
        ("page", "$page"),
        ("screen", "$screen"),
        ("group", "$group"),
        ("alias", "$alias"),
    ] {
        let e = segment(
            &obj(json!({"userId": "u"})),
            Some(kind),
            &SegmentShared::default(),
            &ctx(),
        )
        .expect(kind);
        assert_eq!(e.event_name, name);
        assert_eq!(meta(&e)["type"], kind);
    }
    let err = |v: Value| segment(&obj(v), None, &SegmentShared::default(), &ctx()).unwrap_err();
    assert!(err(json!({"event": "x"})).contains("type is required"));
    assert!(err(json!({"type": "merge"})).contains("not one of"));
    assert!(err(json!({"type": "track"})).contains("event name"));
    assert!(err(json!({"type": "track", "event": ""})).contains("empty"));
    assert!(err(json!({"type": 3})).contains("string"));
    assert!(
        err(json!({"type": "track", "event": "x", "userId": "u".repeat(201)})).contains("user_id")
    );
    assert!(
        err(json!({"type": "track", "event": "x", "properties": {"a": "\u{0}"}})).contains("NUL")
    );
}

#[test]
fn anonymous_users_null_fields_and_the_envelope() {
    let shared = SegmentShared {
        context: json!({"ip": "1.2.3.4", "library": {"name": "env"}})
            .as_object()
            .cloned(),
        integrations: Some(json!({"All": true})),
    };
    let msg = obj(json!({
        "type": "page", "userId": null, "anonymousId": "anon", "category": null,
        "name": "Home", "context": {"library": {"name": "own"}},
        "originalTimestamp": "2026-11-30T10:00:00.000Z", "sentAt": "2026-11-30T10:00:10.000Z"
    }));
    let e = segment(&msg, None, &shared, &ctx()).expect("valid");
    assert_eq!(e.user_id.as_deref(), Some("anon"));
    let m = meta(&e);
    assert!(
        m.get("userId").is_none() && m.get("category").is_none(),
        "nulls dropped: {m}"
    );
    assert_eq!(m["name"], "Home");
    assert_eq!(
        m["context"]["library"]["name"], "own",
        "the message's own context wins"
    );
    assert_eq!(m["context"]["ip"], "1.2.3.4");
    assert_eq!(m["integrations"]["All"], true);
    // originalTimestamp, corrected by the message's sentAt (its clock was 1h50m10s behind).
    assert_eq!(
        e.occurred_at_us,
        Utc.with_ymd_and_hms(2026, 11, 30, 11, 59, 50)
            .single()
            .expect("t")
            .timestamp_micros()
    );
    assert!(m.get("originalTimestamp").is_none() && m.get("sentAt").is_none());
}

#[test]
fn times_hold_the_retention_window_and_the_future_limit() {
    let c = ctx();
    let mk = |t: &str| {
        segment(
            &obj(json!({"type": "track", "event": "e", "timestamp": t})),
            None,
            &SegmentShared::default(),
            &c,
        )
    };
    assert!(
        mk("2026-11-30T11:00:00.123456+00:00").is_ok(),
        "microseconds and +00:00"
    );
    assert!(mk("2026-11-30T11:00:00.123").is_ok(), "no offset is UTC");
    assert!(mk("2026-12-01T12:00:00Z").is_ok(), "exactly one day ahead");
    assert!(mk("2026-12-01T12:00:01Z").unwrap_err().contains("future"));
    assert!(mk("2025-11-30T12:00:00Z").is_ok(), "at the retention floor");
    assert!(mk("2025-11-30T11:59:59Z")
        .unwrap_err()
        .contains("retention"));
    assert!(mk("yesterday").unwrap_err().contains("RFC 3339"));
    let mut skewed = ctx();
    skewed.sent_at = Some(
        Utc.with_ymd_and_hms(2026, 11, 30, 11, 0, 0)
            .single()
            .expect("t"),
    );
    let e = segment(
        &obj(json!({"type": "track", "event": "e", "timestamp": "2026-11-30T10:59:00Z"})),
        None,
        &SegmentShared::default(),
        &skewed,
    )
    .expect("valid");
    assert_eq!(
        e.occurred_at_us,
        Utc.with_ymd_and_hms(2026, 11, 30, 11, 59, 0)
            .single()
            .expect("t")
            .timestamp_micros(),
        "the envelope's sentAt corrects the clock"
    );
}

#[test]
fn the_message_size_limit_holds_at_and_past_it() {
    let mut c = ctx();
    c.max_event_bytes = 100;
    // {"properties":{"p":"..."},"type":"track"} is 38 bytes plus the string.
    let at = json!({"type": "track", "event": "e", "properties": {"p": "x".repeat(62)}});
    let e = segment(&obj(at), None, &SegmentShared::default(), &c).expect("at the limit");
    assert_eq!(e.metadata.as_deref().map(str::len), Some(100));
    let past = json!({"type": "track", "event": "e", "properties": {"p": "x".repeat(63)}});
    assert!(segment(&obj(past), None, &SegmentShared::default(), &c)
        .unwrap_err()
        .contains("at most 100"));
}

#[test]
fn posthog_events_map_as_the_contract_says() {
    let msg = obj(json!({
        "event": "Order Completed", "distinct_id": "u1",
        "uuid": "01890000-0000-7000-8000-700000000000",
        "timestamp": "2026-11-30T11:00:00.000Z",
        "properties": {"plan": "pro", "$session_id": "s1", "token": "secret", "$lib": "posthog-node"},
        "$set": {"email": "a@b"}, "api_key": "secret"
    }));
    let e = posthog(&msg, &ctx()).expect("valid");
    assert_eq!(e.event_name, "Order Completed");
    assert_eq!(e.user_id.as_deref(), Some("u1"));
    assert_eq!(e.session_id.as_deref(), Some("s1"));
    assert_eq!(
        e.event_id.to_string(),
        "01890000-0000-7000-8000-700000000000"
    );
    let m = meta(&e);
    assert_eq!(m["properties"]["plan"], "pro");
    assert_eq!(m["properties"]["$session_id"], "s1");
    assert_eq!(m["$set"]["email"], "a@b");
    assert!(
        m["properties"].get("token").is_none(),
        "keys are never stored"
    );
    for gone in ["api_key", "uuid", "distinct_id", "event", "timestamp"] {
        assert!(m.get(gone).is_none(), "{gone} left metadata: {m}");
    }
    // v1: top-level session_id; skew correction switched off by the client.
    let mut c = ctx();
    c.sent_at = Some(
        Utc.with_ymd_and_hms(2026, 11, 30, 11, 0, 0)
            .single()
            .expect("t"),
    );
    let v1 = obj(json!({
        "event": "$pageview", "distinct_id": "u2", "session_id": "s2", "uuid": "not-a-uuid",
        "timestamp": "2026-11-30T10:00:00Z", "options": {"disable_skew_correction": true},
        "properties": {}
    }));
    let e = posthog(&v1, &c).expect("valid");
    assert_eq!(e.session_id.as_deref(), Some("s2"));
    assert_eq!(e.event_id, event_id("app1", Some("not-a-uuid")).0);
    assert_eq!(meta(&e)["uuid"], "not-a-uuid");
    assert_eq!(
        e.occurred_at_us,
        Utc.with_ymd_and_hms(2026, 11, 30, 10, 0, 0)
            .single()
            .expect("t")
            .timestamp_micros()
    );
    assert!(posthog(&obj(json!({"distinct_id": "u"})), &ctx())
        .unwrap_err()
        .contains("event is required"));
    let e = posthog(
        &obj(json!({"event": "e", "properties": {"distinct_id": "p"}})),
        &ctx(),
    )
    .expect("valid");
    assert_eq!(e.user_id.as_deref(), Some("p"));
}

#[test]
fn a_field_given_twice_keeps_its_last_value() {
    let raw = RawValue::from_string(
        r#"{"type":"track","event":"first","properties":{"a":1},"event":"second","properties":{"b":2}}"#
            .to_owned(),
    )
    .expect("json");
    let e = segment(&raw, None, &SegmentShared::default(), &ctx()).expect("maps");
    assert_eq!(e.event_name, "second");
    assert_eq!(meta(&e)["properties"], json!({"b": 2}));
}

#[test]
fn a_message_knows_its_compact_size_and_whether_it_is_an_object() {
    for v in [
        json!({}),
        json!({"a": 1}),
        json!({"type": "track", "event": "e", "properties": {"p": [1, "x", {"q": null}]}}),
        json!({"key with \"quotes\"": "v"}),
    ] {
        let text = v.to_string();
        let raw = RawValue::from_string(text.clone()).expect("raw");
        assert_eq!(Message::from_raw(&raw).bytes, text.len(), "{text}");
    }
    for text in ["[1,2]", "\"s\"", "3", "null", "true"] {
        let raw = RawValue::from_string(text.to_owned()).expect("raw");
        assert!(Message::from_raw(&raw).object().is_err(), "{text}");
    }
}

#[test]
fn raw_checks_find_nul_and_depth_without_parsing() {
    assert!(check_raw(r#"{"a":"x\u0000y"}"#, 1).is_err());
    assert!(
        check_raw(r#"{"a":"x\\u0000y"}"#, 1).is_ok(),
        "an escaped backslash, then text"
    );
    let deep = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
    // The metadata object is level 1: a value may open 31 more levels, not 32.
    assert!(check_raw(&deep(MAX_METADATA_DEPTH - 1), 1).is_ok());
    assert!(check_raw(&deep(MAX_METADATA_DEPTH), 1).is_err());
    assert!(
        check_raw(r#""[[[[""#, 31).is_ok(),
        "brackets in strings do not count"
    );
    // Past the quick proof (more brackets than the limit), the exact scan decides.
    let siblings = format!("[{}]", vec!["[]"; 2 * MAX_METADATA_DEPTH].join(","));
    assert!(check_raw(&siblings, 1).is_ok(), "many brackets, shallow");
    assert!(check_raw(&format!("[{siblings},{}]", deep(MAX_METADATA_DEPTH - 1)), 1).is_err());
    assert!(
        check_raw(r#"{"a":"x\\\u0000y"}"#, 1).is_err(),
        "an escaped backslash, then an escaped NUL"
    );
    let e = segment(
        &obj(
            json!({"type": "track", "event": "e", "properties": {"deep": serde_json::from_str::<Value>(&deep(31)).expect("json")}}),
        ),
        None,
        &SegmentShared::default(),
        &ctx(),
    );
    assert!(e.unwrap_err().contains("nested deeper"));
}

#[test]
fn posthog_keys_come_from_the_event_or_its_properties() {
    assert_eq!(
        posthog_key(&obj(json!({"api_key": "k1"}))).as_deref(),
        Some("k1")
    );
    assert_eq!(
        posthog_key(&obj(json!({"$token": "k2"}))).as_deref(),
        Some("k2")
    );
    assert_eq!(
        posthog_key(&obj(json!({"properties": {"token": "k3"}}))).as_deref(),
        Some("k3")
    );
    assert_eq!(posthog_key(&obj(json!({"token": ""}))), None);
}
