use chrono::TimeZone;
use proptest::prelude::*;

use super::*;

fn ctx() -> Context<'static> {
    let now = Utc
        .with_ymd_and_hms(2026, 11, 28, 12, 0, 0)
        .single()
        .expect("valid");
    Context {
        app_id: "app_1",
        received_at: now,
        oldest: shared::schema::partitions::retention_floor(now, 12),
        max_events: 1000,
    }
}

fn one(json: &str) -> Result<QueuedEvent, String> {
    let raw: &RawValue = serde_json::from_str(json).expect("test JSON");
    event(raw, &ctx())
}

fn err(json: &str) -> String {
    one(json).expect_err(json)
}

#[test]
fn a_minimal_event_gets_a_uuid_v7_and_the_receive_time() {
    let e = one(r#"{"event_name":"signup"}"#).expect("valid");
    assert_eq!(e.event_name, "signup");
    assert_eq!(e.app_id, "app_1");
    assert_eq!(e.event_id.get_version_num(), 7);
    assert_eq!(e.occurred_at_us, ctx().received_at.timestamp_micros());
    assert_eq!(e.received_at_us, e.occurred_at_us);
    assert_eq!((e.user_id, e.session_id, e.metadata), (None, None, None));
    assert!(!e.client_id, "the gateway chose the id");
}

#[test]
fn every_field_is_kept() {
    let e = one(
        r#"{"event_name":"buy","timestamp":"2026-11-28T10:00:00+01:00",
            "event_id":"0192f0c1-7c4a-7b3e-8f00-000000000001","user_id":"u","session_id":"s",
            "metadata":{ "plan" : "pro", "n": [1, 2] }}"#,
    )
    .expect("valid");
    assert_eq!(
        e.occurred_at_us,
        Utc.with_ymd_and_hms(2026, 11, 28, 9, 0, 0)
            .single()
            .expect("valid")
            .timestamp_micros()
    );
    assert_eq!(
        e.event_id.to_string(),
        "0192f0c1-7c4a-7b3e-8f00-000000000001"
    );
    assert_eq!(e.user_id.as_deref(), Some("u"));
    assert_eq!(e.session_id.as_deref(), Some("s"));
    assert_eq!(e.metadata.as_deref(), Some(r#"{"n":[1,2],"plan":"pro"}"#));
}

#[test]
fn sent_at_corrects_client_clock_skew() {
    // The client's clock is 1 hour behind: it says it sent at 11:00 while we received at 12:00,
    // so its timestamp moves forward by received - sent_at = 1 h.
    let e = one(
        r#"{"event_name":"x","timestamp":"2026-11-28T10:30:00Z","sent_at":"2026-11-28T11:00:00Z"}"#,
    )
    .expect("valid");
    let want = Utc
        .with_ymd_and_hms(2026, 11, 28, 11, 30, 0)
        .single()
        .expect("valid");
    assert_eq!(e.occurred_at_us, want.timestamp_micros());
    assert!(err(r#"{"event_name":"x","sent_at":"yesterday"}"#).contains("sent_at"));
    // Extreme corrections are refused by the window check, never a panic.
    assert!(err(
        r#"{"event_name":"x","timestamp":"9999-12-31T23:59:59+14:00","sent_at":"0000-01-01T00:00:00-23:59"}"#
    )
    .contains("future"));
}

#[test]
fn event_name_limits() {
    let at_limit = format!(r#"{{"event_name":"{}"}}"#, "a".repeat(200));
    assert!(one(&at_limit).is_ok());
    let past = format!(r#"{{"event_name":"{}"}}"#, "a".repeat(201));
    assert!(err(&past).contains("at most 200"));
    // 200 bytes of 2-byte characters is at the limit; one more byte is past it.
    assert!(one(&format!(r#"{{"event_name":"{}"}}"#, "é".repeat(100))).is_ok());
    assert!(one(&format!(r#"{{"event_name":"{}a"}}"#, "é".repeat(100))).is_err());
    assert!(err(r#"{"event_name":""}"#).contains("empty"));
    assert!(err(r#"{"event_name":"a\tb"}"#).contains("control"));
    assert!(err(r#"{"event_name":"a\u0000b"}"#).contains("control"));
    assert!(err(r#"{}"#).contains("event_name is required"));
    assert!(err(r#"{"event_name":5}"#).contains("invalid type"));
}

#[test]
fn user_and_session_id_limits() {
    for field in ["user_id", "session_id"] {
        let ok = format!(r#"{{"event_name":"x","{field}":"{}"}}"#, "u".repeat(200));
        assert!(one(&ok).is_ok());
        let past = format!(r#"{{"event_name":"x","{field}":"{}"}}"#, "u".repeat(201));
        assert!(err(&past).contains(field));
        let nul = format!(r#"{{"event_name":"x","{field}":"a\u0000"}}"#);
        assert!(err(&nul).contains("NUL"));
    }
}

fn nested(depth: usize) -> String {
    // depth 1 is the metadata object itself.
    let mut s = String::from("1");
    for _ in 1..depth {
        s = format!(r#"{{"a":{s}}}"#);
    }
    format!(r#"{{"event_name":"x","metadata":{{"a":{s}}}}}"#)
}

#[test]
fn metadata_limits() {
    assert!(one(&nested(32)).is_ok());
    assert!(err(&nested(33)).contains("deeper than 32"));
    // A compact object of exactly 16384 bytes: {"k":"..."} is 8 bytes plus the string.
    let fill = "v".repeat(16 * 1024 - 8);
    let at = format!(r#"{{"event_name":"x","metadata":{{"k":"{fill}"}}}}"#);
    assert_eq!(
        one(&at).expect("at limit").metadata.map(|m| m.len()),
        Some(16384)
    );
    let past = format!(r#"{{"event_name":"x","metadata":{{"k":"{fill}v"}}}}"#);
    assert!(err(&past).contains("16384"));
    assert!(err(r#"{"event_name":"x","metadata":[1]}"#).contains("object"));
    assert!(err(r#"{"event_name":"x","metadata":"s"}"#).contains("object"));
    assert!(err(r#"{"event_name":"x","metadata":{"a":"\u0000"}}"#).contains("NUL"));
    assert!(err(r#"{"event_name":"x","metadata":{"\u0000":1}}"#).contains("NUL"));
    assert!(one(r#"{"event_name":"x","metadata":null}"#).is_ok());
}

#[test]
fn unknown_fields_and_bad_ids_are_errors() {
    assert!(err(r#"{"event_name":"x","color":"red"}"#).contains("unknown field `color`"));
    assert!(err(r#"{"event_name":"x","event_id":"nope"}"#).contains("not a UUID"));
    assert!(
        err(r#"{"event_name":"x","event_id":"00000000-0000-0000-0000-000000000000"}"#)
            .contains("nil")
    );
    assert!(err(r#"{"event_name":"x","timestamp":"2026-11-28 10:00"}"#).contains("RFC 3339"));
    assert!(err(r#"{"event_name":"x","timestamp":"2026-11-28T10:00:00"}"#).contains("RFC 3339"));
}

#[test]
fn timestamps_outside_the_window_are_refused() {
    let c = ctx();
    let within = (c.received_at + Duration::hours(23)).to_rfc3339();
    assert!(one(&format!(r#"{{"event_name":"x","timestamp":"{within}"}}"#)).is_ok());
    let future = (c.received_at + Duration::hours(25)).to_rfc3339();
    assert!(err(&format!(r#"{{"event_name":"x","timestamp":"{future}"}}"#)).contains("future"));
    let oldest = c.oldest.to_rfc3339();
    assert!(one(&format!(r#"{{"event_name":"x","timestamp":"{oldest}"}}"#)).is_ok());
    let old = (c.oldest - Duration::seconds(1)).to_rfc3339();
    assert!(err(&format!(r#"{{"event_name":"x","timestamp":"{old}"}}"#)).contains("retention"));
}

#[test]
fn bodies_single_array_mixed_and_refused() {
    let d = body(br#" {"event_name":"a"} "#, &ctx()).expect("single");
    assert_eq!((d.valid.len(), d.rejected.len()), (1, 0));
    let d = body(
        br#"[{"event_name":"a"}, {"nope":1}, 7, {"event_name":"b"}, {"event_name":""}]"#,
        &ctx(),
    )
    .expect("mixed");
    assert_eq!(d.valid.len(), 2);
    let idx: Vec<usize> = d.rejected.iter().map(|r| r.index).collect();
    assert_eq!(idx, vec![1, 2, 4]);
    assert!(d.rejected[1].error.contains("JSON object"));
    assert!(matches!(
        body(b"nope", &ctx()),
        Err(BodyError::InvalidJson(_))
    ));
    assert!(matches!(body(b"", &ctx()), Err(BodyError::InvalidJson(_))));
    assert!(matches!(
        body(b"\"str\"", &ctx()),
        Err(BodyError::NotObjectOrArray)
    ));
    assert!(matches!(
        body(b"12", &ctx()),
        Err(BodyError::NotObjectOrArray)
    ));
    assert!(matches!(body(b"[]", &ctx()), Err(BodyError::Empty)));
    assert!(matches!(
        body(b"[{\"event_name\":\"a\"}", &ctx()),
        Err(BodyError::InvalidJson(_))
    ));
    assert!(matches!(
        body(b"{\"event_name\":\"a\"} x", &ctx()),
        Err(BodyError::InvalidJson(_))
    ));
}

#[test]
fn batch_size_limit() {
    let mut c = ctx();
    c.max_events = 3;
    let three = br#"[{"event_name":"a"},{"event_name":"a"},{"event_name":"a"}]"#;
    assert_eq!(body(three, &c).expect("at limit").valid.len(), 3);
    let four = br#"[{"event_name":"a"},{"event_name":"a"},{"event_name":"a"},{"event_name":"a"}]"#;
    assert_eq!(
        body(four, &c).expect_err("past limit"),
        BodyError::TooManyEvents { count: 4, max: 3 }
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    /// The decoder never panics, whatever the bytes.
    #[test]
    fn decoder_never_panics_on_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = body(&bytes, &ctx());
    }

    /// Nor on JSON-shaped input built from the event's own field names and odd values.
    #[test]
    fn decoder_never_panics_on_json_like_input(
        parts in proptest::collection::vec(
            prop_oneof![
                Just("{".to_string()), Just("}".to_string()), Just("[".to_string()),
                Just("]".to_string()), Just(",".to_string()), Just(":".to_string()),
                Just("\"event_name\"".to_string()), Just("\"metadata\"".to_string()),
                Just("\"timestamp\"".to_string()), Just("\"sent_at\"".to_string()),
                Just("\"event_id\"".to_string()), Just("\"2026-11-28T10:00:00Z\"".to_string()),
                Just("\"9999-12-31T23:59:59+14:00\"".to_string()),
                Just("\"0000-01-01T00:00:00-23:59\"".to_string()),
                Just("null".to_string()), Just("1e999".to_string()), Just("\"\\u0000\"".to_string()),
                "\"[a-z]{0,8}\"", "-?[0-9]{1,20}",
            ],
            0..64,
        )
    ) {
        let s = parts.concat();
        let _ = body(s.as_bytes(), &ctx());
    }

    /// Every valid event in a batch comes out, in order, with the rest rejected by index.
    #[test]
    fn valid_and_rejected_partition_the_batch(flags in proptest::collection::vec(any::<bool>(), 1..50)) {
        let items: Vec<String> = flags
            .iter()
            .map(|ok| if *ok { r#"{"event_name":"e"}"#.to_string() } else { r#"{"bad":1}"#.to_string() })
            .collect();
        let json = format!("[{}]", items.join(","));
        let d = body(json.as_bytes(), &ctx()).expect("array");
        prop_assert_eq!(d.valid.len(), flags.iter().filter(|f| **f).count());
        let rejected: Vec<usize> = flags.iter().enumerate().filter(|(_, f)| !**f).map(|(i, _)| i).collect();
        prop_assert_eq!(d.rejected.iter().map(|r| r.index).collect::<Vec<_>>(), rejected);
    }
}

#[test]
fn metadata_is_kept_as_sent_when_compact_and_rebuilt_compact_otherwise() {
    let meta = |m: &str| {
        one(&format!(r#"{{"event_name":"x","metadata":{m}}}"#))
            .map(|e| e.metadata.expect("metadata"))
    };
    // Compact and without escapes: the text as sent, spaces inside strings kept.
    let plain = r#"{"path":"/a b","n":[1,2.5,{"k":true}],"s":null}"#;
    assert_eq!(meta(plain).unwrap(), plain);
    // Whitespace between tokens: compacted; escapes: decoded by the parse, as before.
    assert_eq!(meta("{ \"a\" : [1, 2] }").unwrap(), r#"{"a":[1,2]}"#);
    assert_eq!(meta(r#"{"a":"\u00e9"}"#).unwrap(), r#"{"a":"é"}"#);
    // An escape sends the text through the parse, which refuses a lone surrogate.
    assert!(meta(r#"{"a":"\ud800"}"#).is_err());
    // Both ways hold the depth limit at 32 and past it.
    assert!(one(&nested(32)).is_ok());
    let spaced = nested(32).replace(r#""a":"#, r#""a": "#);
    assert!(one(&spaced).is_ok());
    assert!(err(&nested(33)).contains("deeper than 32"));
    assert!(err(&nested(33).replace(r#""a":"#, r#""a": "#)).contains("deeper than 32"));
}
