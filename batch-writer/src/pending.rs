//! The summary's pending rows of a batch, computed here rather than by the insert trigger
//! (migration 0009): per (app, UTC day of `occurred_at`, event name), the number of events, the
//! distinct user ids and the distinct sessions, each with its owner (the one user id every
//! event of that session in the group carries; none when they carry several or none, migration
//! 0008). The writer copies them into `summary_pending` in the transaction that stores the
//! events, after telling the trigger so.

use std::collections::{BTreeMap, BTreeSet};

use chrono::NaiveDate;
use futures::pin_mut;
use shared::db::DbError;
use shared::queue::QueuedEvent;
use tokio_postgres::types::{ToSql, Type};

use crate::rows;
use crate::store::Tx;

/// What the trigger would have recorded for one (app, day, event name).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Pending<'e> {
    pub events: i64,
    pub users: BTreeSet<&'e str>,
    /// Each session and its owner so far: `Some(user)` while every event of it had that user.
    pub sessions: BTreeMap<&'e str, Option<&'e str>>,
}

/// The pending rows of `events`, keyed by (app, day, event name).
pub fn of<'e>(events: &[&'e QueuedEvent]) -> BTreeMap<(&'e str, NaiveDate, &'e str), Pending<'e>> {
    let mut out: BTreeMap<_, Pending> = BTreeMap::new();
    for e in events {
        let day = rows::time(e.occurred_at_us).date_naive();
        let p = out
            .entry((e.app_id.as_str(), day, e.event_name.as_str()))
            .or_default();
        p.events += 1;
        let user = e.user_id.as_deref();
        if let Some(u) = user {
            p.users.insert(u);
        }
        if let Some(s) = e.session_id.as_deref() {
            p.sessions
                .entry(s)
                .and_modify(|owner| {
                    if *owner != user {
                        *owner = None;
                    }
                })
                .or_insert(user);
        }
    }
    out
}

const TYPES: [Type; 7] = [
    Type::TEXT,
    Type::DATE,
    Type::TEXT,
    Type::INT8,
    Type::TEXT_ARRAY,
    Type::TEXT_ARRAY,
    Type::TEXT_ARRAY,
];

/// Binary COPY of the pending rows of `events` (the events this transaction stores in
/// `analytics_events`) into `summary_pending`.
pub async fn copy(tx: &Tx<'_, '_>, events: &[&QueuedEvent]) -> Result<(), DbError> {
    if events.is_empty() {
        return Ok(());
    }
    let op = "copy summary pending rows";
    let writer = tx
        .copy_in(
            "COPY summary_pending (app_id, day, event_name, events, users, sessions, owners) \
             FROM STDIN (FORMAT binary)",
            &TYPES,
            op,
        )
        .await?;
    pin_mut!(writer);
    for ((app, day, name), p) in of(events) {
        let users: Vec<&str> = p.users.into_iter().collect();
        let (sessions, owners): (Vec<&str>, Vec<Option<&str>>) = p.sessions.into_iter().unzip();
        let row: [&(dyn ToSql + Sync); 7] =
            [&app, &day, &name, &p.events, &users, &sessions, &owners];
        writer
            .as_mut()
            .write(&row)
            .await
            .map_err(DbError::query(op))?;
    }
    writer.finish().await.map_err(DbError::query(op))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(
        app: &str,
        name: &str,
        us: i64,
        user: Option<&str>,
        session: Option<&str>,
    ) -> QueuedEvent {
        QueuedEvent {
            event_id: uuid::Uuid::new_v4(),
            app_id: app.into(),
            event_name: name.into(),
            occurred_at_us: us,
            received_at_us: us,
            user_id: user.map(Into::into),
            session_id: session.map(Into::into),
            metadata: None,
            client_id: false,
        }
    }

    #[test]
    fn rows_group_by_app_utc_day_and_name_with_distinct_ids_and_owners() {
        // 2026-11-30T23:59:59.999999Z and a microsecond later, the next UTC day.
        let late = 1_796_083_199_999_999;
        let events = [
            event("a", "click", late, Some("u1"), Some("s1")),
            event("a", "click", late, Some("u1"), Some("s1")),
            event("a", "click", late, Some("u2"), Some("s2")),
            event("a", "click", late, Some("u3"), Some("s2")),
            event("a", "click", late, None, Some("s3")),
            event("a", "click", late, Some("u4"), None),
            event("a", "click", late + 1, Some("u1"), Some("s1")),
            event("a", "view", late, Some("u1"), Some("s1")),
            event("b", "click", late, None, Some("s4")),
            event("b", "click", late, Some("u5"), Some("s4")),
        ];
        let refs: Vec<&QueuedEvent> = events.iter().collect();
        let got = of(&refs);
        let day = NaiveDate::from_ymd_opt(2026, 11, 30).expect("day");
        let next = day.succ_opt().expect("next");
        assert_eq!(got.len(), 4);
        let a = &got[&("a", day, "click")];
        assert_eq!(a.events, 6);
        assert_eq!(a.users, BTreeSet::from(["u1", "u2", "u3", "u4"]));
        assert_eq!(
            a.sessions,
            BTreeMap::from([("s1", Some("u1")), ("s2", None), ("s3", None)])
        );
        let a_next = &got[&("a", next, "click")];
        assert_eq!(a_next.events, 1);
        assert_eq!(a_next.sessions, BTreeMap::from([("s1", Some("u1"))]));
        assert_eq!(got[&("a", day, "view")].events, 1);
        // A session's anonymous event first, then one with a user: no owner either way round.
        assert_eq!(
            got[&("b", day, "click")].sessions,
            BTreeMap::from([("s4", None)])
        );
        assert!(got[&("b", day, "click")].users.contains("u5"));
    }
}
