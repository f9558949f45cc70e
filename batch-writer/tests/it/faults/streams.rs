//! What the streams may hold: entries queued before payloads were compressed, and two
//! pipelines' entries of the same id beside each other in one database.

use std::time::Duration;

use shared::queue::Keys;
use testkit::{Daemon, TestDb};

use super::{assert_exactly_once, BIN};
use crate::helpers::*;

/// Upgrade: entries of format 1 (plain MessagePack, before payloads were compressed) still in
/// a stream are written beside format 2 entries.
#[tokio::test]
async fn entries_queued_before_compression_are_still_written() {
    let db = TestDb::migrated().await;
    let prefix = prefix();
    let keys = Keys::new(&prefix, 1);
    let all = events(20);
    let plain = rmp_serde::to_vec(&all[..10]).expect("msgpack");
    push_payload(&keys, "1-1", "1", 10, plain).await;
    push_with_id(&keys, "1-2", &all[10..]).await;
    let _w = Daemon::start(BIN, &env(&db, &prefix, &[])).await;
    assert_eq!(wait_rows(&db, 20, Duration::from_secs(30)).await, 20);
    assert_exactly_once(&db, 20).await;
    cleanup(&prefix).await;
}

/// Adds one entry with an explicit id to shard 0 of `keys`, counting its events as the push
/// script does.
async fn push_with_id(keys: &Keys, id: &str, events: &[shared::queue::QueuedEvent]) {
    let payload = shared::queue::encode(events).expect("encode");
    push_payload(
        keys,
        id,
        shared::queue::FORMAT_VERSION,
        events.len(),
        payload,
    )
    .await;
}

async fn push_payload(keys: &Keys, id: &str, version: &str, n: usize, payload: Vec<u8>) {
    let mut c = redis().await;
    let _: String = redis::cmd("XADD")
        .arg(keys.stream(0))
        .arg(id)
        .arg("v")
        .arg(version)
        .arg("n")
        .arg(n)
        .arg("d")
        .arg(payload)
        .query_async(&mut c)
        .await
        .expect("xadd");
    let _: i64 = redis::cmd("INCRBY")
        .arg(keys.depth(0))
        .arg(n)
        .query_async(&mut c)
        .await
        .expect("depth");
}

/// Hole: two pipelines (two STREAM_PREFIX values) share a database, and their streams hold
/// entries with the same id on the same shard. Each pipeline's entries are its own: nothing of
/// the second is taken for done because the first wrote an entry of that id.
#[tokio::test]
async fn two_pipelines_sharing_a_database_never_skip_each_others_entries() {
    let db = TestDb::migrated().await;
    let (pa, pb) = (prefix(), prefix());
    let (ka, kb) = (Keys::new(&pa, 2), Keys::new(&pb, 2));
    let (ea, eb) = (events(5), events(7));
    push_with_id(&ka, "1700000000000-0", &ea).await;
    push_with_id(&kb, "1700000000000-0", &eb).await;
    let a = start(env(&db, &pa, &[]), "a").await;
    assert_eq!(wait_rows(&db, 5, Duration::from_secs(20)).await, 5);
    let b = start(env(&db, &pb, &[]), "b").await;
    let drained = testkit::wait_for(Duration::from_secs(20), || async {
        (queue_state(&kb).await == (0, 0)).then_some(())
    })
    .await;
    assert!(drained.is_some(), "{:?}", queue_state(&kb).await);
    assert_exactly_once(&db, 12).await;
    let pipelines = count(
        &db,
        "SELECT count(DISTINCT pipeline_id) FROM stream_pipelines",
    )
    .await;
    assert_eq!(pipelines, 2);
    // Each writer reports its queue's low-water mark for the dedupe prune.
    let marked = testkit::wait_for(Duration::from_secs(10), || async {
        let n = count(
            &db,
            "SELECT count(*) FROM stream_pipelines WHERE queue_low_water IS NOT NULL",
        )
        .await;
        (n == 2).then_some(())
    })
    .await;
    assert!(marked.is_some(), "both pipelines recorded a low-water mark");
    // With the queues empty, the mark in PostgreSQL's clock is the moment of the report (the
    // next report after the drain, within LOW_WATER_EVERY).
    let fresh = testkit::wait_for(Duration::from_secs(15), || async {
        let n = count(
            &db,
            "SELECT count(*) FROM stream_pipelines \
             WHERE queue_low_water_db BETWEEN low_water_at - interval '1 second' AND low_water_at",
        )
        .await;
        (n == 2).then_some(())
    })
    .await;
    assert!(
        fresh.is_some(),
        "the marks in PostgreSQL's clock follow the empty queues"
    );
    a.stop().await;
    b.stop().await;
    cleanup(&pa).await;
    cleanup(&pb).await;
}
