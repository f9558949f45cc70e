//! Apps and their API keys: creation, revocation and key hashing. Keys are random, shown once,
//! and stored only as SHA-256 digests.

use serde::Serialize;
use sha2::{Digest, Sha256};
use shared::db::{Db, DbError};

/// What a key allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyKind {
    Ingest,
    Read,
    /// Privacy administration (erasure requests) only: never accepted for ingest or reads.
    Admin,
}

impl KeyKind {
    pub fn as_str(self) -> &'static str {
        match self {
            KeyKind::Ingest => "ingest",
            KeyKind::Read => "read",
            KeyKind::Admin => "admin",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "ingest" => Some(KeyKind::Ingest),
            "read" => Some(KeyKind::Read),
            "admin" => Some(KeyKind::Admin),
            _ => None,
        }
    }

    /// The kind of a key shaped as this build makes them (its prefix, then 64 hex digits);
    /// `None` for anything else, which is never looked up.
    pub fn of_key(key: &str) -> Option<Self> {
        [KeyKind::Ingest, KeyKind::Read, KeyKind::Admin]
            .into_iter()
            .find(|k| {
                key.strip_prefix(k.prefix()).is_some_and(|rest| {
                    rest.len() == 64 && rest.bytes().all(|b| b.is_ascii_hexdigit())
                })
            })
    }

    fn prefix(self) -> &'static str {
        match self {
            KeyKind::Ingest => "sk_ingest_",
            KeyKind::Read => "sk_read_",
            KeyKind::Admin => "sk_admin_",
        }
    }
}

/// The answer of `apps create`: the only time the clear keys are shown.
#[derive(Debug, Serialize)]
pub struct CreatedApp {
    pub app_id: String,
    pub name: String,
    pub ingest_key: String,
    pub read_key: String,
}

