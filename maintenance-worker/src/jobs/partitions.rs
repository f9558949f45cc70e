//! The partitions job: monthly partitions from the oldest retained month through
//! `PARTITION_PREMAKE_MONTHS` ahead, by the clock; quarantined events moved into partitions that
//! now exist (or discarded, counted, once past retention); the hot-data index kept on the recent
//! partitions only; the user index (migration 7) built on partitions that predate it.

use chrono::{DateTime, Utc};
use shared::db::{Db, DbError};
use shared::schema::partitions::{self, retention_floor, Month};

use super::{ddl, JobCtx};
use crate::metrics;

/// How many of the latest months (the current one included) carry the hot-data index.
pub const HOT_MONTHS: i32 = 2;

pub async fn run(ctx: &JobCtx) -> Result<serde_json::Value, DbError> {
    let now = ctx.clock.now();
    let client = ctx.db.get("partitions job").await?;
    let wanted = partitions::wanted_months(now, ctx.retention_months, ctx.premake_months);
    let created = partitions::ensure(&client, &wanted).await?;
    drop(client);
    let (moved, discarded) = drain_quarantine(&ctx.db, now, ctx.retention_months).await?;
    let (hot_added, hot_dropped) = hot_indexes(&ctx.db, now).await?;
    let user_index_added = user_indexes(&ctx.db).await?;
    let ahead = months_ahead(&ctx.db, now).await?;
    Ok(serde_json::json!({
        "created": created.iter().map(|m| m.partition_name()).collect::<Vec<_>>(),
        "quarantine_moved": moved,
        "quarantine_discarded": discarded,
        "hot_index_added": hot_added,
        "hot_index_dropped": hot_dropped,
        "user_index_added": user_index_added,
        "months_ahead": ahead,
        "rows": moved + discarded,
    }))
}

/// Months of partitions that exist, without a gap, after the current month. Also published as
/// `sluice_partitions_ahead_months`.
pub async fn months_ahead(db: &Db, now: DateTime<Utc>) -> Result<u32, DbError> {
    let client = db.get("count partitions ahead").await?;
    let existing = partitions::existing(&client).await?;
    let n = ahead(&existing, Month::of(now));
    metrics::partitions_ahead(n);
    Ok(n)
}

/// Months among `existing`, without a gap, after `current`.
fn ahead(existing: &[Month], current: Month) -> u32 {
    let mut n = 0;
    while existing.contains(&current.plus(n as i32 + 1)) {
        n += 1;
    }
    n
}

/// Events waiting in quarantine; also published as `sluice_quarantine_rows`.
pub async fn quarantine_rows(db: &Db) -> Result<i64, DbError> {
    let n: i64 = db
        .query_one(
            "count quarantine",
            "SELECT count(*) FROM events_quarantine",
            &[],
        )
        .await?
        .get(0);
    metrics::quarantine_rows(n);
    Ok(n)
}

/// Moves quarantined events whose month now has a partition; discards those past retention.
async fn drain_quarantine(
    db: &Db,
    now: DateTime<Utc>,
    retention: u32,
) -> Result<(u64, u64), DbError> {
    let floor = retention_floor(now, retention);
    let discarded = db
        .execute(
            "discard expired quarantine",
            "DELETE FROM events_quarantine WHERE occurred_at < $1",
            &[&floor],
        )
        .await?;
    if discarded > 0 {
        tracing::warn!(
            discarded,
            "Discarded quarantined events older than the retention window."
        );
    }
    let moved = move_quarantined(db).await?;
    quarantine_rows(db).await?;
    Ok((moved, discarded))
}

/// Moves the quarantined events of one month (`$1` to `$2`) into its partition.
const MOVE_QUARANTINED: &str = "
WITH moved AS (DELETE FROM events_quarantine
                WHERE occurred_at >= $1 AND occurred_at < $2
            RETURNING event_id, app_id, event_name, occurred_at, received_at, user_id, session_id,
                      metadata)
INSERT INTO analytics_events
       (event_id, app_id, event_name, occurred_at, received_at, user_id, session_id, metadata)
SELECT * FROM moved";

/// Moves the quarantined events of every month that has a partition now into it.
async fn move_quarantined(db: &Db) -> Result<u64, DbError> {
    let client = db.get("drain quarantine").await?;
    let existing = partitions::existing(&client).await?;
    let months: Vec<DateTime<Utc>> = client
        .query(
            "SELECT DISTINCT date_trunc('month', occurred_at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' \
             FROM events_quarantine",
            &[],
        )
        .await
        .map_err(DbError::query("list quarantined months"))?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut moved = 0;
    for m in months.into_iter().map(Month::of) {
        if !existing.contains(&m) {
            continue;
        }
        moved += client
            .execute(MOVE_QUARANTINED, &[&m.start(), &m.plus(1).start()])
            .await
            .map_err(DbError::query("move quarantined events"))?;
    }
    Ok(moved)
}

