//! The store's exactly-once rules, deterministically: a redelivered entry (suspect) that was
//! committed whole, or in parts, is not written again.

use batch_writer::store::{EntryInfo, Mode, Store, WriteError};
use shared::db::Pools;
use testkit::TestDb;

use crate::helpers::*;

fn entry_key(shard: u16, id: &str) -> Option<uuid::Uuid> {
    shared::queue::entry_ledger_key(0, shard, id)
}

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

/// `summary_pending` normalized: events per (app, day, event name); the distinct users; each
/// session with its owner merged across rows (as the fold merges them).
async fn pending_summary(db: &TestDb) -> Vec<String> {
    let client = db.client().await;
    let mut out = Vec::new();
    for sql in [
        "SELECT concat_ws('|', app_id, day, event_name, sum(events)) FROM summary_pending \
          GROUP BY app_id, day, event_name ORDER BY 1",
        "SELECT DISTINCT concat_ws('|', app_id, day, event_name, 'u', u) \
           FROM summary_pending, unnest(users) u ORDER BY 1",
        "SELECT concat_ws('|', app_id, day, event_name, 's', s, \
                CASE WHEN bool_and(o IS NOT NULL) AND min(o) = max(o) THEN min(o) END) \
           FROM summary_pending, unnest(sessions, owners) AS x(s, o) \
          GROUP BY app_id, day, event_name, s ORDER BY 1",
    ] {
        for r in client.query(sql, &[]).await.expect("pending") {
            out.push(r.get(0));
        }
    }
    out
}

#[tokio::test]
async fn the_writer_records_the_pending_summary_rows_the_trigger_would_have() {
    let db = TestDb::migrated().await;
    let store = Store::new(Pools::new(&db.config()).expect("pools").write);
    // Around today's midnight (UTC): a microsecond apart, two days.
    let midnight = chrono::Utc::now()
        .date_naive()
        .and_hms_opt(0, 0, 0)
        .expect("midnight")
        .and_utc()
        .timestamp_micros();
    type Shape<'a> = (&'a str, &'a str, i64, Option<&'a str>, Option<&'a str>);
    let shapes: [Shape; 9] = [
        ("a", "click", midnight, Some("u1"), Some("s1")),
        ("a", "click", midnight, Some("u1"), Some("s1")),
        ("a", "click", midnight, Some("u2"), Some("s2")),
        ("a", "click", midnight, Some("u3"), Some("s2")),
        ("a", "click", midnight, None, Some("s3")),
        ("a", "click", midnight, Some("u4"), None),
        ("a", "click", midnight - 1, Some("u1"), Some("s1")),
        ("a", "view", midnight, Some("u1"), Some("s1")),
        ("b", "click", midnight, None, None),
    ];
    let make = |round: usize| -> Vec<shared::queue::QueuedEvent> {
        shapes
            .iter()
            .map(|&(app, name, at, user, session)| {
                let mut e = event(app, name);
                e.occurred_at_us = at;
                e.user_id = user.map(Into::into);
                // The second round's sessions meet the first's with other users.
                e.session_id = session.map(|s| {
                    if round == 1 && s == "s1" {
                        "s2".into()
                    } else {
                        s.into()
                    }
                });
                e
            })
            .collect()
    };
    let (first, second) = (make(0), make(1));
    for (n, batch) in [&first, &second].into_iter().enumerate() {
        let infos = vec![EntryInfo {
            key: entry_key(0, &format!("{n}-0")).expect("key"),
            suspect: false,
        }];
        let items: Vec<_> = batch.iter().map(|e| (0, e)).collect();
        let w = store
            .write(&items, &infos, Mode::Whole)
            .await
            .expect("write");
        assert_eq!(w.stored, 9);
        // A redelivery stores nothing and records nothing.
        let again = vec![EntryInfo {
            key: infos[0].key,
            suspect: true,
        }];
        let w = store
            .write(&items, &again, Mode::Whole)
            .await
            .expect("again");
        assert_eq!(w.stored, 0);
    }
    assert_eq!(
        count(
            &db,
            "SELECT coalesce(sum(events), 0)::bigint FROM summary_pending"
        )
        .await,
        18,
        "each stored event counted once: by the writer, not by the trigger too"
    );

    // The same events inserted by SQL, one statement a batch: the trigger's rows.
    let by_sql = TestDb::migrated().await;
    let client = by_sql.client().await;
    for batch in [&first, &second] {
        let ids: Vec<uuid::Uuid> = batch.iter().map(|e| e.event_id).collect();
        let apps: Vec<&str> = batch.iter().map(|e| e.app_id.as_str()).collect();
        let names: Vec<&str> = batch.iter().map(|e| e.event_name.as_str()).collect();
        let at: Vec<chrono::DateTime<chrono::Utc>> = batch
            .iter()
            .map(|e| batch_writer::rows::time(e.occurred_at_us))
            .collect();
        let users: Vec<Option<&str>> = batch.iter().map(|e| e.user_id.as_deref()).collect();
        let sessions: Vec<Option<&str>> = batch.iter().map(|e| e.session_id.as_deref()).collect();
        client
            .execute(
                "INSERT INTO analytics_events (event_id, app_id, event_name, occurred_at, received_at, user_id, session_id) \
                 SELECT i, a, n, t, t, u, s FROM unnest($1::uuid[], $2::text[], $3::text[], $4::timestamptz[], $5::text[], $6::text[]) AS x(i, a, n, t, u, s)",
                &[&ids, &apps, &names, &at, &users, &sessions],
            )
            .await
            .expect("insert");
    }
    let want = pending_summary(&by_sql).await;
    assert_eq!(want.len(), 4 + 6 + 7, "{want:#?}");
    assert_eq!(pending_summary(&db).await, want);
}
