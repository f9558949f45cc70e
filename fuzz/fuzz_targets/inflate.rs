//! Gzip inflation of a request body: arbitrary bytes never panic and never inflate past the cap.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(out) = ingest_gateway::body::inflate(data, 64 * 1024) {
        assert!(out.len() <= 64 * 1024);
    }
});
