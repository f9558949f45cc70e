//! Erasure requests in the database: recorded (with their users' suppression, in one
//! transaction), read back one or all of an app's.

use std::collections::HashSet;

use chrono::{DateTime, Utc};
use deadpool_postgres::Transaction;
use serde::Serialize;
use shared::db::{Db, DbError};
use shared::privacy::{user_digest, MAX_USERS_PER_ERASURE};
use tokio_postgres::types::ToSql;
use uuid::Uuid;

use crate::validate::MAX_ID_BYTES;

/// An erasure request as stored and answered.
#[derive(Debug, Clone, Serialize)]
pub struct Erasure {
    pub erasure_id: Uuid,
    pub app_id: String,
    pub status: String,
    /// Where a running request is: `queue`, `delete`, `summary` or `cache` (docs/privacy.md).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    pub suppress: bool,
    pub users: i32,
    pub requested_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub removed: serde_json::Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

const ERASURE_COLUMNS: &str = "erasure_id, app_id, status, suppress, users, requested_at, \
                               started_at, finished_at, removed, error, phase";

impl Erasure {
    fn from_row(r: &tokio_postgres::Row) -> Self {
        Self {
            erasure_id: r.get(0),
            app_id: r.get(1),
            status: r.get(2),
            suppress: r.get(3),
            users: r.get(4),
            requested_at: r.get(5),
            started_at: r.get(6),
            finished_at: r.get(7),
            removed: r.get(8),
            error: r.get(9),
            phase: r.get(10),
        }
    }
}

/// The user ids of a request, checked: 1 to 1,000 ids, each 1 to 200 bytes without NUL;
/// duplicates count once.
pub fn check_user_ids(ids: &[String]) -> Result<Vec<String>, String> {
    if ids.is_empty() {
        return Err("user_ids must name at least one user".into());
    }
    if ids.len() > MAX_USERS_PER_ERASURE {
        return Err(format!(
            "{} user_ids in one request; at most {MAX_USERS_PER_ERASURE} are allowed",
            ids.len()
        ));
    }
    let mut seen = HashSet::new();
    let mut out = Vec::with_capacity(ids.len());
    for id in ids {
        if id.is_empty() {
            return Err("a user id must not be empty".into());
        }
        crate::validate::short_id("a user id", id)?;
        if seen.insert(id.as_str()) {
            out.push(id.clone());
        }
    }
    debug_assert!(out.iter().all(|u| u.len() <= MAX_ID_BYTES));
    Ok(out)
}

/// Records an erasure request of `user_ids` (checked) for `app_id`, with their suppression when
/// `suppress`, in one transaction. Returns the request and, with `suppress`, the new
/// suppression epoch.
pub async fn create_erasure(
    db: &Db,
    app_id: &str,
    user_ids: &[String],
    suppress: bool,
) -> Result<(Erasure, Option<i64>), DbError> {
    let new = NewErasure {
        id: Uuid::now_v7(),
        app: app_id.to_owned(),
        digests: user_ids
            .iter()
            .map(|u| user_digest(app_id, u).to_vec())
            .collect(),
        ids: user_ids.to_vec(),
        suppress,
    };
    db.transaction("record erasure request", move |tx| {
        Box::pin(async move {
            let erasure = new.insert(tx).await?;
            let epoch = if new.suppress {
                Some(new.suppress_users(tx).await?)
            } else {
                None
            };
            Ok((erasure, epoch))
        })
    })
    .await
}

/// A request being recorded.
struct NewErasure {
    id: Uuid,
    app: String,
    /// The users' digests, in the order of `ids`.
    digests: Vec<Vec<u8>>,
    ids: Vec<String>,
    suppress: bool,
}

impl NewErasure {
    /// The request's row and its users' rows.
    async fn insert(&self, tx: &Transaction<'_>) -> Result<Erasure, DbError> {
        let users = self.ids.len() as i32;
        let row = tx
            .query_one(
                &format!(
                    "INSERT INTO erasures (erasure_id, app_id, suppress, users) \
                     VALUES ($1, $2, $3, $4) RETURNING {ERASURE_COLUMNS}"
                ),
                &[&self.id, &self.app, &self.suppress, &users],
            )
            .await
            .map_err(DbError::query("insert erasure"))?;
        tx.execute(
            "INSERT INTO erasure_users (erasure_id, user_hash, user_id) \
             SELECT $1, h, u FROM unnest($2::bytea[], $3::text[]) AS t (h, u)",
            &[&self.id, &self.digests, &self.ids],
        )
        .await
        .map_err(DbError::query("insert erasure users"))?;
        Ok(Erasure::from_row(&row))
    }

