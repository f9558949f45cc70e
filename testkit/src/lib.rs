//! Sluice's test kit, for tests, benchmarks and the fault suite; never a dependency of a
//! daemon's build (the daemons and `shared` take it as a dev-dependency only).
//!
//! - [`db`]: each test's own database, cloned from the migrated template, and connections to
//!   and variables for the test server.
//! - [`daemon`]: the daemon binaries found, and one run as a process: started, waited for,
//!   signalled, its log kept.
//! - [`stack`]: the gateway alone or the whole pipeline (gateway, writers, maintenance) as
//!   processes, from one builder.
//! - [`queue`]: the events and entries a pipeline's streams hold, summed over the shards.
//! - [`postgres`]: a streaming replica of the test server, a PostgreSQL of a test's own, and the
//!   PostgreSQL tools run as `postgres`.
//! - [`backup`]: base backups, a synchronous WAL receiver, a hard loss and a restore of an
//!   [`OwnPostgres`] on its own port.
//! - [`pgbouncer`]: a PgBouncer of a test's own in transaction pooling mode.
//! - [`redis_servers`]: a Redis and a Redis Cluster of a test's own; key clean-up.
//! - [`fixtures`]: small fixtures tests share (an event as the gateway queues it).
//! - [`http`]: a spare port, a minimal GET, and the one HTTP sender of every load.
//! - [`procfs`]: a process's memory and CPU time from `/proc`.
//! - [`wait`]: polling until a condition holds.
//!
//! Everything callers use is re-exported here: `testkit::TestDb`, `testkit::connect`, ...

pub mod backup;
pub mod daemon;
pub mod db;
pub mod fixtures;
pub mod http;
pub mod pgbouncer;
pub mod postgres;
pub mod procfs;
pub mod queue;
pub mod redis_servers;
pub mod stack;
mod template;
pub mod wait;

pub use daemon::{bin_dir, Daemon, DAEMONS};
pub use db::{admin_env, admin_password, connect, db_env, recreate_database, TestDb};
pub use fixtures::view_event;
pub use http::{free_port, http_get, HttpSender};
pub use pgbouncer::PgBouncer;
pub use postgres::{as_postgres, pg_bin, pg_client, OwnPostgres, Replica};
pub use procfs::{cpu_seconds, peak_rss_mib, postgres_cpu_seconds, proc_status_kib, rss_mib};
pub use queue::{queued_events, stream_entries};
pub use redis_servers::{redis_cleanup, OwnCluster, OwnRedis};
pub use stack::{Stack, StackBuilder};
pub use wait::wait_for;
