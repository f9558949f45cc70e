//! The entry ledger: an entry redelivered, written in parts, split after a stale read, or
//! dead-lettered and delivered again is stored once.

use batch_writer::store::{EntryInfo, Mode, Store};
use shared::db::Pools;
use testkit::TestDb;

use super::entry_key;
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

/// Hole: a split batch wrote an entry's events (with keys) while its first reader stalled; the
/// first reader then writes the entry on the fast path (no keys, no lookup). The split's ledger
/// row makes the fast path's ledger COPY collide, and the slow path checks each event.
#[tokio::test]
async fn a_stale_first_reader_after_a_split_writes_only_what_the_split_did_not() {
    let db = TestDb::migrated().await;
    let store = Store::new(Pools::new(&db.config()).expect("pools").write);
    let list = events(6);
    let fresh = vec![EntryInfo {
        key: entry_key(0, "7-0").expect("key"),
        suspect: false,
    }];
    let items: Vec<_> = list.iter().map(|e| (0, e)).collect();
    let claimed = vec![EntryInfo {
        suspect: true,
        ..fresh[0]
    }];
    let w = store
        .write(&items[..4], &claimed, Mode::Split)
        .await
        .expect("the claimer's split");
    assert_eq!(w.stored, 4);
    let w = store
        .write(&items, &fresh, Mode::Whole)
        .await
        .expect("the stale first reader");
    assert_eq!((w.stored, w.duplicates), (2, 4));
    assert_eq!(count(&db, "SELECT count(*) FROM analytics_events").await, 6);
    assert_eq!(
        count(&db, "SELECT count(*) FROM entry_ledger WHERE whole").await,
        1,
        "the entry is now recorded whole"
    );
    // Later deliveries of the entry, fresh or not, whole or split, write nothing.
    for (mode, suspect) in [
        (Mode::Whole, false),
        (Mode::Split, false),
        (Mode::Split, true),
    ] {
        let infos = vec![EntryInfo {
            suspect,
            ..fresh[0]
        }];
        let w = store.write(&items, &infos, mode).await.expect("again");
        assert_eq!(w.stored, 0, "{mode:?} suspect={suspect}");
    }
    assert_eq!(count(&db, "SELECT count(*) FROM analytics_events").await, 6);
}

/// Hole: an entry written whole on the fast path (no per-event keys) is delivered fresh again
/// (Redis lost its delivery state) into a batch that splits: the split must see the ledger row.
#[tokio::test]
async fn a_split_batch_skips_an_entry_already_written_whole() {
    let db = TestDb::migrated().await;
    let store = Store::new(Pools::new(&db.config()).expect("pools").write);
    let list = events(5);
    let infos = vec![EntryInfo {
        key: entry_key(0, "8-0").expect("key"),
        suspect: false,
    }];
    let items: Vec<_> = list.iter().map(|e| (0, e)).collect();
    let w = store
        .write(&items, &infos, Mode::Whole)
        .await
        .expect("first");
    assert_eq!(w.stored, 5);
    let w = store
        .write(&items[..2], &infos, Mode::Split)
        .await
        .expect("fresh again, split");
    assert_eq!(w.stored, 0);
    assert_eq!(count(&db, "SELECT count(*) FROM analytics_events").await, 5);
}

/// Hole: an entry whose only event was dead-lettered is acknowledged; a Redis restored from an
/// older copy delivers it fresh again. The dead letter left a "parts" ledger row, so the fresh
/// delivery checks the event's key instead of taking the fast path, and it and a replay of the
/// dead letter store the event once between them, in either order.
#[tokio::test]
async fn a_dead_lettered_entry_delivered_again_and_its_replay_store_the_event_once() {
    use batch_writer::dead_letter;
    let db = TestDb::migrated().await;
    let pool = Pools::new(&db.config()).expect("pools").write;
    let store = Store::new(pool.clone());
    let p = event("app_t", "refused_once");
    let key = entry_key(0, "12-0").expect("key");
    dead_letter::store_event(&pool, &p, "refused", "s", ("12-0", key), 5)
        .await
        .expect("dead letter");
    let fresh = vec![EntryInfo {
        key,
        suspect: false,
    }];
    let w = store
        .write(&[(0, &p)], &fresh, Mode::Whole)
        .await
        .expect("delivered again");
    assert_eq!(w.stored, 1);
    // The replay: the same event, marked for dedupe, in a new entry.
    let mut replayed = p.clone();
    replayed.client_id = true;
    let infos = vec![EntryInfo {
        key: entry_key(0, "13-0").expect("key"),
        suspect: false,
    }];
    let w = store
        .write(&[(0, &replayed)], &infos, Mode::Whole)
        .await
        .expect("replay");
    assert_eq!((w.stored, w.duplicates), (0, 1));
    assert_eq!(count(&db, "SELECT count(*) FROM analytics_events").await, 1);
}
