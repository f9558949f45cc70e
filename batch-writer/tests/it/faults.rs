use std::time::Duration;

use shared::queue::Keys;
use testkit::{Daemon, TestDb};

use crate::helpers::*;

const BIN: &str = env!("CARGO_BIN_EXE_batch-writer");

async fn assert_exactly_once(db: &TestDb, n: i64) {
    let total = count(db, "SELECT count(*) FROM analytics_events").await;
    let distinct = count(db, "SELECT count(DISTINCT event_id) FROM analytics_events").await;
    assert_eq!((total, distinct), (n, n), "rows and distinct ids");
}

#[tokio::test]
async fn a_writer_killed_mid_load_loses_and_doubles_nothing_once_another_claims_its_entries() {
    let db = TestDb::migrated().await;
    let prefix = prefix();
    let keys = Keys::new(&prefix, 2);
    push(&keys, &events(30_000), 10).await;
    let mut vars = env(
        &db,
        &prefix,
        &[("BATCH_SIZE", "500"), ("CLAIM_IDLE_MS", "1000")],
    );
    vars.push(("WRITER_CONSUMER_NAME".into(), "doomed".into()));
    let mut a = Daemon::start(BIN, &vars).await;
    let seen = wait_rows(&db, 3000, Duration::from_secs(30)).await;
    assert!(seen >= 3000);
    a.child.kill().expect("SIGKILL");
    let _ = a.child.wait();
    let mid = count(&db, "SELECT count(*) FROM analytics_events").await;
    assert!(mid < 30_000, "killed mid-load ({mid} rows)");
    vars.pop();
    vars.push(("WRITER_CONSUMER_NAME".into(), "heir".into()));
    let _b = Daemon::start(BIN, &vars).await;
    assert_eq!(
        wait_rows(&db, 30_000, Duration::from_secs(60)).await,
        30_000
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_exactly_once(&db, 30_000).await;
    let drained = testkit::wait_for(Duration::from_secs(10), || async {
        (queue_state(&keys).await == (0, 0)).then_some(())
    })
    .await;
    assert!(drained.is_some(), "{:?}", queue_state(&keys).await);
    cleanup(&prefix).await;
}

#[tokio::test]
async fn a_poison_event_is_dead_lettered_after_max_deliveries_and_replay_stores_it() {
    let db = TestDb::migrated().await;
    db.client()
        .await
        .batch_execute(
            "ALTER TABLE analytics_events ADD CONSTRAINT no_poison CHECK (event_name <> 'poison')",
        )
        .await
        .expect("constraint");
    let prefix = prefix();
    let keys = Keys::new(&prefix, 2);
    let poison = event("app_t", "poison");
    let mut batch = events(20);
    batch.insert(7, poison.clone());
    push(&keys, &batch, 10).await;
    let vars = env(
        &db,
        &prefix,
        &[("MAX_DELIVERIES", "3"), ("CLAIM_IDLE_MS", "300")],
    );
    let w = start(vars.clone(), "w1").await;
    assert_eq!(
        wait_rows(&db, 20, Duration::from_secs(10)).await,
        20,
        "batch-mates stored"
    );
    let dead = testkit::wait_for(Duration::from_secs(15), || async {
        let n = count(&db, "SELECT count(*) FROM dead_letters").await;
        (n > 0).then_some(n)
    })
    .await;
    assert_eq!(dead, Some(1));
    let row = db
        .client()
        .await
        .query_one("SELECT event_id, deliveries, error FROM dead_letters", &[])
        .await
        .expect("dead letter");
    assert_eq!(row.get::<_, uuid::Uuid>(0), poison.event_id);
    assert_eq!(row.get::<_, i32>(1), 3);
    assert!(row.get::<_, String>(2).contains("no_poison"));
    let drained = testkit::wait_for(Duration::from_secs(5), || async {
        (queue_state(&keys).await == (0, 0)).then_some(())
    })
    .await;
    assert!(
        drained.is_some(),
        "the poison's entry is acknowledged: {:?}",
        queue_state(&keys).await
    );

    let list = std::process::Command::new(BIN)
        .args(["dead-letter", "list"])
        .envs(vars.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .output()
        .expect("list");
    assert!(
        list.status.success(),
        "{}",
        String::from_utf8_lossy(&list.stderr)
    );
    let line: serde_json::Value = serde_json::from_slice(&list.stdout).expect("one JSON line");
    assert_eq!(line["event"]["event_name"], "poison");
    assert_eq!(line["deliveries"], 3);

    // The operator fixes the cause, then replays.
    db.client()
        .await
        .batch_execute("ALTER TABLE analytics_events DROP CONSTRAINT no_poison")
        .await
        .expect("drop");
    let replay = std::process::Command::new(BIN)
        .args(["dead-letter", "replay", "--all"])
        .envs(vars.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .output()
        .expect("replay");
    assert!(
        replay.status.success(),
        "{}",
        String::from_utf8_lossy(&replay.stderr)
    );
    assert_eq!(wait_rows(&db, 21, Duration::from_secs(10)).await, 21);
    assert_eq!(count(&db, "SELECT count(*) FROM dead_letters").await, 0);
    assert_exactly_once(&db, 21).await;
    w.stop().await;
    cleanup(&prefix).await;
}

#[tokio::test]
async fn postgres_unreachable_for_a_while_loses_nothing() {
    let db = TestDb::migrated().await;
    let proxy = Proxy::start(5432).await;
    let prefix = prefix();
    let keys = Keys::new(&prefix, 2);
    let port = proxy.port.to_string();
    let w = start(env(&db, &prefix, &[("DB_PORT", &port)]), "w1").await;
    push(&keys, &events(1000), 10).await;
    assert_eq!(wait_rows(&db, 1000, Duration::from_secs(10)).await, 1000);
    proxy.off();
    push(&keys, &events(2000), 10).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        count(&db, "SELECT count(*) FROM analytics_events").await,
        1000,
        "nothing written while cut off"
    );
    let (len, depth) = queue_state(&keys).await;
    assert!(
        len > 0 && depth == 2000,
        "still queued: {len} entries, {depth} events"
    );
    proxy.on();
    assert_eq!(wait_rows(&db, 3000, Duration::from_secs(30)).await, 3000);
    assert_exactly_once(&db, 3000).await;
    w.stop().await;
    cleanup(&prefix).await;
}

#[tokio::test]
async fn sigterm_mid_batch_writes_the_batch_in_hand_then_exits() {
    let db = TestDb::migrated().await;
    let prefix = prefix();
    let keys = Keys::new(&prefix, 2);
    let mut vars = env(&db, &prefix, &[("BATCH_SIZE", "1000")]);
    vars.retain(|(k, _)| k != "BATCH_LINGER_MS");
    vars.push(("BATCH_LINGER_MS".into(), "5000".into()));
    let mut w = Daemon::start(BIN, &vars).await;
    push(&keys, &events(500), 10).await;
    // The batch is open and lingering: nothing is written yet.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(count(&db, "SELECT count(*) FROM analytics_events").await, 0);
    let status = w
        .terminate(Duration::from_secs(15))
        .expect("exits after SIGTERM");
    assert!(status.success(), "{status:?}");
    assert_eq!(
        count(&db, "SELECT count(*) FROM analytics_events").await,
        500
    );
    assert_eq!(queue_state(&keys).await, (0, 0));
    cleanup(&prefix).await;
}

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

/// Hole: an event is dead-lettered twice (its writer died between storing the dead letter and
/// acknowledging the entry), and replays run twice at once, or are killed between the push and
/// the delete: the event sits once in `dead_letters`, and is stored once.
#[tokio::test]
async fn dead_letters_are_kept_once_and_replays_store_each_event_once() {
    use batch_writer::dead_letter;
    let db = TestDb::migrated().await;
    let prefix = prefix();
    let keys = Keys::new(&prefix, 2);
    let pool = shared::db::Pools::new(&db.config()).expect("pools").write;
    let poison = events(3);
    for e in &poison {
        for _ in 0..2 {
            let key = shared::queue::entry_ledger_key(0, 0, "1-0").expect("key");
            dead_letter::store_event(&pool, e, "refused", &keys.stream(0), ("1-0", key), 5)
                .await
                .expect("store");
        }
    }
    for _ in 0..2 {
        dead_letter::store_raw(&pool, b"\x01junk", "undecodable", &keys.stream(1), "2-0", 1)
            .await
            .expect("store raw");
    }
    assert_eq!(count(&db, "SELECT count(*) FROM dead_letters").await, 4);

    // A replay "killed" after its push: the rows are put back as they were.
    let rows = db
        .client()
        .await
        .query(
            "SELECT event_id, app_id, payload, error, stream, entry_id, deliveries \
             FROM dead_letters WHERE event_id IS NOT NULL",
            &[],
        )
        .await
        .expect("rows");
    let mut conn = shared::redis_conn::connect(
        &shared::secret::Secret::new(REDIS.to_owned()),
        Duration::from_secs(5),
    )
    .await
    .expect("redis");
    let n = dead_letter::replay(&pool, &mut conn, &keys, None)
        .await
        .expect("replay");
    assert_eq!(n, 3);
    let client = db.client().await;
    for r in &rows {
        client
            .execute(
                "INSERT INTO dead_letters (event_id, app_id, payload, error, stream, entry_id, deliveries) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7)",
                &[&r.get::<_, uuid::Uuid>(0), &r.get::<_, String>(1), &r.get::<_, Vec<u8>>(2), &r.get::<_, String>(3), &r.get::<_, String>(4), &r.get::<_, String>(5), &r.get::<_, i32>(6)],
            )
            .await
            .expect("put back");
    }
    // Replayed again, twice at once.
    let mut conn2 = conn.clone();
    let (x, y) = tokio::join!(
        dead_letter::replay(&pool, &mut conn, &keys, None),
        dead_letter::replay(&pool, &mut conn2, &keys, None)
    );
    assert_eq!(
        x.expect("x") + y.expect("y"),
        3,
        "each row replayed by one of them"
    );
    assert_eq!(
        count(&db, "SELECT count(*) FROM dead_letters").await,
        1,
        "only the undecodable entry is left"
    );
    let w = start(env(&db, &prefix, &[]), "w").await;
    let drained = testkit::wait_for(Duration::from_secs(20), || async {
        (queue_state(&keys).await == (0, 0)).then_some(())
    })
    .await;
    assert!(drained.is_some(), "{:?}", queue_state(&keys).await);
    assert_exactly_once(&db, 3).await;
    w.stop().await;
    cleanup(&prefix).await;
}

/// A dead letter of a user under an open erasure request, or on the suppression list, is never
/// put back on the queue (it would land after the erasure); other users' dead letters are.
#[tokio::test]
async fn dead_letters_of_erased_or_suppressed_users_are_not_replayed() {
    use batch_writer::dead_letter;
    use shared::privacy::user_digest;
    let db = TestDb::migrated().await;
    let prefix = prefix();
    let keys = Keys::new(&prefix, 2);
    let pool = shared::db::Pools::new(&db.config()).expect("pools").write;
    let client = db.client().await;
    client
        .batch_execute("INSERT INTO apps (app_id, name) VALUES ('app_t', 't')")
        .await
        .expect("app");
    let mut poison = events(3);
    for (e, user) in poison.iter_mut().zip(["erased", "suppressed", "kept"]) {
        e.user_id = Some(user.into());
        let key = shared::queue::entry_ledger_key(0, 0, "1-0").expect("key");
        dead_letter::store_event(&pool, e, "refused", &keys.stream(0), ("1-0", key), 5)
            .await
            .expect("store");
    }
    let id = uuid::Uuid::now_v7();
    client
        .execute(
            "INSERT INTO erasures (erasure_id, app_id, suppress, users) VALUES ($1, 'app_t', false, 1)",
            &[&id],
        )
        .await
        .expect("erasure");
    client
        .execute(
            "INSERT INTO erasure_users (erasure_id, user_hash, user_id) VALUES ($1, $2, 'erased')",
            &[&id, &user_digest("app_t", "erased").to_vec()],
        )
        .await
        .expect("erasure user");
    client
        .execute(
            "INSERT INTO suppressed_users (app_id, user_hash) VALUES ('app_t', $1)",
            &[&user_digest("app_t", "suppressed").to_vec()],
        )
        .await
        .expect("suppression");
    let mut conn = shared::redis_conn::connect(
        &shared::secret::Secret::new(REDIS.to_owned()),
        Duration::from_secs(5),
    )
    .await
    .expect("redis");
    let n = dead_letter::replay(&pool, &mut conn, &keys, None)
        .await
        .expect("replay");
    assert_eq!(n, 1, "only the kept user's event");
    let left: Vec<String> = client
        .query(
            "SELECT convert_from(payload, 'UTF8') FROM dead_letters",
            &[],
        )
        .await
        .map(|rows| rows.iter().map(|r| r.get(0)).collect())
        .unwrap_or_default();
    assert_eq!(
        count(&db, "SELECT count(*) FROM dead_letters").await,
        2,
        "the erased and suppressed users' rows stay for the erasure: {left:?}"
    );
    cleanup(&prefix).await;
}
