//! Faults around the writer, each checked against exactly-once storage: writers killed,
//! stopped or cut off mid-load, entries claimed from another writer, what a stream may hold, and
//! dead letters with their replays.

mod claims;
mod dead_letters;
mod outage;
mod streams;

use testkit::TestDb;

use crate::helpers::count;

const BIN: &str = env!("CARGO_BIN_EXE_batch-writer");

async fn assert_exactly_once(db: &TestDb, n: i64) {
    let total = count(db, "SELECT count(*) FROM analytics_events").await;
    let distinct = count(db, "SELECT count(DISTINCT event_id) FROM analytics_events").await;
    assert_eq!((total, distinct), (n, n), "rows and distinct ids");
}
