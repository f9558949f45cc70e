//! Fault injection for Sluice: the real daemons under load, on servers of the suite's own,
//! with faults injected one at a time and together, and every acknowledged event accounted for.
//!
//! - [`servers`]: PostgreSQL, Redis (AOF) and a three-node Redis Cluster on spare ports.
//! - [`stack`]: the gateway, two writers and the maintenance worker on one database and prefix.
//! - [`load`]: the load and its books: acknowledged events against stored rows.
//! - [`scenario`]: the faults, one run of each, the results table.
//! - [`soak`]: the long steady run that watches memory and bookkeeping.
//!
//! `fault-suite` (short by default, `--seconds N` for the long form) and `soak` are the commands.

pub mod load;
pub mod scenario;
pub mod servers;
pub mod soak;
pub mod stack;
