//! Metric names, their helpers and the Prometheus recorder.
//!
//! Every metric of every daemon is named here and recorded through a helper, so names stay
//! consistent and label values come only from the small fixed sets below (no app ids, no event
//! names: a label must never carry an unbounded value).
//!
//! - here: the names, the label value sets and the recorder;
//! - `register.rs`: what each daemon describes and exports at zero from start;
//! - `record.rs`: a helper per metric.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

mod record;
mod register;

pub use record::*;
pub use register::{describe, register, Described, Kind};

pub const EVENTS_ACCEPTED: &str = "sluice_events_accepted_total";
pub const EVENTS_REJECTED: &str = "sluice_events_rejected_total";
pub const EVENTS_SUPPRESSED: &str = "sluice_events_suppressed_total";
pub const EVENTS_WRITTEN: &str = "sluice_events_written_total";
pub const DEAD_LETTER: &str = "sluice_dead_letter_total";
pub const QUEUE_LAG: &str = "sluice_queue_lag_events";
pub const BATCH_SIZE: &str = "sluice_batch_size";
pub const COPY_DURATION: &str = "sluice_copy_duration_seconds";
pub const MAINTENANCE_RUNS: &str = "sluice_maintenance_runs_total";
pub const DB_POOL_CONNECTIONS: &str = "sluice_db_pool_connections";
pub const CACHE_HITS: &str = "sluice_cache_hits_total";
pub const CACHE_MISSES: &str = "sluice_cache_misses_total";
pub const SLOW_QUERIES: &str = "sluice_db_slow_queries_total";
pub const DB_CONNECT_ERRORS: &str = "sluice_db_connect_errors_total";
pub const BUILD_INFO: &str = "sluice_build_info";
pub const CLAIMED: &str = "sluice_entries_claimed_total";
pub const E2E_LATENCY: &str = "sluice_end_to_end_latency_seconds";
pub const E2E_LATENCY_MAX: &str = "sluice_end_to_end_latency_max_seconds";
pub const BATCHES: &str = "sluice_batches_total";
pub const COPY_RATE: &str = "sluice_copy_rows_per_second";
pub const CACHE_KEYS: &str = "sluice_cache_keys";
pub const CACHE_MEMORY: &str = "sluice_cache_memory_bytes";
pub const CACHE_HIT_RATIO: &str = "sluice_cache_hit_ratio";
pub const QUEUE_DEPTH: &str = "sluice_queue_depth_events";
pub const HTTP_DURATION: &str = "sluice_http_request_duration_seconds";
pub const TASK_DEATHS: &str = "sluice_background_task_deaths_total";
pub const KEY_LOOKUPS: &str = "sluice_key_lookups_total";
pub const KEY_RELOADS: &str = "sluice_key_reloads_total";

/// The pools a daemon may hold, as label values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolName {
    Write,
    Read,
}

impl PoolName {
    pub fn as_str(self) -> &'static str {
        match self {
            PoolName::Write => "write",
            PoolName::Read => "read",
        }
    }
}

/// Which daemon is recording; decides which metrics it exports from start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Daemon {
    Gateway,
    Writer,
    Maintenance,
}

impl Daemon {
    pub fn as_str(self) -> &'static str {
        match self {
            Daemon::Gateway => "ingest-gateway",
            Daemon::Writer => "batch-writer",
            Daemon::Maintenance => "maintenance-worker",
        }
    }
}

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Upper bounds of `sluice_end_to_end_latency_seconds`: 1.5-2x apart from 10 ms to a minute,
/// then 5 minutes. (Every bucket list adds `le` values; all of them together stay within the
/// 40 values a label may have, which the Prometheus test checks.)
pub const E2E_BUCKETS: &[f64] = &[
    0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0,
    7.5, 10.0, 15.0, 20.0, 30.0, 60.0, 300.0,
];

/// Installs the process-wide Prometheus recorder once and returns its handle. Later calls return
/// the same handle, so tests that start several daemons in one process share one registry.
pub fn install() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Full(BATCH_SIZE.to_owned()),
                    &[1.0, 10.0, 50.0, 100.0, 250.0, 500.0, 750.0, 1000.0],
                )
                .and_then(|b| {
                    // Fine enough to read a p50 or p99 anywhere from 10 ms to a minute.
                    b.set_buckets_for_metric(Matcher::Full(E2E_LATENCY.to_owned()), E2E_BUCKETS)
                })
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Suffix("_seconds".to_owned()),
                        &[
                            0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                            2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
                        ],
                    )
                })
                .expect("bucket lists are non-empty");
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            if metrics::set_global_recorder(recorder).is_err() {
                tracing::warn!("A metrics recorder was already installed; /metrics may be empty.");
            }
            handle
        })
        .clone()
}

/// The `api` label of the event counters: the wire format a request came in (`native` is
/// `POST /v1/events`; the others are the SDK routes).
pub const APIS: &[&str] = &["native", "segment", "posthog", "jitsu"];

/// Reasons an event or a request is rejected; the only values of the `reason` label.
pub const REJECT_REASONS: &[&str] = &[
    "invalid_event",
    "invalid_body",
    "too_many_events",
    "body_too_large",
    "unsupported_media",
    "unauthorized",
    "forbidden",
    "rate_limited",
    "queue_full",
    "queue_unavailable",
    "db_unavailable",
    "key_lookup_busy",
    "shutting_down",
];

/// The values of the `outcome` label of `sluice_batches_total`.
pub const BATCH_OUTCOMES: &[&str] = &["written", "split", "abandoned"];

/// The maintenance jobs, as values of the `job` label.
pub const MAINTENANCE_JOBS: &[&str] = &[
    "partitions",
    "retention",
    "dedupe",
    "views",
    "analyze",
    "vacuum",
];

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn end_to_end_latency_has_its_fine_buckets() {
        let handle = install();
        end_to_end_latency(Duration::from_millis(12));
        let text = handle.render();
        for le in ["0.01", "0.015", "0.02", "60", "300"] {
            let line = format!("{E2E_LATENCY}_bucket{{le=\"{le}\"}}");
            assert!(text.contains(&line), "{line} in\n{text}");
        }
        assert!(
            !text.contains(&format!("{E2E_LATENCY}_bucket{{le=\"0.0005\"}}")),
            "not the generic seconds buckets"
        );
    }
}
