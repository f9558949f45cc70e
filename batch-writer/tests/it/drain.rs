use std::collections::HashSet;
use std::time::Duration;

use shared::queue::Keys;
use testkit::TestDb;

use crate::helpers::*;

#[tokio::test]
async fn a_drain_of_n_events_stores_exactly_n_and_empties_redis() {
    let db = TestDb::migrated().await;
    let prefix = prefix();
    let keys = Keys::new(&prefix, 2);
    let sent = events(5000);
    push(&keys, &sent, 100).await;
    push(&keys, &events(37), 1).await;
    let w = start(env(&db, &prefix, &[]), "w1").await;
    assert_eq!(wait_rows(&db, 5037, Duration::from_secs(30)).await, 5037);
    // Acknowledgement follows the commit; give it a moment, then the queue must be empty.
    let emptied = testkit::wait_for(Duration::from_secs(5), || async {
        (queue_state(&keys).await == (0, 0)).then_some(())
    })
    .await;
    assert!(
        emptied.is_some(),
        "stream length and depth: {:?}",
        queue_state(&keys).await
    );
    let mut conn = redis().await;
    for s in 0..2 {
        let pending: redis::Value = redis::cmd("XPENDING")
            .arg(keys.stream(s))
            .arg(shared::queue::GROUP)
            .query_async(&mut conn)
            .await
            .expect("xpending");
        let redis::Value::Array(p) = pending else {
            panic!("xpending reply")
        };
        assert_eq!(p.first(), Some(&redis::Value::Int(0)), "nothing pending");
        let mem: Option<i64> = redis::cmd("MEMORY")
            .arg("USAGE")
            .arg(keys.stream(s))
            .query_async(&mut conn)
            .await
            .expect("memory");
        assert!(mem.unwrap_or(0) < 4096, "an empty stream is small: {mem:?}");
    }
    let ids: HashSet<uuid::Uuid> = db
        .client()
        .await
        .query("SELECT event_id FROM analytics_events", &[])
        .await
        .expect("ids")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(ids.len(), 5037);
    assert!(sent.iter().all(|e| ids.contains(&e.event_id)));
    let row = db
        .client()
        .await
        .query_one(
            "SELECT app_id, event_name, user_id, session_id, metadata->>'plan', occurred_at = received_at \
             FROM analytics_events WHERE event_id = $1",
            &[&sent[0].event_id],
        )
        .await
        .expect("row");
    assert_eq!(row.get::<_, String>(0), "app_t");
    assert_eq!(row.get::<_, String>(1), "e0");
    assert_eq!(row.get::<_, Option<String>>(2).as_deref(), Some("u1"));
    assert_eq!(row.get::<_, Option<String>>(3).as_deref(), Some("s1"));
    assert_eq!(row.get::<_, Option<String>>(4).as_deref(), Some("pro"));
    assert!(row.get::<_, bool>(5));
    w.stop().await;
    cleanup(&prefix).await;
}

#[tokio::test]
async fn a_client_retry_with_another_timestamp_is_stored_once() {
    let db = TestDb::migrated().await;
    let prefix = prefix();
    let keys = Keys::new(&prefix, 2);
    let mut first = event("app_t", "buy");
    first.client_id = true;
    let mut retry = first.clone();
    retry.occurred_at_us -= 3_600_000_000;
    retry.received_at_us += 5_000_000;
    let mut other_app = first.clone();
    other_app.app_id = "app_other".into();
    push(&keys, std::slice::from_ref(&first), 1).await;
    let w = start(env(&db, &prefix, &[]), "w1").await;
    assert_eq!(wait_rows(&db, 1, Duration::from_secs(10)).await, 1);
    // The retry arrives later, in another entry; the same id from another app is its own event.
    push(&keys, &[retry.clone(), retry, other_app], 1).await;
    assert_eq!(wait_rows(&db, 2, Duration::from_secs(10)).await, 2);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(count(&db, "SELECT count(*) FROM analytics_events").await, 2);
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM analytics_events WHERE app_id = 'app_t'"
        )
        .await,
        1
    );
    assert_eq!(queue_state(&keys).await, (0, 0));
    w.stop().await;
    cleanup(&prefix).await;
}

#[tokio::test]
async fn an_event_whose_month_has_no_partition_is_quarantined_and_its_batch_written() {
    let db = TestDb::migrated().await;
    let client = db.client().await;
    let oldest = shared::schema::partitions::existing(&client)
        .await
        .expect("list")[0];
    client
        .batch_execute(&format!("DROP TABLE {}", oldest.partition_name()))
        .await
        .expect("drop the oldest partition");
    let prefix = prefix();
    let keys = Keys::new(&prefix, 2);
    let mut orphan = event("app_t", "old");
    orphan.occurred_at_us = oldest.start().timestamp_micros() + 1_000_000;
    let mut batch = events(9);
    batch.insert(4, orphan.clone());
    push(&keys, &batch, 10).await;
    let w = start(env(&db, &prefix, &[]), "w1").await;
    assert_eq!(wait_rows(&db, 9, Duration::from_secs(10)).await, 9);
    let q = testkit::wait_for(Duration::from_secs(5), || async {
        let n = count(&db, "SELECT count(*) FROM events_quarantine").await;
        (n == 1).then_some(n)
    })
    .await;
    assert_eq!(q, Some(1));
    w.stop().await;
    cleanup(&prefix).await;
}