fn hot_index_name(m: Month) -> String {
    format!("{}_hot_idx", m.partition_name())
}

/// The hot-data index (a covering index for per-app queries on recent data) on the latest
/// [`HOT_MONTHS`] partitions, dropped from older ones. Built and dropped CONCURRENTLY, so writers
/// are never blocked; an index left invalid by an interrupted build is rebuilt.
async fn hot_indexes(db: &Db, now: DateTime<Utc>) -> Result<(Vec<String>, Vec<String>), DbError> {
    let current = Month::of(now);
    let (existing, have) = list_hot_indexes(db).await?;
    let (mut added, mut dropped) = (Vec::new(), Vec::new());
    for m in existing {
        let name = hot_index_name(m);
        let state = have
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, valid)| *valid);
        let hot = m <= current && m > current.plus(-HOT_MONTHS);
        if (!hot && state.is_some()) || state == Some(false) {
            let sql = format!("DROP INDEX CONCURRENTLY IF EXISTS {name}");
            ddl(db, "drop hot index", &sql).await?;
            dropped.push(name.clone());
        }
        if hot && state != Some(true) {
            let sql = format!(
                "CREATE INDEX CONCURRENTLY IF NOT EXISTS {name} ON {} (app_id, occurred_at) \
                 INCLUDE (event_name, user_id, session_id)",
                m.partition_name()
            );
            ddl(db, "create hot index", &sql).await?;
            added.push(name);
        }
    }
    Ok((added, dropped))
}

/// The partitions, and the hot indexes there are with whether each is valid.
async fn list_hot_indexes(db: &Db) -> Result<(Vec<Month>, Vec<(String, bool)>), DbError> {
    let client = db.get("hot indexes").await?;
    let existing = partitions::existing(&client).await?;
    let have = client
        .query(
            "SELECT c.relname::text, i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid \
             WHERE c.relname LIKE 'analytics_events_p%_hot_idx'",
            &[],
        )
        .await
        .map_err(DbError::query("list hot indexes"))?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    Ok((existing, have))
}

/// The user index of migration 7 on every partition. Partitions created after the migration get
/// it with their other indexes; one that predates it (an upgraded installation) gets it built
/// CONCURRENTLY, so writers are never blocked, and attached to the parent's index. An index left
/// invalid by an interrupted build is rebuilt.
async fn user_indexes(db: &Db) -> Result<Vec<String>, DbError> {
    let client = db.get("user indexes").await?;
    let existing = partitions::existing(&client).await?;
    let attached: Vec<String> = client
        .query(
            "SELECT t.relname::text FROM pg_inherits h \
             JOIN pg_index x ON x.indexrelid = h.inhrelid JOIN pg_class t ON t.oid = x.indrelid \
             WHERE h.inhparent = 'analytics_events_user_idx'::regclass",
            &[],
        )
        .await
        .map_err(DbError::query("list user indexes"))?
        .iter()
        .map(|r| r.get(0))
        .collect();
    drop(client);
    let mut added = Vec::new();
    for part in existing.iter().map(|m| m.partition_name()) {
        if !attached.contains(&part) {
            added.push(build_user_index(db, &part).await?);
        }
    }
    Ok(added)
}

/// Builds the user index on partition `part` and attaches it; returns its name.
async fn build_user_index(db: &Db, part: &str) -> Result<String, DbError> {
    let name = format!("{part}_user_idx");
    // An invalid leftover of an interrupted build would be kept by IF NOT EXISTS.
    let drop_invalid = format!(
        "DO $$ BEGIN IF EXISTS (SELECT 1 FROM pg_index WHERE indexrelid = \
         to_regclass('{name}') AND NOT indisvalid) THEN DROP INDEX {name}; END IF; END $$"
    );
    ddl(db, "drop invalid user index", &drop_invalid).await?;
    let create = format!(
        "CREATE INDEX CONCURRENTLY IF NOT EXISTS {name} ON {part} \
         (hashtextextended(app_id || chr(31) || user_id, 0)) WHERE user_id IS NOT NULL"
    );
    ddl(db, "create user index", &create).await?;
    let attach = format!("ALTER INDEX analytics_events_user_idx ATTACH PARTITION {name}");
    ddl(db, "attach user index", &attach).await?;
    tracing::info!(partition = %part, "Built the user index on a partition.");
    Ok(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn months_ahead_stop_at_the_first_gap() {
        let now = Month::of(Utc::now());
        assert_eq!(ahead(&[now, now.plus(1), now.plus(2), now.plus(4)], now), 2);
        assert_eq!(ahead(&[now.plus(-1), now], now), 0);
    }
}
