//! Integration tests of the maintenance worker against the real PostgreSQL.

mod adopt;
mod daemon;
mod erasure;
mod jobs;
mod summary;
