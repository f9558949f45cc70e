//! The pending summary rows the writer records, compared with those the trigger would have
//! written for the same events.

use batch_writer::store::{EntryInfo, Mode, Store};
use shared::db::Pools;
use testkit::TestDb;

use super::entry_key;
use crate::helpers::*;

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

/// A refusal at the batch's last step, the pending rows' COPY (here by a trigger), reaches the
/// writer as its own error (a data error, for the split), and nothing of the batch is committed:
/// not its events, not its ledger row.
#[tokio::test]
async fn a_refusal_at_the_last_copy_reaches_the_writer_and_commits_nothing() {
    let db = TestDb::migrated().await;
    let store = Store::new(Pools::new(&db.config()).expect("pools").write);
    let client = db.client().await;
    client
        .batch_execute(
            "CREATE FUNCTION refuse_pending() RETURNS trigger LANGUAGE plpgsql AS $$ \
             BEGIN RAISE EXCEPTION 'pending rows refused' USING ERRCODE = 'P0001'; END $$; \
             CREATE TRIGGER refuse_pending BEFORE INSERT ON summary_pending \
             FOR EACH ROW EXECUTE FUNCTION refuse_pending();",
        )
        .await
        .expect("trigger");
    let batch = events(20);
    let items: Vec<_> = batch.iter().map(|e| (0, e)).collect();
    let infos = [EntryInfo {
        key: entry_key(0, "1-0").expect("key"),
        suspect: false,
    }];
    let err = store
        .write(&items, &infos, Mode::Whole)
        .await
        .expect_err("refused");
    assert!(
        matches!(err, batch_writer::store::WriteError::Data(ref e) if e.to_string().contains("pending rows refused")),
        "{err}"
    );
    for table in ["analytics_events", "entry_ledger", "summary_pending"] {
        let n = count(&db, &format!("SELECT count(*) FROM {table}")).await;
        assert_eq!(n, 0, "{table}: nothing of the batch committed");
    }

    // Once the trigger is gone the same batch goes in whole, on the fast path's connection.
    client
        .batch_execute("DROP TRIGGER refuse_pending ON summary_pending")
        .await
        .expect("drop");
    let w = store
        .write(&items, &infos, Mode::Whole)
        .await
        .expect("written");
    assert_eq!(w.stored, 20);
    assert_eq!(
        count(&db, "SELECT count(*) FROM analytics_events").await,
        20
    );
    assert_eq!(count(&db, "SELECT count(*) FROM entry_ledger").await, 1);
}
