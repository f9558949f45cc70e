//! Metric names, their helpers and the Prometheus recorder.
//!
//! Every metric of every daemon is named here and recorded through a helper, so names stay
//! consistent and label values come only from the small fixed sets below (no app ids, no event
//! names: a label must never carry an unbounded value).

use std::sync::OnceLock;
use std::time::Duration;

use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

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

/// Describes the metrics of `daemon` and exports each of its counters at zero, so dashboards and
/// alerts see them before their first event.
pub fn register(daemon: Daemon) {
    describe_gauge!(
        DB_POOL_CONNECTIONS,
        "PostgreSQL pool connections by pool and state (total, idle, waiting, max)."
    );
    describe_counter!(SLOW_QUERIES, "Queries slower than SLOW_QUERY_MS.");
    describe_counter!(
        DB_CONNECT_ERRORS,
        "PostgreSQL connections refused or unreachable, by pool and SQLSTATE (53300: too many clients)."
    );
    counter!(SLOW_QUERIES).absolute(0);
    describe_counter!(
        TASK_DEATHS,
        "Background tasks that ended or panicked before shutdown, by task; any makes the daemon unhealthy."
    );
    gauge!(BUILD_INFO, "daemon" => daemon.as_str(), "version" => env!("CARGO_PKG_VERSION"))
        .set(1.0);
    match daemon {
        Daemon::Gateway => register_gateway(),
        Daemon::Writer => register_writer(),
        Daemon::Maintenance => register_maintenance(),
    }
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

fn register_gateway() {
    describe_counter!(
        EVENTS_ACCEPTED,
        "Events queued on Redis and answered as accepted, by wire format (api); suppressed users' events are counted in sluice_events_suppressed_total instead."
    );
    describe_counter!(
        EVENTS_REJECTED,
        "Events refused, by wire format (api) and reason."
    );
    describe_counter!(CACHE_HITS, "Read API answers served from the cache.");
    describe_counter!(CACHE_MISSES, "Read API answers computed from PostgreSQL.");
    describe_counter!(
        KEY_LOOKUPS,
        "API keys unknown to the cache: looked up in PostgreSQL (live, unknown, revoked) or refused over the lookup budget."
    );
    for outcome in ["live", "unknown", "revoked", "over_budget"] {
        counter!(KEY_LOOKUPS, "outcome" => outcome).absolute(0);
    }
    describe_counter!(
        KEY_RELOADS,
        "Full reloads of the gateway's key cache (at start, after the key-change session reconnects, every KEY_REFRESH_MS)."
    );
    counter!(KEY_RELOADS).absolute(0);
    describe_counter!(
        EVENTS_SUPPRESSED,
        "Events of suppressed users (an erasure request with suppress): answered as accepted, never queued, by wire format (api)."
    );
    for api in APIS {
        counter!(EVENTS_ACCEPTED, "api" => *api).absolute(0);
        counter!(EVENTS_SUPPRESSED, "api" => *api).absolute(0);
        for reason in REJECT_REASONS {
            counter!(EVENTS_REJECTED, "api" => *api, "reason" => *reason).absolute(0);
        }
    }
    counter!(CACHE_HITS).absolute(0);
    counter!(CACHE_MISSES).absolute(0);
    describe_gauge!(CACHE_KEYS, "Answers in the read cache.");
    describe_gauge!(CACHE_MEMORY, "Memory used by the cache Redis.");
    describe_gauge!(
        CACHE_HIT_RATIO,
        "Today's read cache hit ratio, across gateway replicas."
    );
    describe_gauge!(
        QUEUE_DEPTH,
        "Events queued in Redis and not yet written, as the gateway last saw them."
    );
    describe_histogram!(
        HTTP_DURATION,
        "Client request duration by route and status class."
    );
    gauge!(QUEUE_DEPTH).set(0.0);
}

fn register_writer() {
    describe_counter!(
        EVENTS_WRITTEN,
        "Events committed to PostgreSQL (duplicates excluded)."
    );
    describe_counter!(DEAD_LETTER, "Events moved to the dead-letter stream.");
    describe_gauge!(
        QUEUE_LAG,
        "Events in the streams not yet delivered to the consumer group."
    );
    describe_histogram!(BATCH_SIZE, "Events per written batch.");
    describe_histogram!(COPY_DURATION, "Time to COPY and commit one batch.");
    describe_counter!(CLAIMED, "Stream entries claimed from idle consumers.");
    describe_histogram!(
        E2E_LATENCY,
        "Time from the gateway receiving an event to its commit in PostgreSQL."
    );
    describe_counter!(
        BATCHES,
        "Batches by outcome: written whole, split around bad events, or abandoned at shutdown."
    );
    describe_gauge!(COPY_RATE, "Rows per second of the last written batch.");
    counter!(EVENTS_WRITTEN).absolute(0);
    counter!(DEAD_LETTER).absolute(0);
    counter!(CLAIMED).absolute(0);
    for outcome in BATCH_OUTCOMES {
        counter!(BATCHES, "outcome" => *outcome).absolute(0);
    }
    gauge!(QUEUE_LAG).set(0.0);
}

/// The maintenance jobs, as values of the `job` label.
pub const MAINTENANCE_JOBS: &[&str] = &[
    "partitions",
    "retention",
    "dedupe",
    "views",
    "analyze",
    "vacuum",
];

fn register_maintenance() {
    describe_counter!(MAINTENANCE_RUNS, "Maintenance job runs by job and outcome.");
    for job in MAINTENANCE_JOBS {
        for outcome in ["success", "failure"] {
            counter!(MAINTENANCE_RUNS, "job" => *job, "outcome" => outcome).absolute(0);
        }
    }
}

pub fn pool_connections(pool: PoolName, state: &'static str, value: usize) {
    gauge!(DB_POOL_CONNECTIONS, "pool" => pool.as_str(), "state" => state).set(value as f64);
}

/// `pool` is a [`PoolName`]'s or `leader` (the maintenance worker's lock session); `sqlstate` is
/// a SQLSTATE code (a fixed set of PostgreSQL's), `timeout` or `unreachable`.
pub fn db_connect_error(pool: &'static str, sqlstate: String) {
    counter!(DB_CONNECT_ERRORS, "pool" => pool, "sqlstate" => sqlstate).increment(1);
}

/// Exports the connection-refused counter of `pool` at zero for "too many clients" (53300), the
/// refusal a connection budget alert watches.
pub fn db_connect_errors_zero(pool: PoolName) {
    counter!(DB_CONNECT_ERRORS, "pool" => pool.as_str(), "sqlstate" => "53300").increment(0);
}

/// A key the gateway's cache did not know: looked up (`live`, `unknown`, `revoked`), or refused
/// unlooked because the lookup budget was spent (`over_budget`).
pub fn key_lookup(outcome: &'static str) {
    counter!(KEY_LOOKUPS, "outcome" => outcome).increment(1);
}

/// Exports a task's death counter at zero, so the alert on it sees the series from the start.
pub fn key_reload() {
    counter!(KEY_RELOADS).increment(1);
}

pub fn task_watched(task: &'static str) {
    counter!(TASK_DEATHS, "task" => task).increment(0);
}

pub fn task_died(task: &'static str) {
    counter!(TASK_DEATHS, "task" => task).increment(1);
}

pub fn slow_query() {
    counter!(SLOW_QUERIES).increment(1);
}

/// `api` must be one of [`APIS`].
pub fn events_accepted(api: &'static str, n: u64) {
    debug_assert!(APIS.contains(&api), "unknown api {api}");
    counter!(EVENTS_ACCEPTED, "api" => api).increment(n);
}

/// Events dropped for a suppressed user; `api` must be one of [`APIS`].
pub fn events_suppressed(api: &'static str, n: u64) {
    debug_assert!(APIS.contains(&api), "unknown api {api}");
    counter!(EVENTS_SUPPRESSED, "api" => api).increment(n);
}

/// `api` must be one of [`APIS`], `reason` one of [`REJECT_REASONS`].
pub fn events_rejected(api: &'static str, reason: &'static str, n: u64) {
    debug_assert!(APIS.contains(&api), "unknown api {api}");
    debug_assert!(REJECT_REASONS.contains(&reason), "unknown reason {reason}");
    counter!(EVENTS_REJECTED, "api" => api, "reason" => reason).increment(n);
}

pub fn events_written(n: u64) {
    counter!(EVENTS_WRITTEN).increment(n);
}

pub fn dead_lettered(n: u64) {
    counter!(DEAD_LETTER).increment(n);
}

/// The values of the `outcome` label of `sluice_batches_total`.
pub const BATCH_OUTCOMES: &[&str] = &["written", "split", "abandoned"];

/// `outcome` must be one of [`BATCH_OUTCOMES`].
pub fn batch(outcome: &'static str) {
    counter!(BATCHES, "outcome" => outcome).increment(1);
}

pub fn copy_rate(rows: u64, elapsed: Duration) {
    if elapsed > Duration::ZERO {
        gauge!(COPY_RATE).set(rows as f64 / elapsed.as_secs_f64());
    }
}

pub fn cache_state(keys: u64, memory: Option<u64>, hit_ratio: Option<f64>) {
    gauge!(CACHE_KEYS).set(keys as f64);
    if let Some(m) = memory {
        gauge!(CACHE_MEMORY).set(m as f64);
    }
    if let Some(r) = hit_ratio {
        gauge!(CACHE_HIT_RATIO).set(r);
    }
}

pub fn claimed(n: u64) {
    counter!(CLAIMED).increment(n);
}

static E2E_MAX_US: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Records one event's time from receive to commit, and keeps the largest seen since start.
pub fn end_to_end_latency(d: Duration) {
    histogram!(E2E_LATENCY).record(d.as_secs_f64());
    let us = d.as_micros() as u64;
    let before = E2E_MAX_US.fetch_max(us, std::sync::atomic::Ordering::Relaxed);
    if us > before {
        gauge!(E2E_LATENCY_MAX).set(d.as_secs_f64());
    }
}

pub fn queue_lag(events: u64) {
    gauge!(QUEUE_LAG).set(events as f64);
}

pub fn queue_depth(events: u64) {
    gauge!(QUEUE_DEPTH).set(events as f64);
}

/// `route` must be a fixed route name (never the raw path).
pub fn http_request(route: &'static str, status: u16, elapsed: Duration) {
    let class = match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    };
    histogram!(HTTP_DURATION, "route" => route, "status" => class).record(elapsed.as_secs_f64());
}

pub fn batch_written(size: usize, copy: Duration) {
    histogram!(BATCH_SIZE).record(size as f64);
    histogram!(COPY_DURATION).record(copy.as_secs_f64());
}

/// `job` must be one of [`MAINTENANCE_JOBS`].
pub fn maintenance_run(job: &'static str, success: bool) {
    let outcome = if success { "success" } else { "failure" };
    counter!(MAINTENANCE_RUNS, "job" => job, "outcome" => outcome).increment(1);
}

pub fn cache_hit() {
    counter!(CACHE_HITS).increment(1);
}

pub fn cache_miss() {
    counter!(CACHE_MISSES).increment(1);
}

#[cfg(test)]
mod tests {
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
