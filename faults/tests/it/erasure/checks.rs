//! What must hold once the erasure is done: nothing of the victim, everything of the others,
//! the summary recomputed.

use super::*;

pub(super) const EVENTS_OF: &str =
    "SELECT count(*) FROM analytics_events WHERE app_id = $1 AND user_id = ";
pub(super) const QUARANTINE_OF: &str =
    "SELECT count(*) FROM events_quarantine WHERE app_id = $1 AND user_id = ";
pub(super) const MEMBERS_OF: &str =
    "SELECT count(*) FROM summary_members WHERE app_id = $1 AND kind = 'u' AND member = ";

/// The rows of `user` (one of the constants) in `app`: events, quarantined, summary members.
pub(super) async fn rows_of(w: &World, app: &str, user: &str) -> [i64; 3] {
    let mut out = [0; 3];
    for (i, sql) in [EVENTS_OF, QUARANTINE_OF, MEMBERS_OF].iter().enumerate() {
        out[i] = w.count(&format!("{sql}'{user}'"), app).await;
    }
    out
}

/// Dead letters left that name `user` of `app`, decoded.
pub(super) async fn dead_letters_of(w: &World, app: &str, user: &str) -> usize {
    let rows =
        w.c.query("SELECT payload FROM dead_letters", &[])
            .await
            .expect("dead letters");
    rows.iter()
        .filter(|r| {
            shared::queue::decode(r.get(0)).is_ok_and(|events| {
                events
                    .iter()
                    .any(|e| e.app_id == app && e.user_id.as_deref() == Some(user))
            })
        })
        .count()
}

/// Nothing of the victim of the first app is left anywhere; its clear id is forgotten.
pub(super) async fn assert_victim_gone(w: &World, b: &Before, id: Uuid, logs: &str) {
    assert_eq!(rows_of(w, &b.app, VICTIM).await, [0, 0, 0], "{logs}");
    assert_eq!(dead_letters_of(w, &b.app, VICTIM).await, 0);
    for sql in [
        "SELECT count(*) FROM summary_pending WHERE app_id = $1 AND 'victim' = ANY(users)",
        "SELECT count(*) FROM summary_members \
         WHERE app_id = $1 AND kind = 's' AND member LIKE 'victim-s%'",
    ] {
        assert_eq!(w.count(sql, &b.app).await, 0, "{sql}");
    }
    let ids =
        w.c.query_one(
            "SELECT count(*), count(user_id) FROM erasure_users WHERE erasure_id = $1",
            &[&id],
        )
        .await
        .expect("erasure users");
    assert_eq!((ids.get::<_, i64>(0), ids.get::<_, i64>(1)), (1, 0));
}

/// Everyone else's rows are all there, the bystander's posted events stored exactly once.
pub(super) async fn assert_others_kept(w: &World, b: &Before, posted: &[Uuid], logs: &str) {
    assert_eq!(rows_of(w, &b.app2, VICTIM).await, b.second);
    assert_eq!(dead_letters_of(w, &b.app2, VICTIM).await, 1);
    assert_eq!(dead_letters_of(w, &b.app, BYSTANDER).await, 1);
    let mut want = b.bystander;
    want[0] += POSTED as i64;
    assert_eq!(rows_of(w, &b.app, BYSTANDER).await, want, "{logs}");
    let stored =
        w.c.query_one(
            "SELECT count(*), count(DISTINCT event_id) FROM analytics_events \
             WHERE app_id = $1 AND event_id = ANY($2)",
            &[&b.app, &posted],
        )
        .await
        .expect("posted events");
    let stored: (i64, i64) = (stored.get(0), stored.get(1));
    assert_eq!(stored, (POSTED as i64, POSTED as i64), "{logs}");
}

/// The summary is what the events say, with one user fewer on every (day, event name); the
/// second app's is untouched.
pub(super) async fn assert_summary(w: &World, b: &Before) {
    let summary = w.summary(&b.app).await;
    let recomputed = summary_rows(
        &w.c,
        "SELECT (occurred_at AT TIME ZONE 'UTC')::date, event_name, count(*), \
                count(DISTINCT user_id), count(DISTINCT session_id) \
           FROM analytics_events WHERE app_id = $1 GROUP BY 1, 2 ORDER BY 1, 2",
        &b.app,
    )
    .await;
    assert_eq!(summary, recomputed);
    let users = |rows: &[SummaryRow], less: i64| -> Vec<(NaiveDate, String, i64)> {
        rows.iter()
            .map(|r| (r.0, r.1.clone(), r.3 - less))
            .collect()
    };
    assert_eq!(users(&summary, 0), users(&b.summary, 1));
    assert_eq!(w.summary(&b.app2).await, b.summary2);
}
