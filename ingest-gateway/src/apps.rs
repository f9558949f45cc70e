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
}

impl KeyKind {
    pub fn as_str(self) -> &'static str {
        match self {
            KeyKind::Ingest => "ingest",
            KeyKind::Read => "read",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "ingest" => Some(KeyKind::Ingest),
            "read" => Some(KeyKind::Read),
            _ => None,
        }
    }

    fn prefix(self) -> &'static str {
        match self {
            KeyKind::Ingest => "sk_ingest_",
            KeyKind::Read => "sk_read_",
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
    let (app_id, app_name) = (app.app_id.clone(), app.name.clone());
    let keys = [
        (
            hash_key(&app.ingest_key).to_vec(),
            KeyKind::Ingest,
            key_prefix(&app.ingest_key),
        ),
        (
            hash_key(&app.read_key).to_vec(),
            KeyKind::Read,
            key_prefix(&app.read_key),
        ),
    ];
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
    .await?;
    Ok(app)
}

/// Revokes one key; it stops working within the gateway's key refresh interval.
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
    }
}
