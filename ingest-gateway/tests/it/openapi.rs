//! docs/openapi.json is kept true: its routes, error codes, statuses and limits are the
//! gateway's.

use std::collections::BTreeSet;

use ingest_gateway::error::ApiError;
use ingest_gateway::routes::{ROUTER_CODES, ROUTES};
use ingest_gateway::validate::{
    MAX_ID_BYTES, MAX_METADATA_BYTES, MAX_METADATA_DEPTH, MAX_NAME_BYTES,
};

fn spec() -> serde_json::Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/openapi.json");
    serde_json::from_str(&std::fs::read_to_string(path).expect("docs/openapi.json"))
        .expect("valid JSON")
}

#[test]
fn the_spec_lists_exactly_the_gateways_routes() {
    let spec = spec();
    let mut listed = BTreeSet::new();
    for (path, item) in spec["paths"].as_object().expect("paths") {
        for method in item.as_object().expect("methods").keys() {
            listed.insert((method.clone(), path.clone()));
        }
    }
    let routes: BTreeSet<(String, String)> = ROUTES
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    assert_eq!(listed, routes);
}

#[test]
fn the_spec_lists_every_error_code_and_status() {
    let spec = spec();
    let listed: BTreeSet<String> = spec["components"]["schemas"]["Error"]["properties"]["error"]
        ["enum"]
        .as_array()
        .expect("enum")
        .iter()
        .map(|v| v.as_str().expect("string").to_owned())
        .collect();
    let mut codes: BTreeSet<String> = ROUTER_CODES.iter().map(|c| c.to_string()).collect();
    let post = &spec["paths"]["/v1/events"]["post"]["responses"];
    for e in ApiError::examples() {
        let (status, code, retry_after, _) = e.parts();
        codes.insert(code.to_owned());
        if matches!(
            e,
            ApiError::IngestKeyCannotRead
                | ApiError::BadQuery(_)
                | ApiError::DbUnavailable
                | ApiError::AdminKeyRequired
                | ApiError::InvalidErasure(_)
                | ApiError::ErasureNotFound
        ) {
            continue; // read and privacy API errors, documented with those routes
        }
        let resp = &post[status.as_str()];
        assert!(
            resp.is_object(),
            "status {status} ({code}) is not documented for POST /v1/events"
        );
        if retry_after.is_some() {
            assert!(
                resp["headers"]["Retry-After"].is_object(),
                "{status} must document Retry-After"
            );
        }
    }
    assert_eq!(listed, codes);
}

#[test]
fn the_spec_states_the_validation_limits() {
    let spec = spec();
    let event = &spec["components"]["schemas"]["Event"];
    assert_eq!(
        event["properties"]["event_name"]["maxLength"],
        MAX_NAME_BYTES
    );
    assert_eq!(event["properties"]["user_id"]["maxLength"], MAX_ID_BYTES);
    assert_eq!(event["properties"]["session_id"]["maxLength"], MAX_ID_BYTES);
    assert_eq!(event["additionalProperties"], false);
    let meta = event["properties"]["metadata"]["description"]
        .as_str()
        .expect("description");
    assert!(
        meta.contains(&MAX_METADATA_BYTES.to_string())
            && meta.contains(&MAX_METADATA_DEPTH.to_string())
    );
    let defaults =
        ingest_gateway::GatewayConfig::from_env(&shared::config::Env::default()).expect("defaults");
    assert_eq!(
        spec["components"]["schemas"]["Body"]["oneOf"][1]["maxItems"],
        defaults.max_events_per_request
    );
}
