//! The summary's pending rows of a batch, computed here rather than by the insert trigger
//! (migration 0009): per (app, UTC day of `occurred_at`, event name), the number of events, the
//! distinct user ids and the distinct sessions, each with its owner (the one user id every
//! event of that session in the group carries; none when they carry several or none, migration
//! 0008). The writer copies them into `summary_pending` in the transaction that stores the
//! events, after telling the trigger so.

use bytes::{BufMut, Bytes, BytesMut};
use chrono::NaiveDate;
use futures::SinkExt;
use shared::db::DbError;
use shared::queue::QueuedEvent;
use tokio_postgres::types::{IsNull, ToSql, Type};

use crate::rows;
use crate::store::Tx;

/// What the trigger would have recorded for one (app, day, event name).
#[derive(Debug, PartialEq, Eq)]
pub struct Pending<'e> {
    pub app: &'e str,
    pub day: NaiveDate,
    pub name: &'e str,
    pub events: i64,
    /// The distinct user ids, sorted.
    pub users: Vec<&'e str>,
    /// The distinct sessions, sorted, and beside each its owner: `Some(user)` when every event
    /// of it carried that user.
    pub sessions: Vec<&'e str>,
    pub owners: Vec<Option<&'e str>>,
}

/// One event as the pending rows see it.
type Seen<'e> = (
    &'e str,
    NaiveDate,
    &'e str,
    Option<&'e str>,
    Option<&'e str>,
);

/// The pending rows of `events`, one per (app, day, event name), in that order. Sorting one
/// vector of borrowed fields and walking its runs: no map or set per group.
pub fn of<'e>(events: &[&'e QueuedEvent]) -> Vec<Pending<'e>> {
    let mut seen: Vec<Seen<'e>> = events
        .iter()
        .map(|e| {
            let day = rows::time(e.occurred_at_us).date_naive();
            let (user, session) = (e.user_id.as_deref(), e.session_id.as_deref());
            (e.app_id.as_str(), day, e.event_name.as_str(), user, session)
        })
        .collect();
    seen.sort_unstable_by(|a, b| (a.0, a.1, a.2).cmp(&(b.0, b.1, b.2)));
    seen.chunk_by(|a, b| (a.0, a.1, a.2) == (b.0, b.1, b.2))
        .map(group)
        .collect()
}

/// The pending row of one (app, day, event name)'s events.
fn group<'e>(run: &[Seen<'e>]) -> Pending<'e> {
    let mut users: Vec<&str> = run.iter().filter_map(|r| r.3).collect();
    users.sort_unstable();
    users.dedup();
    let mut by_session: Vec<(&str, Option<&str>)> =
        run.iter().filter_map(|r| r.4.map(|s| (s, r.3))).collect();
    by_session.sort_unstable_by_key(|s| s.0);
    let (mut sessions, mut owners) = (Vec::new(), Vec::new());
    for events in by_session.chunk_by(|a, b| a.0 == b.0) {
        let first = events[0].1;
        sessions.push(events[0].0);
        owners.push(first.filter(|_| events.iter().all(|e| e.1 == first)));
    }
    Pending {
        app: run[0].0,
        day: run[0].1,
        name: run[0].2,
        events: run.len() as i64,
        users,
        sessions,
        owners,
    }
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

/// The binary COPY data (header, rows, trailer) of the pending rows of `events` (the events
/// this transaction stores in `analytics_events`), for [`copy`]. Encoded ahead, while
/// PostgreSQL takes the events' COPY, so that the pending rows' COPY costs its connection only
/// the round trips.
pub fn encode(events: &[&QueuedEvent]) -> Result<Bytes, DbError> {
    let op = "encode summary pending rows";
    let mut buf = BytesMut::with_capacity(events.len() * 48 + 64);
    buf.put_slice(b"PGCOPY\n\xff\r\n\0");
    buf.put_i32(0); // flags
    buf.put_i32(0); // header extension
    for p in of(events) {
        let row: [&(dyn ToSql + Sync); 7] = [
            &p.app,
            &p.day,
            &p.name,
            &p.events,
            &p.users,
            &p.sessions,
            &p.owners,
        ];
        buf.put_i16(row.len() as i16);
        for (value, ty) in row.iter().zip(&TYPES) {
            let at = buf.len();
            buf.put_i32(0);
            let encoded = value.to_sql_checked(ty, &mut buf);
            let len = match encoded.map_err(|e| DbError::Other {
                op,
                message: e.to_string(),
            })? {
                IsNull::Yes => -1,
                IsNull::No => (buf.len() - at - 4) as i32,
            };
            buf[at..at + 4].copy_from_slice(&len.to_be_bytes());
        }
    }
    buf.put_i16(-1);
    Ok(buf.freeze())
}

/// Binary COPY of pending rows encoded by [`encode`] into `summary_pending`; nothing when
/// `events` was empty.
pub async fn copy(tx: &Tx<'_, '_>, data: Option<Bytes>) -> Result<(), DbError> {
    let Some(data) = data else {
        return Ok(());
    };
    let op = "copy summary pending rows";
    let sink = tx
        .copy_in_raw(
            "COPY summary_pending (app_id, day, event_name, events, users, sessions, owners) \
             FROM STDIN (FORMAT binary)",
            op,
        )
        .await?;
    futures::pin_mut!(sink);
    sink.send(data).await.map_err(DbError::query(op))?;
    sink.finish().await.map_err(DbError::query(op))?;
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
        let find = |app, day, name| {
            got.iter()
                .find(|p| (p.app, p.day, p.name) == (app, day, name))
                .expect("row")
        };
        assert_eq!(got.len(), 4);
        let keys: Vec<_> = got.iter().map(|p| (p.app, p.day, p.name)).collect();
        let mut sorted = keys.clone();
        sorted.sort();
        assert_eq!(keys, sorted, "rows come out in key order");
        let a = find("a", day, "click");
        assert_eq!(a.events, 6);
        assert_eq!(a.users, ["u1", "u2", "u3", "u4"]);
        assert_eq!(a.sessions, ["s1", "s2", "s3"]);
        assert_eq!(a.owners, [Some("u1"), None, None]);
        let a_next = find("a", next, "click");
        assert_eq!(a_next.events, 1);
        assert_eq!(
            (&a_next.sessions[..], &a_next.owners[..]),
            (&["s1"][..], &[Some("u1")][..])
        );
        assert_eq!(find("a", day, "view").events, 1);
        // A session's anonymous event first, then one with a user: no owner either way round.
        let b = find("b", day, "click");
        assert_eq!((&b.sessions[..], &b.owners[..]), (&["s4"][..], &[None][..]));
        assert_eq!(b.users, ["u5"]);
    }
}
