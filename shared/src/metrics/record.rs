//! A helper per metric: label values come only from the fixed sets of the parent module.

use std::time::Duration;

use metrics::{counter, gauge, histogram};

use super::*;

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
