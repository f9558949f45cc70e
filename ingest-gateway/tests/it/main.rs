//! Integration tests of the gateway against the real PostgreSQL and Redis.

mod apps;
mod configuration;
mod daemon;
mod helpers;
mod ingest;
mod keys;
mod openapi;
mod page;
mod privacy;
mod read;
mod replica;
mod sdk;
mod sdk_limits;
