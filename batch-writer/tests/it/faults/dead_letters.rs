//! Dead letters: a poison event set aside after MAX_DELIVERIES and replayed, each event kept
//! and replayed once, and erased or suppressed users' dead letters never replayed.

use std::time::Duration;

use shared::queue::Keys;
use testkit::TestDb;

use super::{assert_exactly_once, BIN};
use crate::helpers::*;

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
