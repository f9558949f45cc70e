//! API key authentication. Live keys are held in memory by the SHA-256 digest of the key, so a
//! request with a known key costs no database round trip. The cache follows the key table three
//! ways:
//! - pushed changes: a trigger on `api_keys` sends `NOTIFY sluice_api_keys` with the key's digest
//!   when a change commits; every gateway LISTENs (a session of its own on the primary) and
//!   re-reads that one key, so a revocation takes effect within milliseconds;
//! - a key the cache does not know is looked up once on the primary (a key created a moment ago,
//!   before its notification arrived, works at once); "unknown" and "revoked" answers are kept
//!   for [`MISS_TTL`] in a bounded map, keys not shaped like Sluice keys are never looked up, and
//!   lookups are limited to [`LOOKUPS_PER_SEC`], so a flood of bad keys costs bounded database
//!   load;
//! - the whole table is re-read every `KEY_REFRESH_MS` (and after the listening session
//!   reconnects) as a safety net.
//!
//! Everything is read on the primary (a replica may lag a revocation). A notification bumps a
//! revision and records it for its key; a reload or lookup that started before a key's latest
//! notification does not cache what it read of that key, so a revoked key is never put back.
//! While the database is unreachable the last good cache stays in use.
//!
//! Here: a request's key (where it is, what it grants). `cache.rs`: the key cache. `listen.rs`:
//! the key-change session.

mod cache;
mod listen;

use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, Request};
use hyper::body::Incoming;

use crate::apps::KeyKind;
use crate::error::ApiError;
use crate::routes::AppState;

pub use cache::KeyCache;
pub use listen::LISTEN_PING;

/// What a valid key grants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub app_id: Arc<str>,
    pub kind: KeyKind,
    /// The app's own rate limit, overriding the global one; `Some(0)` means unlimited.
    pub rate_limit: Option<u32>,
}

/// What a presented key is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyCheck {
    Live(Grant),
    /// No such key (or not one the gateway could look up just now).
    Unknown,
    Revoked,
    /// Not in the cache, and the lookup budget is spent: try again in a second.
    Busy,
}

/// The NOTIFY channel of key changes (see migration 5).
pub const CHANNEL: &str = "sluice_api_keys";

/// How long an "unknown" or "revoked" answer is reused.
pub const MISS_TTL: Duration = Duration::from_secs(2);

/// At most this many answers are kept; past it, expired ones go, then all.
pub const MAX_MISSES: usize = 10_000;

/// Database lookups of keys the cache does not know, per second and gateway, at most.
pub const LOOKUPS_PER_SEC: u32 = 20;

/// How long a request waits for its key's lookup (a connection to the primary may have to be
/// opened first) before it is answered 503.
pub const LOOKUP_TIMEOUT: Duration = Duration::from_secs(3);

/// The app behind the request's key, which must be of kind `want`.
pub async fn authenticate(
    state: &AppState,
    req: &Request<Incoming>,
    want: KeyKind,
) -> Result<Grant, ApiError> {
    let key = presented_key(req.headers(), req.uri().query()).ok_or(ApiError::MissingKey)?;
    grant_for(state, key, want).await
}

/// The app behind `key`, which must be of kind `want`.
pub async fn grant_for(state: &AppState, key: &str, want: KeyKind) -> Result<Grant, ApiError> {
    let grant = match state.keys.check(&state.pools.write, key).await {
        Ok(KeyCheck::Live(g)) => g,
        Ok(KeyCheck::Unknown) => return Err(ApiError::UnknownKey),
        Ok(KeyCheck::Revoked) => return Err(ApiError::RevokedKey),
        Ok(KeyCheck::Busy) => return Err(ApiError::KeyLookupBusy),
        Err(e) => {
            tracing::warn!(error = %e, "Cannot look an API key up.");
            return Err(ApiError::DbUnavailable);
        }
    };
    match (want, grant.kind) {
        (want, kind) if want == kind => Ok(grant),
        (_, KeyKind::Admin) => Err(ApiError::AdminKeyCannotIngestOrRead),
        (KeyKind::Admin, _) => Err(ApiError::AdminKeyRequired),
        (KeyKind::Ingest, _) => Err(ApiError::ReadKeyCannotIngest),
        (KeyKind::Read, _) => Err(ApiError::IngestKeyCannotRead),
    }
}

/// The key a request carries: `Authorization: Bearer`, `X-API-Key`, or `?api_key=`.
pub fn presented_key<'a>(headers: &'a HeaderMap, query: Option<&'a str>) -> Option<&'a str> {
    if let Some(k) = bearer(headers) {
        return Some(k);
    }
    if let Some(v) = headers.get("x-api-key").and_then(|v| v.to_str().ok()) {
        return Some(v.trim());
    }
    query?
        .split('&')
        .find_map(|kv| kv.strip_prefix("api_key="))
        .filter(|k| !k.is_empty())
}

/// The token of `Authorization: Bearer <token>`.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = headers
        .get(http::header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .trim();
    (v.len() > 7 && v[..7].eq_ignore_ascii_case("bearer ")).then(|| v[7..].trim())
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
