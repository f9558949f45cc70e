//! Integration tests of the shared crate against the real PostgreSQL; each test has its own
//! database.

mod budget;
mod compose;
mod migrations;
mod pooler;
mod pools;
mod startup;
mod tasks;
