//! Fault injection for Sluice: the real daemons under load, on servers of the suite's own
//! (`testkit::OwnPostgres`, `OwnRedis`, `OwnCluster`), with faults injected one at a time and
//! together, and every acknowledged event accounted for.
//!
//! - [`stack`]: the gateway, two writers and the maintenance worker on one database and prefix
//!   (`testkit::Stack`), the poison switch and dead-letter replays.
//! - [`load`]: the load and its books: acknowledged events against stored rows.
//! - [`scenario`]: the faults, one run of each, the results table.
//! - [`soak`]: the long steady run that watches memory and bookkeeping.
//!
//! `fault-suite` (short by default, `--seconds N` for the long form) and `soak` are the commands.

pub mod load;
pub mod scenario;
pub mod soak;
pub mod stack;
