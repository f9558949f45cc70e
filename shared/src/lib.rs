//! Code shared by the three Sluice daemons.
//!
//! - [`config`]: typed configuration read once from the environment.
//! - [`secret`]: strings that never print themselves.
//! - [`telemetry`]: log set-up (plain or JSON).
//! - [`metrics`]: every metric name, its helper, and the Prometheus recorder.
//! - [`queue`]: the stream layout, entry format and Redis scripts shared by gateway and writer.
//! - [`redis_conn`]: Redis connections with bounded waits, and the eviction-policy check.
//! - [`ops`]: the `/metrics`, `/healthz`, `/readyz` endpoint each daemon serves.
//! - [`shutdown`]: SIGTERM/SIGINT to a cancellation token.
//! - [`tasks`]: background tasks watched, so one that dies is seen.
//! - [`daemon`]: start-up and shutdown steps every daemon shares.
//! - [`budget`]: each daemon's connection needs and the `max_connections` a deployment needs.
//! - [`db`]: the write and read PostgreSQL pools, bounded, timed and health-checked.
//! - [`privacy`]: the user digest and limits of erasure and suppression.
//! - [`schema`]: embedded migrations, the migration runner, partitions and the version check.

pub mod budget;
pub mod config;
pub mod daemon;
pub mod db;
pub mod metrics;
pub mod ops;
pub mod privacy;
pub mod queue;
pub mod redis_conn;
pub mod retry;
pub mod schema;
pub mod secret;
pub mod shutdown;
pub mod tasks;
pub mod telemetry;
