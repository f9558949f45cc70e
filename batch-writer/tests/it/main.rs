//! Integration tests of the batch writer against the real PostgreSQL and Redis.

mod daemon;
mod drain;
mod faults;
mod helpers;
mod store;
