//! Dedupe keys: which events cost one, that a key is the full id and the app, that legacy
//! keys still stop a retry, and that a persistent unique violation is the data's fault.

use batch_writer::store::{EntryInfo, Mode, Store, WriteError};
use shared::db::Pools;
use testkit::TestDb;

use super::entry_key;
use crate::helpers::*;

#[tokio::test]
async fn only_client_chosen_ids_and_suspect_entries_cost_a_dedupe_key() {
    let db = TestDb::migrated().await;
    let store = Store::new(Pools::new(&db.config()).expect("pools").write);
    let mut list = events(4);
    list[0].client_id = true;
    let infos = vec![EntryInfo {
        key: entry_key(0, "9-0").expect("key"),
        suspect: false,
    }];
    let items: Vec<_> = list.iter().map(|e| (0, e)).collect();
    store
        .write(&items, &infos, Mode::Whole)
        .await
        .expect("write");
    assert_eq!(count(&db, "SELECT count(*) FROM event_dedupe").await, 1);
    assert_eq!(count(&db, "SELECT count(*) FROM entry_ledger").await, 1);
}

/// Hole: a unique violation that persists on the slow path (here the quarantine's key, with no
/// dedupe key left for the event) is the data's fault: it must be reported as such, so the batch
/// splits and the event counts toward MAX_DELIVERIES, instead of being retried forever.
#[tokio::test]
async fn a_persistent_unique_violation_is_a_data_error_not_a_transient_one() {
    let db = TestDb::migrated().await;
    let store = Store::new(Pools::new(&db.config()).expect("pools").write);
    let mut e = event("app_t", "from_the_past");
    e.client_id = true;
    // A month far outside the partitions: the event goes to quarantine.
    e.occurred_at_us = 946_684_800_000_000;
    db.client()
        .await
        .execute(
            "INSERT INTO events_quarantine (event_id, app_id, event_name, occurred_at, received_at) \
             VALUES ($1, $2, 'x', now(), now())",
            &[&e.event_id, &e.app_id],
        )
        .await
        .expect("quarantined earlier, its key since pruned");
    let infos = vec![EntryInfo {
        key: entry_key(0, "9-1").expect("key"),
        suspect: false,
    }];
    let items = vec![(0, &e)];
    let out = tokio::time::timeout(
        std::time::Duration::from_secs(20),
        store.write(&items, &infos, Mode::Whole),
    )
    .await
    .expect("answers, does not retry forever");
    match out {
        Err(WriteError::Data(err)) => assert_eq!(err.sql_state(), Some("23505"), "{err}"),
        other => panic!("expected a data error, got {other:?}"),
    }
}

/// Dedupe keys are the full event id and the app: ids sharing their first 8 bytes, and one id
/// in two apps, are different events.
#[tokio::test]
async fn dedupe_keys_are_the_full_id_and_the_app() {
    let db = TestDb::migrated().await;
    let store = Store::new(Pools::new(&db.config()).expect("pools").write);
    let base = uuid::Uuid::now_v7();
    let mut twin = *base.as_bytes();
    twin[15] ^= 1;
    let mut a = event("app_a", "e");
    a.event_id = base;
    a.client_id = true;
    let mut b = a.clone();
    b.event_id = uuid::Uuid::from_bytes(twin);
    let mut c = a.clone();
    c.app_id = "app_b".into();
    let infos = vec![EntryInfo {
        key: entry_key(0, "10-0").expect("key"),
        suspect: false,
    }];
    let items = vec![(0, &a), (0, &b), (0, &c), (0, &a)];
    let w = store
        .write(&items, &infos, Mode::Whole)
        .await
        .expect("write");
    assert_eq!((w.stored, w.duplicates), (3, 1));
    assert_eq!(count(&db, "SELECT count(*) FROM event_dedupe").await, 3);
}

/// Keys written before keys became exact (migration 4) still stop a retry while they last.
#[tokio::test]
async fn legacy_dedupe_keys_still_stop_a_retry() {
    let db = TestDb::migrated().await;
    let mut e = event("app_t", "retried");
    e.client_id = true;
    db.client()
        .await
        .execute(
            "INSERT INTO event_dedupe_legacy (dedupe_key) VALUES ($1)",
            &[&batch_writer::rows::legacy_dedupe_key(
                &e.app_id,
                &e.event_id,
            )],
        )
        .await
        .expect("legacy key");
    let store = Store::new(Pools::new(&db.config()).expect("pools").write);
    let infos = vec![EntryInfo {
        key: entry_key(0, "11-0").expect("key"),
        suspect: false,
    }];
    let other = event("app_t", "new");
    let w = store
        .write(&[(0, &e), (0, &other)], &infos, Mode::Whole)
        .await
        .expect("write");
    assert_eq!((w.stored, w.duplicates), (1, 1));
}
