//! The store's exactly-once rules, deterministically: a redelivered entry (suspect) that was
//! committed whole, or in parts, is not written again.

use batch_writer::rows::entry_key;
use batch_writer::store::{EntryInfo, Mode, Store};
use shared::db::Pools;
use shared::testing::TestDb;

use crate::helpers::*;

#[tokio::test]
async fn a_redelivered_entry_is_not_written_twice() {
    let db = TestDb::migrated().await;
    let store = Store::new(Pools::new(&db.config()).expect("pools").write);
    let a = events(5);
    let b = events(5);
    let mut infos = vec![
        EntryInfo {
            key: entry_key(0, "1-0").expect("key"),
            suspect: false,
        },
        EntryInfo {
            key: entry_key(0, "1-1").expect("key"),
            suspect: false,
        },
    ];
    let items: Vec<_> = a
        .iter()
        .map(|e| (0, e))
        .chain(b.iter().map(|e| (1, e)))
        .collect();
    let w = store
        .write(&items, &infos, Mode::Whole)
        .await
        .expect("first delivery");
    assert_eq!(w.stored, 10);

    // The same entries delivered again (commit went through, the acknowledgement did not).
    infos.iter_mut().for_each(|i| i.suspect = true);
    let w = store
        .write(&items, &infos, Mode::Whole)
        .await
        .expect("redelivery");
    assert_eq!((w.stored, w.duplicates), (0, 10));

    // Without the suspicion flag the ledger conflict is caught too (slow path).
    infos.iter_mut().for_each(|i| i.suspect = false);
    let w = store
        .write(&items, &infos, Mode::Whole)
        .await
        .expect("unflagged redelivery");
    assert_eq!(w.stored, 0);
    assert_eq!(
        count(&db, "SELECT count(*) FROM analytics_events").await,
        10
    );
}

#[tokio::test]
async fn an_entry_written_in_parts_is_completed_not_doubled_on_redelivery() {
    let db = TestDb::migrated().await;
    let store = Store::new(Pools::new(&db.config()).expect("pools").write);
    let list = events(6);
    let infos = vec![EntryInfo {
        key: entry_key(1, "5-0").expect("key"),
        suspect: false,
    }];
    let items: Vec<_> = list.iter().map(|e| (0, e)).collect();
    // A split batch wrote the first half only.
    let w = store
        .write(&items[..3], &infos, Mode::Split)
        .await
        .expect("half");
    assert_eq!(w.stored, 3);
    let redelivered = vec![EntryInfo {
        suspect: true,
        ..infos[0]
    }];
    let w = store
        .write(&items, &redelivered, Mode::Whole)
        .await
        .expect("redelivery");
    assert_eq!((w.stored, w.duplicates), (3, 3));
    assert_eq!(
        count(&db, "SELECT count(DISTINCT event_id) FROM analytics_events").await,
        6
    );
    assert_eq!(count(&db, "SELECT count(*) FROM analytics_events").await, 6);
}

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
