//! Sluice's test kit, for tests, benchmarks and the fault suite; never a dependency of a
//! daemon's build (the daemons and `shared` take it as a dev-dependency only).
//!
//! - [`db`]: each test's own database cloned from the migrated template, and
//!   connections to the test server.
//! - [`servers`]: a streaming replica, PostgreSQL's tools run as `postgres`, Redis clean-up.
//! - [`daemon`]: a daemon binary as a process: started, waited for, signalled, its log kept.
//! - [`http`]: a spare port, a minimal GET, and the one HTTP sender of every load.
//! - [`procfs`]: a process's memory and CPU time from `/proc`.
//! - [`wait`]: polling until a condition holds.
//!
//! Everything callers use is re-exported here: `testkit::TestDb`, `testkit::connect`, ...

pub mod daemon;
pub mod db;
pub mod http;
pub mod procfs;
pub mod servers;
mod template;
pub mod wait;

pub use daemon::Daemon;
pub use db::{admin_env, admin_password, connect, TestDb};
pub use http::{free_port, http_get, HttpSender};
pub use procfs::proc_status_kib;
pub use servers::{as_postgres, pg_bin, redis_cleanup, Replica};
pub use wait::wait_for;
