use std::io::Write;

use base64::Engine;
use bytes::Bytes;
use chrono::Utc;
use http::{HeaderMap, HeaderValue};

use super::keys::{basic_user, header_key};
use super::*;
use crate::validate::BodyError;

#[test]
fn routes_name_their_family_and_type() {
    assert_eq!(
        route("/v1/batch"),
        Some(Route {
            api: Api::Segment,
            kind: None
        })
    );
    assert_eq!(
        route("/v1/alias"),
        Some(Route {
            api: Api::Segment,
            kind: Some("alias")
        })
    );
    for p in POSTHOG_PATHS {
        assert_eq!(route(p).map(|r| r.api), Some(Api::PostHog), "{p}");
    }
    assert_eq!(
        route("/i/v1/analytics/events").map(|r| r.api),
        Some(Api::PostHogV1)
    );
    assert_eq!(
        route("/api/s/track"),
        Some(Route {
            api: Api::Jitsu,
            kind: Some("track")
        })
    );
    assert_eq!(
        route("/api/s/s2s/page"),
        Some(Route {
            api: Api::Jitsu,
            kind: Some("page")
        })
    );
    for p in [
        "/api/s/merge",
        "/api/s/",
        "/v1/events",
        "/v1/merge",
        "/batchx",
        "/api/s/s2s/",
    ] {
        assert_eq!(route(p), None, "{p}");
    }
}

fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.insert(*k, HeaderValue::from_str(v).expect("hv"));
    }
    h
}

#[test]
fn keys_come_from_each_familys_headers() {
    // base64("wk_test123:") as Segment and RudderStack send it.
    let basic = headers(&[("authorization", "Basic d2tfdGVzdDEyMzo=")]);
    assert_eq!(header_key(Api::Segment, &basic), vec!["wk_test123"]);
    assert_eq!(
        header_key(Api::PostHog, &basic),
        Vec::<String>::new(),
        "v0 keys are in the body"
    );
    let bearer = headers(&[("authorization", "Bearer k1")]);
    assert_eq!(header_key(Api::PostHogV1, &bearer), vec!["k1"]);
    assert_eq!(header_key(Api::Segment, &bearer), vec!["k1"]);
    let jitsu = headers(&[("x-write-key", "id1:secret1")]);
    assert_eq!(
        header_key(Api::Jitsu, &jitsu),
        vec!["id1:secret1", "id1", "secret1"]
    );
    let alone = headers(&[("x-write-key", "k2")]);
    assert_eq!(header_key(Api::Jitsu, &alone), vec!["k2"]);
    assert_eq!(basic_user("Basic !!!"), None);
    assert_eq!(basic_user("Basic Og=="), None, "an empty user is no key");
}

#[test]
fn envelopes_give_their_messages_key_and_send_time() {
    let batch = br#"{"batch":[{"type":"track"},{"type":"page"}],"writeKey":"k","sentAt":"2026-11-30T10:00:00Z","context":{"ip":"1"}}"#;
    let p = parse(Api::Segment, route("/v1/batch").expect("r"), batch).expect("parses");
    assert_eq!(p.messages.len(), 2);
    assert_eq!(p.key.as_deref(), Some("k"));
    assert!(p.sent_at.is_some());
    assert_eq!(p.shared.context.as_ref().map(|c| c.len()), Some(1));
    let single = br#"{"event":"x","userId":"u","writeKey":"k"}"#;
    let p = parse(Api::Segment, route("/v1/track").expect("r"), single).expect("parses");
    assert_eq!(p.messages.len(), 1);
    assert_eq!(p.key.as_deref(), Some("k"));
    assert!(matches!(
        parse(
            Api::Segment,
            route("/v1/batch").expect("r"),
            br#"{"writeKey":"k"}"#
        ),
        Err(BodyError::MissingBatch)
    ));
    let ph = br#"[{"event":"a","properties":{"token":"k"}},{"event":"b"}]"#;
    let p = parse(Api::PostHog, route("/e/").expect("r"), ph).expect("parses");
    assert_eq!(p.messages.len(), 2);
    let one = br#"{"event":"a","api_key":"k"}"#;
    let p = parse(Api::PostHog, route("/capture/").expect("r"), one).expect("parses");
    assert_eq!((p.messages.len(), p.key.as_deref()), (1, Some("k")));
    assert!(matches!(
        parse(Api::Segment, route("/v1/batch").expect("r"), b"{\"batch\":"),
        Err(BodyError::InvalidJson(_))
    ));
    assert!(matches!(
        parse(Api::Segment, route("/v1/batch").expect("r"), b"[1]"),
        Err(BodyError::NotObjectOrArray)
    ));
    assert!(matches!(
        parse(Api::Segment, route("/v1/batch").expect("r"), b"not json"),
        Err(BodyError::InvalidJson(_))
    ));
}