/// SHA-256 of a key: what is stored and looked up.
pub fn hash_key(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

/// A new random key of `kind`: 32 random bytes, hex.
pub fn new_key(kind: KeyKind) -> String {
    let bytes: [u8; 32] = rand::random();
    format!("{}{}", kind.prefix(), hex::encode(bytes))
}

/// Why an app or key command failed.
#[derive(Debug, thiserror::Error)]
pub enum AppsError {
    #[error("app name must be 1 to 200 bytes")]
    BadName,
    #[error("no such key, or it was already revoked")]
    UnknownKey,
    #[error("no app {0}")]
    UnknownApp(String),
    #[error(transparent)]
    Db(#[from] DbError),
}

/// Creates an app with one ingest key and one read key.
pub async fn create_app(db: &Db, name: &str) -> Result<CreatedApp, AppsError> {
    if name.is_empty() || name.len() > 200 || name.chars().any(char::is_control) {
        return Err(AppsError::BadName);
    }
    let app = CreatedApp {
        app_id: format!("app_{}", uuid::Uuid::now_v7().simple()),
        name: name.to_owned(),
        ingest_key: new_key(KeyKind::Ingest),
        read_key: new_key(KeyKind::Read),
    };
    insert_app(db, &app).await?;
    Ok(app)
}

/// The app's row and its two keys' rows, in one transaction.
async fn insert_app(db: &Db, app: &CreatedApp) -> Result<(), DbError> {
    let (app_id, app_name) = (app.app_id.clone(), app.name.clone());
    let keys = [
        (&app.ingest_key, KeyKind::Ingest),
        (&app.read_key, KeyKind::Read),
    ]
    .map(|(key, kind)| (hash_key(key).to_vec(), kind, key_prefix(key)));
    db.transaction("create app", move |tx| {
        Box::pin(async move {
            tx.execute(
                "INSERT INTO apps (app_id, name) VALUES ($1, $2)",
                &[&app_id, &app_name],
            )
            .await
            .map_err(DbError::query("insert app"))?;
            for (hash, kind, prefix) in &keys {
                tx.execute(
                    "INSERT INTO api_keys (key_hash, app_id, kind, key_prefix) VALUES ($1, $2, $3, $4)",
                    &[hash, &app_id, &kind.as_str(), prefix],
                )
                .await
                .map_err(DbError::query("insert key"))?;
            }
            Ok(())
        })
    })
    .await
}

/// One app as `apps list` shows it.
#[derive(Debug, Serialize)]
pub struct AppInfo {
    pub app_id: String,
    pub name: String,
    /// `null`: the global `RATE_LIMIT_EVENTS_PER_SEC`; 0: unlimited.
    pub rate_limit_events_per_sec: Option<i32>,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub live_keys: i64,
}

/// Every app, oldest first.
pub async fn list_apps(db: &Db) -> Result<Vec<AppInfo>, AppsError> {
    let rows = db
        .query(
            "list apps",
            "SELECT a.app_id, a.name, a.rate_limit_events_per_sec, a.created_at, \
             count(k.key_hash) FILTER (WHERE k.revoked_at IS NULL) \
             FROM apps a LEFT JOIN api_keys k USING (app_id) \
             GROUP BY a.app_id ORDER BY a.created_at, a.app_id",
            &[],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| AppInfo {
            app_id: r.get(0),
            name: r.get(1),
            rate_limit_events_per_sec: r.get(2),
            created_at: r.get(3),
            live_keys: r.get(4),
        })
        .collect())
}

/// The answer of `keys create`: the only time the clear key is shown.
#[derive(Debug, Serialize)]
pub struct CreatedKey {
    pub app_id: String,
    pub kind: KeyKind,
    pub key: String,
    pub key_prefix: String,
}

/// Adds a key of `kind` to `app_id` (for rotation: create, deploy, revoke the old). It works on
/// every gateway as soon as this returns.
pub async fn create_key(db: &Db, app_id: &str, kind: KeyKind) -> Result<CreatedKey, AppsError> {
    let key = new_key(kind);
    let prefix = key_prefix(&key);
    let n = db
        .execute(
            "insert key",
            "INSERT INTO api_keys (key_hash, app_id, kind, key_prefix) \
             SELECT $1, app_id, $3, $4 FROM apps WHERE app_id = $2",
            &[&hash_key(&key).to_vec(), &app_id, &kind.as_str(), &prefix],
        )
        .await?;
    if n == 0 {
        return Err(AppsError::UnknownApp(app_id.to_owned()));
    }
    Ok(CreatedKey {
        app_id: app_id.to_owned(),
        kind,
        key,
        key_prefix: prefix,
    })
}

/// One key as `keys list` shows it: never the key itself.
#[derive(Debug, Serialize)]
pub struct KeyInfo {
    pub key_prefix: String,
    pub kind: String,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub revoked_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// Whether `app_id` names an app.
pub async fn app_exists(db: &Db, app_id: &str) -> Result<bool, AppsError> {
    let rows = db
        .query(
            "find app",
            "SELECT 1 FROM apps WHERE app_id = $1",
            &[&app_id],
        )
        .await?;
    Ok(!rows.is_empty())
}

/// The keys of `app_id`, oldest first.
pub async fn list_keys(db: &Db, app_id: &str) -> Result<Vec<KeyInfo>, AppsError> {
    if !app_exists(db, app_id).await? {
        return Err(AppsError::UnknownApp(app_id.to_owned()));
    }
    let rows = db
        .query(
            "list keys",
            "SELECT key_prefix, kind, created_at, revoked_at FROM api_keys \
             WHERE app_id = $1 ORDER BY created_at, key_prefix",
            &[&app_id],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| KeyInfo {
            key_prefix: r.get(0),
            kind: r.get(1),
            created_at: r.get(2),
            revoked_at: r.get(3),
        })
        .collect())
}

/// Revokes one key; it stops working on every gateway within a second (pushed by NOTIFY).
pub async fn revoke_key(db: &Db, key: &str) -> Result<(), AppsError> {
    let n = db
        .execute(
            "revoke key",
            "UPDATE api_keys SET revoked_at = now() WHERE key_hash = $1 AND revoked_at IS NULL",
            &[&hash_key(key.trim()).to_vec()],
        )
        .await?;
    if n == 0 {
        return Err(AppsError::UnknownKey);
    }
    Ok(())
}

fn key_prefix(key: &str) -> String {
    key.chars().take(16).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_random_prefixed_and_hash_stably() {
        let a = new_key(KeyKind::Ingest);
        let b = new_key(KeyKind::Ingest);
        assert!(a.starts_with("sk_ingest_") && a.len() == 10 + 64);
        assert!(new_key(KeyKind::Read).starts_with("sk_read_"));
        assert_ne!(a, b);
        assert_eq!(hash_key(&a), hash_key(&a));
        assert_ne!(hash_key(&a), hash_key(&b));
        assert_eq!(KeyKind::of_key(&a), Some(KeyKind::Ingest));
        assert_eq!(
            KeyKind::of_key(&new_key(KeyKind::Read)),
            Some(KeyKind::Read)
        );
        assert_eq!(KeyKind::of_key("sk_ingest_nothex"), None);
        assert_eq!(KeyKind::of_key(&a[..a.len() - 1]), None);
        assert_eq!(KeyKind::of_key(&format!("{a}0")), None);
        assert_eq!(KeyKind::of_key("sk_read_"), None);
    }
}
