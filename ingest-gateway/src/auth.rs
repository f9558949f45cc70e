//! API key authentication from an in-memory cache of key digests, reloaded from PostgreSQL every
//! `KEY_REFRESH_MS`: a request costs no database round trip, and a revoked (or new) key takes
//! effect within the refresh interval. While the database is unreachable the last good cache
//! stays in use.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use http::HeaderMap;
use shared::db::{Db, DbError};
use subtle::ConstantTimeEq;

use crate::apps::{hash_key, KeyKind};

/// What a valid key grants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub app_id: Arc<str>,
    pub kind: KeyKind,
    /// The app's own rate limit, overriding the global one; `Some(0)` means unlimited.
    pub rate_limit: Option<u32>,
}

/// Live keys by the SHA-256 digest of the clear key.
type KeyMap = HashMap<[u8; 32], Grant>;

#[derive(Clone)]
pub struct KeyCache {
    keys: Arc<RwLock<Arc<KeyMap>>>,
}

impl KeyCache {
    /// Loads every live key once; fails when the database cannot be read.
    pub async fn load(db: &Db) -> Result<Self, DbError> {
        let cache = Self {
            keys: Arc::new(RwLock::new(Arc::new(HashMap::new()))),
        };
        cache.reload(db).await?;
        Ok(cache)
    }

    pub async fn reload(&self, db: &Db) -> Result<usize, DbError> {
        let rows = db
            .query(
                "load api keys",
                "SELECT k.key_hash, k.app_id, k.kind, a.rate_limit_events_per_sec \
                 FROM api_keys k JOIN apps a USING (app_id) WHERE k.revoked_at IS NULL",
                &[],
            )
            .await?;
        let mut map = HashMap::with_capacity(rows.len());
        for row in rows {
            let hash: Vec<u8> = row.get(0);
            let Ok(hash) = <[u8; 32]>::try_from(hash.as_slice()) else {
                continue;
            };
            let Some(kind) = KeyKind::parse(row.get(2)) else {
                continue;
            };
            let app: String = row.get(1);
            let limit: Option<i32> = row.get(3);
            map.insert(
                hash,
                Grant {
                    app_id: app.into(),
                    kind,
                    rate_limit: limit.map(|l| l.max(0) as u32),
                },
            );
        }
        let n = map.len();
        *self.keys.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(map);
        Ok(n)
    }

    /// Reloads every `every` until `stop`.
    pub fn spawn_refresh(&self, db: Db, every: Duration, tasks: &shared::tasks::Tasks) {
        let cache = self.clone();
        let stop = tasks.stop_token();
        tasks.spawn("key_refresh", shared::shutdown::every(every, stop, move || {
            let (cache, db) = (cache.clone(), db.clone());
            async move {
                if let Err(e) = cache.reload(&db).await {
                    tracing::warn!(error = %e, "Cannot reload API keys; keeping the last ones.");
                }
            }
        }));
    }

    /// The grant of `key`, if it is a live key. The digest is looked up, then compared in
    /// constant time, so timing says nothing about the clear key.
    pub fn check(&self, key: &str) -> Option<Grant> {
        let digest = hash_key(key);
        let keys = self.keys.read().unwrap_or_else(|p| p.into_inner()).clone();
        keys.get_key_value(&digest)
            .filter(|(stored, _)| bool::from(stored.ct_eq(&digest)))
            .map(|(_, g)| g.clone())
    }
}

/// The key a request carries: `Authorization: Bearer`, `X-API-Key`, or `?api_key=`.
pub fn presented_key<'a>(headers: &'a HeaderMap, query: Option<&'a str>) -> Option<&'a str> {
    if let Some(v) = headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    {
        let v = v.trim();
        if v.len() > 7 && v[..7].eq_ignore_ascii_case("bearer ") {
            return Some(v[7..].trim());
        }
    }
    if let Some(v) = headers.get("x-api-key").and_then(|v| v.to_str().ok()) {
        return Some(v.trim());
    }
    query?
        .split('&')
        .find_map(|kv| kv.strip_prefix("api_key="))
        .filter(|k| !k.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_come_from_any_of_the_three_places() {
        let mut h = HeaderMap::new();
        assert_eq!(presented_key(&h, None), None);
        assert_eq!(presented_key(&h, Some("a=1&api_key=k1")), Some("k1"));
        assert_eq!(presented_key(&h, Some("api_key=")), None);
        h.insert("x-api-key", "k2".parse().expect("hv"));
        assert_eq!(presented_key(&h, Some("api_key=k1")), Some("k2"));
        h.insert(
            http::header::AUTHORIZATION,
            "Bearer k3".parse().expect("hv"),
        );
        assert_eq!(presented_key(&h, None), Some("k3"));
        h.insert(
            http::header::AUTHORIZATION,
            "Basic zzz".parse().expect("hv"),
        );
        assert_eq!(presented_key(&h, None), Some("k2"));
    }
}