#[test]
fn posthog_js_form_bodies_decode() {
    let json = r#"[{"event":"$pageview"}]"#;
    let b64 = base64::engine::general_purpose::STANDARD.encode(json);
    let form: String = form_urlencoded::Serializer::new(String::new())
        .append_pair("data", &b64)
        .finish();
    let out = unform(Bytes::from(form), Some("compression=base64")).expect("base64");
    assert_eq!(&out[..], json.as_bytes());
    let plain: String = form_urlencoded::Serializer::new(String::new())
        .append_pair("data", json)
        .finish();
    assert_eq!(
        &unform(Bytes::from(plain), None).expect("json")[..],
        json.as_bytes()
    );
    let unpadded = Bytes::from(format!("data={}", b64.trim_end_matches('=')));
    assert_eq!(
        &unform(unpadded, None).expect("no padding")[..],
        json.as_bytes()
    );
    assert!(unform(Bytes::from_static(b"data=%%%"), None).is_err());
    assert!(unform(Bytes::from_static(b"data=x"), Some("compression=lz64")).is_err());
    let raw = Bytes::from_static(b"{\"a\":1}");
    assert_eq!(unform(raw.clone(), None).expect("untouched"), raw);
    // gzip-js: gzip bytes labelled text/plain, found by their magic bytes.
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(json.as_bytes()).expect("write");
    let gz = Bytes::from(enc.finish().expect("gzip"));
    let out = crate::body::decode(gz, crate::body::Encoding::Sniff, 1 << 20).expect("gzip");
    assert_eq!(&out[..], json.as_bytes());
}

#[test]
fn send_time_comes_from_posthogs_header_or_query() {
    let h = headers(&[("posthog-request-timestamp", "2026-11-30T04:53:19.307Z")]);
    assert_eq!(
        header_sent_at(&h, None).map(|t| t.timestamp_millis()),
        Some(1_796_014_399_307)
    );
    assert_eq!(
        header_sent_at(&HeaderMap::new(), Some("ip=0&_=1796014399307&ver=1"))
            .map(|t| t.timestamp_millis()),
        Some(1_796_014_399_307)
    );
    assert_eq!(header_sent_at(&HeaderMap::new(), Some("_=soon")), None);
}

fn mapping_ctx() -> map::Context<'static> {
    let now = Utc::now();
    map::Context {
        app_id: "app",
        received_at: now,
        oldest: now - chrono::Duration::days(30),
        sent_at: None,
        max_event_bytes: 1024,
    }
}

#[test]
fn partly_valid_batches_keep_the_valid_and_name_the_refused() {
    let body = br#"{"batch":[
        {"event":"ok","uuid":"01890000-0000-7000-8000-700000000001","distinct_id":"u"},
        {"uuid":"01890000-0000-7000-8000-700000000002"},
        {"event":"other key","properties":{"token":"someone-else"}},
        "not an object"
    ]}"#;
    let r = route("/i/v1/analytics/events").expect("r");
    let p = parse(Api::PostHogV1, r, body).expect("parses");
    let out = map_all(Api::PostHogV1, r, &p, &mapping_ctx(), Some("mine"));
    assert_eq!(out.valid.len(), 1);
    assert_eq!(out.rejected.len(), 3);
    let ids: Vec<&str> = out.refused_ids.iter().map(|(i, _)| i.as_str()).collect();
    assert_eq!(ids, vec!["01890000-0000-7000-8000-700000000002", "2", "3"]);
    let big = format!(
        r#"{{"batch":[{{"type":"track","event":"e","properties":{{"p":"{}"}}}}]}}"#,
        "x".repeat(1100)
    );
    let r = route("/v1/batch").expect("r");
    let p = parse(Api::Segment, r, big.as_bytes()).expect("parses");
    let out = map_all(Api::Segment, r, &p, &mapping_ctx(), None);
    assert!(
        out.rejected[0].error.contains("at most 1024"),
        "{:?}",
        out.rejected
    );
}
