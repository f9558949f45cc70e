//! The maintenance worker's own metrics, beside the shared ones.

use std::time::Duration;

use metrics::{counter, gauge, histogram};
use shared::metrics::{describe, Described, Kind};

pub const DURATION: &str = "sluice_maintenance_duration_seconds";
pub const LAST_SUCCESS: &str = "sluice_maintenance_last_success_timestamp_seconds";
pub const PARTITIONS_AHEAD: &str = "sluice_partitions_ahead_months";
pub const QUARANTINE_ROWS: &str = "sluice_quarantine_rows";
pub const LEADER: &str = "sluice_maintenance_leader";
pub const ROWS: &str = "sluice_maintenance_rows_total";
pub const ERASURES: &str = "sluice_erasures_total";
pub const ERASURE_ROWS: &str = "sluice_erasure_rows_total";

const DESCRIBED: &[Described] = &[
    (DURATION, Kind::Histogram, "Maintenance job duration by job."),
    (
        LAST_SUCCESS,
        Kind::Gauge,
        "Unix time of each job's last success.",
    ),
    (
        PARTITIONS_AHEAD,
        Kind::Gauge,
        "Months of partitions that exist after the current one.",
    ),
    (
        QUARANTINE_ROWS,
        Kind::Gauge,
        "Events waiting in events_quarantine.",
    ),
    (
        LEADER,
        Kind::Gauge,
        "1 while this replica is the acting leader.",
    ),
    (
        ROWS,
        Kind::Counter,
        "Rows each maintenance job touched (moved, pruned, folded, vacuumed or sampled).",
    ),
    (
        ERASURES,
        Kind::Counter,
        "Erasure requests finished, by outcome (done, failed).",
    ),
    (
        ERASURE_ROWS,
        Kind::Counter,
        "Rows erasure requests removed, by place (events, quarantine, dead_letters, summary_members).",
    ),
];

/// Describes the worker's metrics and exports its counters at zero.
pub fn register() {
    describe(DESCRIBED);
    gauge!(LEADER).set(0.0);
    for job in crate::jobs::Job::ALL {
        counter!(ROWS, "job" => job.name()).absolute(0);
    }
    for outcome in ["done", "failed"] {
        counter!(ERASURES, "outcome" => outcome).absolute(0);
    }
    for place in shared::privacy::PLACES {
        counter!(ERASURE_ROWS, "place" => place).absolute(0);
    }
}

pub fn job_finished(job: &'static str, success: bool, elapsed: Duration) {
    shared::metrics::maintenance_run(job, success);
    histogram!(DURATION, "job" => job).record(elapsed.as_secs_f64());
    if success {
        gauge!(LAST_SUCCESS, "job" => job).set(chrono::Utc::now().timestamp() as f64);
    }
}

/// Rows `job` touched in one run.
pub fn job_rows(job: &'static str, rows: u64) {
    counter!(ROWS, "job" => job).increment(rows);
}

/// An erasure request finished: `outcome` is "done" or "failed".
pub fn erasure_finished(outcome: &'static str) {
    counter!(ERASURES, "outcome" => outcome).increment(1);
}

/// Rows an erasure batch removed from `place` (one of `shared::privacy::PLACES`).
pub fn erasure_rows(place: &'static str, rows: u64) {
    counter!(ERASURE_ROWS, "place" => place).increment(rows);
}

pub fn partitions_ahead(months: u32) {
    gauge!(PARTITIONS_AHEAD).set(months as f64);
}

pub fn quarantine_rows(n: i64) {
    gauge!(QUARANTINE_ROWS).set(n as f64);
}

pub fn leader(is: bool) {
    gauge!(LEADER).set(if is { 1.0 } else { 0.0 });
}