#[tokio::test]
async fn two_writers_share_the_work() {
    let db = TestDb::migrated().await;
    let prefix = prefix();
    let keys = Keys::new(&prefix, 2);
    let bin = env!("CARGO_BIN_EXE_batch-writer");
    let mut vars = env(&db, &prefix, &[("BATCH_SIZE", "100")]);
    vars.push(("WRITER_CONSUMER_NAME".into(), "a".into()));
    let a = testkit::Daemon::start(bin, &vars).await;
    vars.pop();
    vars.push(("WRITER_CONSUMER_NAME".into(), "b".into()));
    let b = testkit::Daemon::start(bin, &vars).await;
    push(&keys, &events(20_000), 10).await;
    assert_eq!(
        wait_rows(&db, 20_000, Duration::from_secs(60)).await,
        20_000
    );
    let written = |addr: String| async move {
        let (_, m) = testkit::http_get(&addr, "/metrics").await.expect("metrics");
        m.lines()
            .find_map(|l| l.strip_prefix("sluice_events_written_total "))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let (wa, wb) = (
        written(a.ops_addr.clone()).await,
        written(b.ops_addr.clone()).await,
    );
    assert!(wa > 0.0 && wb > 0.0, "both writers wrote: {wa} + {wb}");
    assert_eq!(wa + wb, 20_000.0);
    cleanup(&prefix).await;
}

/// The consumers of the group on `stream`: (name, pending).
async fn consumers(stream: &str) -> Vec<(String, i64)> {
    let mut c = redis().await;
    let v: Vec<std::collections::HashMap<String, redis::Value>> = redis::cmd("XINFO")
        .arg("CONSUMERS")
        .arg(stream)
        .arg(shared::queue::GROUP)
        .query_async(&mut c)
        .await
        .unwrap_or_default();
    v.into_iter()
        .map(|m| {
            let name = match m.get("name") {
                Some(redis::Value::BulkString(b)) => String::from_utf8_lossy(b).into_owned(),
                _ => String::new(),
            };
            let pending = match m.get("pending") {
                Some(redis::Value::Int(n)) => *n,
                _ => -1,
            };
            (name, pending)
        })
        .collect()
}

#[tokio::test]
async fn dead_consumers_with_nothing_pending_are_deleted_and_the_others_kept() {
    let db = TestDb::migrated().await;
    let prefix = prefix();
    let keys = Keys::new(&prefix, 2);
    push(&keys, &events(2), 1).await;
    let mut c = redis().await;
    for s in 0..2 {
        let _: redis::RedisResult<()> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(keys.stream(s))
            .arg(shared::queue::GROUP)
            .arg("0")
            .query_async(&mut c)
            .await;
    }
    // A consumer that died with nothing pending, and one that died holding an entry.
    let _: i64 = redis::cmd("XGROUP")
        .arg("CREATECONSUMER")
        .arg(keys.stream(0))
        .arg(shared::queue::GROUP)
        .arg("ghost")
        .query_async(&mut c)
        .await
        .expect("createconsumer");
    let _: redis::Value = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg(shared::queue::GROUP)
        .arg("holder")
        .arg("COUNT")
        .arg(1)
        .arg("STREAMS")
        .arg(keys.stream(1))
        .arg(">")
        .query_async(&mut c)
        .await
        .expect("read as holder");
    let vars = env(
        &db,
        &prefix,
        &[
            ("CONSUMER_IDLE_DELETE_MS", "1000"),
            ("CLAIM_IDLE_MS", "600000"),
        ],
    );
    let _w = start(vars, "live").await;
    let gone = testkit::wait_for(Duration::from_secs(20), || async {
        (!consumers(&keys.stream(0))
            .await
            .iter()
            .any(|(n, _)| n == "ghost"))
        .then_some(())
    })
    .await;
    assert!(gone.is_some(), "{:?}", consumers(&keys.stream(0)).await);
    // The live writer (it read shard 0's entry) and the holder of an entry stay, through several
    // reaping rounds (every 250 ms here).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let shard0 = consumers(&keys.stream(0)).await;
    assert!(shard0.iter().any(|(n, _)| n == "live"), "{shard0:?}");
    let shard1 = consumers(&keys.stream(1)).await;
    assert!(shard1.contains(&("holder".to_owned(), 1)), "{shard1:?}");
    cleanup(&prefix).await;
}
