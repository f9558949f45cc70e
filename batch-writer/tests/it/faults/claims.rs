//! Entries claimed from a dead or stalled writer: a claimed entry is a redelivery, and an
//! entry another writer holds in an open transaction is not written twice.

use std::time::Duration;

use shared::queue::Keys;
use testkit::{Daemon, TestDb};

use super::{assert_exactly_once, BIN};
use crate::helpers::*;

/// A claimed entry is a redelivery even when the claiming writer has so many entries of its own
/// pending in the same id range that XPENDING's answer does not reach it (the delivery count then
/// defaults to a redelivery), and entries already committed by a dead writer are not written again.
#[tokio::test]
async fn a_claimed_entry_is_a_redelivery_however_many_entries_the_claimer_holds() {
    use shared::queue::GROUP;
    let db = TestDb::migrated().await;
    let prefix = prefix();
    let keys = Keys::new(&prefix, 2);
    let mut c = redis().await;
    let script = redis::Script::new(shared::queue::PUSH_SCRIPT);
    let all = events(400);
    for e in &all {
        let payload = shared::queue::encode(std::slice::from_ref(e)).expect("encode");
        let _: Vec<String> =
            shared::queue::push_invocation(&script, &keys, 0, None, [(1, &payload[..])])
                .invoke_async(&mut c)
                .await
                .expect("push");
    }
    let stream = keys.stream(0);
    let _: () = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(&stream)
        .arg(GROUP)
        .arg("0")
        .query_async(&mut c)
        .await
        .expect("group");
    // "dead" read everything; every fourth entry it also committed (events and ledger row) but
    // never acknowledged. The other three in four move to "heir" (the writer below), fresh.
    let reply: redis::streams::StreamReadReply = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg(GROUP)
        .arg("dead")
        .arg("COUNT")
        .arg(1000)
        .arg("STREAMS")
        .arg(&stream)
        .arg(">")
        .query_async(&mut c)
        .await
        .expect("read as dead");
    let ids: Vec<String> = reply.keys[0].ids.iter().map(|i| i.id.clone()).collect();
    assert_eq!(ids.len(), 400);
    let client = db.client().await;
    for (i, id) in ids.iter().enumerate() {
        if i % 4 == 0 {
            let e = &all[i];
            let key = shared::queue::entry_ledger_key(0, 0, id).expect("key");
            client
                .execute(
                    "INSERT INTO analytics_events (event_id, app_id, event_name, occurred_at, received_at) \
                     VALUES ($1, $2, $3, now(), now())",
                    &[&e.event_id, &e.app_id, &e.event_name],
                )
                .await
                .expect("committed copy");
            client
                .execute("INSERT INTO entry_ledger (entry_key) VALUES ($1)", &[&key])
                .await
                .expect("ledger");
        }
    }
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let moved: Vec<&String> = ids
        .iter()
        .enumerate()
        .filter(|(i, _)| i % 4 != 0)
        .map(|(_, id)| id)
        .collect();
    let _: redis::Value = redis::cmd("XCLAIM")
        .arg(&stream)
        .arg(GROUP)
        .arg("heir")
        .arg(0)
        .arg(&moved)
        .arg("JUSTID")
        .query_async(&mut c)
        .await
        .expect("xclaim");
    // "dead"'s 100 entries are idle past CLAIM_IDLE_MS; "heir"'s 300 are fresh.
    let vars = env(&db, &prefix, &[("CLAIM_IDLE_MS", "3000")]);
    let w = start(vars, "heir").await;
    assert_eq!(wait_rows(&db, 400, Duration::from_secs(30)).await, 400);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_exactly_once(&db, 400).await;
    w.stop().await;
    cleanup(&prefix).await;
}

