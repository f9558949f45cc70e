//! What each daemon describes and exports at zero from start, so dashboards and alerts see every
//! series before its first event.

use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge};

use super::*;

/// The kind of a metric, for its description.
#[derive(Debug, Clone, Copy)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// A metric's name, kind and help text.
pub type Described = (&'static str, Kind, &'static str);

/// Every daemon's pool, query and task metrics.
const COMMON: &[Described] = &[
    (
        DB_POOL_CONNECTIONS,
        Kind::Gauge,
        "PostgreSQL pool connections by pool and state (total, idle, waiting, max).",
    ),
    (
        SLOW_QUERIES,
        Kind::Counter,
        "Queries slower than SLOW_QUERY_MS.",
    ),
    (
        DB_CONNECT_ERRORS,
        Kind::Counter,
        "PostgreSQL connections refused or unreachable, by pool and SQLSTATE (53300: too many clients).",
    ),
    (
        TASK_DEATHS,
        Kind::Counter,
        "Background tasks that ended or panicked before shutdown, by task; any makes the daemon unhealthy.",
    ),
];

const GATEWAY: &[Described] = &[
    (
        EVENTS_ACCEPTED,
        Kind::Counter,
        "Events queued on Redis and answered as accepted, by wire format (api); suppressed users' events are counted in sluice_events_suppressed_total instead.",
    ),
    (
        EVENTS_REJECTED,
        Kind::Counter,
        "Events refused, by wire format (api) and reason.",
    ),
    (
        CACHE_HITS,
        Kind::Counter,
        "Read API answers served from the cache.",
    ),
    (
        CACHE_MISSES,
        Kind::Counter,
        "Read API answers computed from PostgreSQL.",
    ),
    (
        KEY_LOOKUPS,
        Kind::Counter,
        "API keys unknown to the cache: looked up in PostgreSQL (live, unknown, revoked) or refused over the lookup budget.",
    ),
    (
        KEY_RELOADS,
        Kind::Counter,
        "Full reloads of the gateway's key cache (at start, after the key-change session reconnects, every KEY_REFRESH_MS).",
    ),
    (
        EVENTS_SUPPRESSED,
        Kind::Counter,
        "Events of suppressed users (an erasure request with suppress): answered as accepted, never queued, by wire format (api).",
    ),
    (CACHE_KEYS, Kind::Gauge, "Answers in the read cache."),
    (CACHE_MEMORY, Kind::Gauge, "Memory used by the cache Redis."),
    (
        CACHE_HIT_RATIO,
        Kind::Gauge,
        "Today's read cache hit ratio, across gateway replicas.",
    ),
    (
        QUEUE_DEPTH,
        Kind::Gauge,
        "Events queued in Redis and not yet written, as the gateway last saw them.",
    ),
    (
        HTTP_DURATION,
        Kind::Histogram,
        "Client request duration by route and status class.",
    ),
];

const WRITER: &[Described] = &[
    (
        EVENTS_WRITTEN,
        Kind::Counter,
        "Events committed to PostgreSQL (duplicates excluded).",
    ),
    (
        DEAD_LETTER,
        Kind::Counter,
        "Events moved to the dead-letter stream.",
    ),
    (
        QUEUE_LAG,
        Kind::Gauge,
        "Events in the streams not yet delivered to the consumer group.",
    ),
    (BATCH_SIZE, Kind::Histogram, "Events per written batch."),
    (
        COPY_DURATION,
        Kind::Histogram,
        "Time to COPY and commit one batch.",
    ),
    (
        CLAIMED,
        Kind::Counter,
        "Stream entries claimed from idle consumers.",
    ),
    (
        E2E_LATENCY,
        Kind::Histogram,
        "Time from the gateway receiving an event to its commit in PostgreSQL.",
    ),
    (
        BATCHES,
        Kind::Counter,
        "Batches by outcome: written whole, split around bad events, or abandoned at shutdown.",
    ),
    (
        COPY_RATE,
        Kind::Gauge,
        "Rows per second of the last written batch.",
    ),
];

const MAINTENANCE: &[Described] = &[(
    MAINTENANCE_RUNS,
    Kind::Counter,
    "Maintenance job runs by job and outcome.",
)];

/// The values of the `outcome` label of `sluice_key_lookups_total`.
const KEY_LOOKUP_OUTCOMES: &[&str] = &["live", "unknown", "revoked", "over_budget"];

/// Describes each metric of `table`.
pub fn describe(table: &[Described]) {
    for &(name, kind, help) in table {
        match kind {
            Kind::Counter => describe_counter!(name, help),
            Kind::Gauge => describe_gauge!(name, help),
            Kind::Histogram => describe_histogram!(name, help),
        }
    }
}

/// Describes the metrics of `daemon` and exports each of its counters at zero, so dashboards and
/// alerts see them before their first event.
pub fn register(daemon: Daemon) {
    describe(COMMON);
    counter!(SLOW_QUERIES).absolute(0);
    gauge!(BUILD_INFO, "daemon" => daemon.as_str(), "version" => env!("CARGO_PKG_VERSION"))
        .set(1.0);
    match daemon {
        Daemon::Gateway => register_gateway(),
        Daemon::Writer => register_writer(),
        Daemon::Maintenance => register_maintenance(),
    }
}

fn register_gateway() {
    describe(GATEWAY);
    for outcome in KEY_LOOKUP_OUTCOMES {
        counter!(KEY_LOOKUPS, "outcome" => *outcome).absolute(0);
    }
    counter!(KEY_RELOADS).absolute(0);
    for api in APIS {
        counter!(EVENTS_ACCEPTED, "api" => *api).absolute(0);
        counter!(EVENTS_SUPPRESSED, "api" => *api).absolute(0);
        for reason in REJECT_REASONS {
            counter!(EVENTS_REJECTED, "api" => *api, "reason" => *reason).absolute(0);
        }
    }
    counter!(CACHE_HITS).absolute(0);
    counter!(CACHE_MISSES).absolute(0);
    gauge!(QUEUE_DEPTH).set(0.0);
}

fn register_writer() {
    describe(WRITER);
    counter!(EVENTS_WRITTEN).absolute(0);
    counter!(DEAD_LETTER).absolute(0);
    counter!(CLAIMED).absolute(0);
    for outcome in BATCH_OUTCOMES {
        counter!(BATCHES, "outcome" => *outcome).absolute(0);
    }
    gauge!(QUEUE_LAG).set(0.0);
}

fn register_maintenance() {
    describe(MAINTENANCE);
    for job in MAINTENANCE_JOBS {
        for outcome in ["success", "failure"] {
            counter!(MAINTENANCE_RUNS, "job" => *job, "outcome" => outcome).absolute(0);
        }
    }
}