    /// The users in the app's suppression list; the app's new suppression epoch.
    async fn suppress_users(&self, tx: &Transaction<'_>) -> Result<i64, DbError> {
        tx.execute(
            "INSERT INTO suppressed_users (app_id, user_hash, erasure_id) \
             SELECT $1, h, $2 FROM unnest($3::bytea[]) AS h ON CONFLICT DO NOTHING",
            &[&self.app, &self.id, &self.digests],
        )
        .await
        .map_err(DbError::query("insert suppressions"))?;
        let r = tx
            .query_one(
                "INSERT INTO privacy_epochs (app_id, suppressions) VALUES ($1, 1) \
                 ON CONFLICT (app_id) DO UPDATE \
                 SET suppressions = privacy_epochs.suppressions + 1 \
                 RETURNING suppressions",
                &[&self.app],
            )
            .await
            .map_err(DbError::query("bump suppression epoch"))?;
        Ok(r.get(0))
    }
}

/// One request of `app_id` (another app's id reads as none).
pub async fn get_erasure(db: &Db, app_id: &str, id: Uuid) -> Result<Option<Erasure>, DbError> {
    let filter = "erasure_id = $1 AND app_id = $2";
    let found = select(db, "read erasure", filter, &[&id, &app_id]).await?;
    Ok(found.into_iter().next())
}

/// An app's requests, oldest first.
pub async fn list_erasures(db: &Db, app_id: &str) -> Result<Vec<Erasure>, DbError> {
    let filter = "app_id = $1 ORDER BY requested_at";
    select(db, "list erasures", filter, &[&app_id]).await
}

/// The requests `filter` (a `WHERE` condition and what may follow it) selects.
async fn select(
    db: &Db,
    op: &'static str,
    filter: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<Vec<Erasure>, DbError> {
    let sql = format!("SELECT {ERASURE_COLUMNS} FROM erasures WHERE {filter}");
    let rows = db.query(op, &sql, params).await?;
    Ok(rows.iter().map(Erasure::from_row).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("user-{i}")).collect()
    }

    #[test]
    fn a_request_names_one_to_a_thousand_users() {
        assert!(check_user_ids(&[]).is_err());
        assert_eq!(check_user_ids(&ids(1)).map(|v| v.len()), Ok(1));
        assert_eq!(check_user_ids(&ids(1000)).map(|v| v.len()), Ok(1000));
        let err = check_user_ids(&ids(1001)).expect_err("1001");
        assert!(err.contains("at most 1000"), "{err}");
    }

    #[test]
    fn each_id_is_checked_and_duplicates_count_once() {
        assert!(check_user_ids(&["".into()]).is_err());
        assert!(check_user_ids(&["a\0b".into()]).is_err());
        assert!(check_user_ids(&["x".repeat(MAX_ID_BYTES)]).is_ok());
        assert!(check_user_ids(&["x".repeat(MAX_ID_BYTES + 1)]).is_err());
        let twice = vec!["a".to_owned(), "b".to_owned(), "a".to_owned()];
        assert_eq!(check_user_ids(&twice), Ok(vec!["a".into(), "b".into()]));
    }
}