/// The race the long fault suite found under a PostgreSQL stall: writer A (played here by the
/// test) holds entry E in an open transaction (events without per-event keys, and E's ledger
/// row), while writer B claims E; B's batch also holds a client retry whose key exists, so B
/// takes the slow path, finds no ledger row for E (A has not committed) and writes E's events
/// too. B must find out when A commits and leave E alone.
#[tokio::test]
async fn a_claimed_entry_held_by_an_open_transaction_is_not_written_twice() {
    use shared::queue::GROUP;
    let db = TestDb::migrated().await;
    let prefix = prefix();
    let keys = Keys::new(&prefix, 2);
    let mut c = redis().await;
    let script = redis::Script::new(shared::queue::PUSH_SCRIPT);
    let entry = events(10);
    let payload = shared::queue::encode(&entry).expect("encode");
    let _: Vec<String> =
        shared::queue::push_invocation(&script, &keys, 0, None, [(10, &payload[..])])
            .invoke_async(&mut c)
            .await
            .expect("push E");
    let stream = keys.stream(0);
    for s in 0..2 {
        let _: redis::RedisResult<()> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(keys.stream(s))
            .arg(GROUP)
            .arg("0")
            .arg("MKSTREAM")
            .query_async(&mut c)
            .await;
    }
    let reply: redis::streams::StreamReadReply = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg(GROUP)
        .arg("a")
        .arg("STREAMS")
        .arg(&stream)
        .arg(">")
        .query_async(&mut c)
        .await
        .expect("A reads E");
    let e_id = reply.keys[0].ids[0].id.clone();

    // A's transaction: E's events (no per-event keys, as for a first delivery) and its ledger
    // row, not committed yet.
    let mut a = db.client().await;
    let tx = a.transaction().await.expect("begin");
    for e in &entry {
        tx.execute(
            "INSERT INTO analytics_events (event_id, app_id, event_name, occurred_at, received_at) \
             VALUES ($1, $2, $3, now(), now())",
            &[&e.event_id, &e.app_id, &e.event_name],
        )
        .await
        .expect("A's copy");
    }
    let e_key = shared::queue::entry_ledger_key(0, 0, &e_id).expect("key");
    // A takes E's lock first, as every writer transaction does.
    tx.execute(
        "SELECT pg_advisory_xact_lock($1)",
        &[&batch_writer::store::entry_lock_id(e_key)],
    )
    .await
    .expect("A's entry lock");
    tx.execute(
        "INSERT INTO entry_ledger (entry_key) VALUES ($1)",
        &[&e_key],
    )
    .await
    .expect("A's ledger row");

    // X: a client retry of an event stored long ago (its row and key are committed).
    let mut x = event("app_t", "retried");
    x.client_id = true;
    let setup = db.client().await;
    setup
        .execute(
            "INSERT INTO analytics_events (event_id, app_id, event_name, occurred_at, received_at) \
             VALUES ($1, $2, $3, now(), now())",
            &[&x.event_id, &x.app_id, &x.event_name],
        )
        .await
        .expect("X stored");
    setup
        .execute(
            "INSERT INTO event_dedupe (event_id, app_id) VALUES ($1, $2)",
            &[&x.event_id, &x.app_id],
        )
        .await
        .expect("X's key");
    let payload = shared::queue::encode(std::slice::from_ref(&x)).expect("encode");
    let _: Vec<String> =
        shared::queue::push_invocation(&script, &keys, 0, None, [(1, &payload[..])])
            .invoke_async(&mut c)
            .await
            .expect("push X");

    // B claims E (idle past 300 ms) and reads X into the same batch.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let vars = env(
        &db,
        &prefix,
        &[("CLAIM_IDLE_MS", "300"), ("BATCH_LINGER_MS", "1000")],
    );
    let mut vars = vars;
    vars.push(("WRITER_CONSUMER_NAME".into(), "b".into()));
    let b = Daemon::start(BIN, &vars).await;
    // B must really wait on E's lock, held by A: seen in pg_locks, not assumed after a sleep.
    let blocked = testkit::wait_for(Duration::from_secs(20), || async {
        let n = count(
            &db,
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted",
        )
        .await;
        (n > 0).then_some(())
    })
    .await;
    assert!(
        blocked.is_some(),
        "B never waited on E's lock\n{}",
        b.logs()
    );
    assert_eq!(
        count(&db, "SELECT count(*) FROM analytics_events").await,
        1,
        "nothing of E written while A holds it"
    );
    tx.commit().await.expect("A commits");
    let drained = testkit::wait_for(Duration::from_secs(20), || async {
        (queue_state(&keys).await.0 == 0).then_some(())
    })
    .await;
    assert!(
        drained.is_some(),
        "{:?}\n{}",
        queue_state(&keys).await,
        b.logs()
    );
    assert_exactly_once(&db, 11).await;
    drop(b);
    cleanup(&prefix).await;
}
