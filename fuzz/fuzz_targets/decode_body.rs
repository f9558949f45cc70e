//! The request decoder on arbitrary bytes: it must answer (valid events, rejections or a body
//! error) without panicking, and never accept more events than allowed.
#![no_main]

use chrono::{TimeZone, Utc};
use ingest_gateway::validate::{body, Context};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let received_at = Utc.with_ymd_and_hms(2026, 11, 28, 10, 0, 0).unwrap();
    let ctx = Context {
        app_id: "app_fuzz",
        received_at,
        oldest: Utc.with_ymd_and_hms(2024, 1, 1, 0, 0, 0).unwrap(),
        max_events: 1000,
    };
    if let Ok(decoded) = body(data, &ctx) {
        assert!(decoded.valid.len() + decoded.rejected.len() <= 1000);
        for e in &decoded.valid {
            assert!(!e.event_name.is_empty() && e.event_name.len() <= 200);
            assert!(!e.event_name.contains('\0'));
        }
    }
});
