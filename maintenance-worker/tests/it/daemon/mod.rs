//! The maintenance-worker binary: its commands (migrate, run-once, stats) and the daemon
//! (health, leadership among replicas, failing jobs, readiness).

mod commands;
mod serve;

const BIN: &str = env!("CARGO_BIN_EXE_maintenance-worker");
