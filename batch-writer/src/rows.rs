//! Turning queued events into rows: the timestamps and the jsonb value, written straight into the
//! binary COPY format; the former dedupe key. Pure, no I/O.

use std::pin::Pin;

use bytes::{BufMut, BytesMut};
use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};
use shared::queue::QueuedEvent;
use shared::schema::partitions::Month;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::{to_sql_checked, IsNull, ToSql, Type};
use uuid::Uuid;

/// The key an event had in `event_dedupe` before keys became exact (migration 4), still looked up
/// in `event_dedupe_legacy` until those rows age out: the first 8 bytes of the event id, then 8
/// bytes of SHA-256 over the app and the full id.
pub fn legacy_dedupe_key(app_id: &str, event_id: &Uuid) -> Uuid {
    let mut h = Sha256::new();
    h.update(app_id.as_bytes());
    h.update([0u8]);
    h.update(event_id.as_bytes());
    let digest = h.finalize();
    let mut key = [0u8; 16];
    key[..8].copy_from_slice(&event_id.as_bytes()[..8]);
    key[8..].copy_from_slice(&digest[..8]);
    Uuid::from_bytes(key)
}

pub fn time(us: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(us).unwrap_or(DateTime::<Utc>::MIN_UTC)
}

/// The month an event belongs to, that is its partition.
pub fn month(e: &QueuedEvent) -> Month {
    Month::of(time(e.occurred_at_us))
}

/// A JSON text already validated by the gateway, sent to a jsonb column without re-parsing.
#[derive(Debug)]
pub struct RawJsonb<'a>(pub &'a str);

impl ToSql for RawJsonb<'_> {
    fn to_sql(
        &self,
        _ty: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        // jsonb's binary format: a version byte (1), then the JSON text.
        out.put_u8(1);
        out.put_slice(self.0.as_bytes());
        Ok(IsNull::No)
    }

    fn accepts(ty: &Type) -> bool {
        *ty == Type::JSONB
    }

    to_sql_checked!();
}

/// The column types of `analytics_events` and `events_quarantine` in COPY order.
pub const COPY_TYPES: [Type; 8] = [
    Type::UUID,
    Type::TEXT,
    Type::TEXT,
    Type::TIMESTAMPTZ,
    Type::TIMESTAMPTZ,
    Type::TEXT,
    Type::TEXT,
    Type::JSONB,
];

/// Writes `events` as rows of [`COPY_COLUMNS`] into a binary COPY (the caller finishes it).
pub async fn write_rows(
    mut writer: Pin<&mut BinaryCopyInWriter>,
    events: &[&QueuedEvent],
) -> Result<(), tokio_postgres::Error> {
    for e in events {
        let occurred = time(e.occurred_at_us);
        let received = time(e.received_at_us);
        let metadata = RawJsonb(e.metadata.as_deref().unwrap_or("{}"));
        let row: [&(dyn ToSql + Sync); 8] = [
            &e.event_id,
            &e.app_id,
            &e.event_name,
            &occurred,
            &received,
            &e.user_id,
            &e.session_id,
            &metadata,
        ];
        writer.as_mut().write(&row).await?;
    }
    Ok(())
}

pub const COPY_COLUMNS: &str =
    "(event_id, app_id, event_name, occurred_at, received_at, user_id, session_id, metadata)";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn legacy_dedupe_keys_keep_the_time_prefix_and_separate_apps() {
        let id = Uuid::now_v7();
        let a = legacy_dedupe_key("app_a", &id);
        assert_eq!(a, legacy_dedupe_key("app_a", &id), "stable");
        assert_ne!(a, legacy_dedupe_key("app_b", &id), "per app");
        assert_eq!(&a.as_bytes()[..8], &id.as_bytes()[..8]);
    }

    #[test]
    fn raw_jsonb_is_version_byte_then_text() {
        let mut out = BytesMut::new();
        RawJsonb(r#"{"a":1}"#)
            .to_sql(&Type::JSONB, &mut out)
            .expect("encode");
        assert_eq!(&out[..], b"\x01{\"a\":1}");
        assert!(RawJsonb::accepts(&Type::JSONB));
        assert!(!RawJsonb::accepts(&Type::JSON));
    }
}
