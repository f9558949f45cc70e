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

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use http::HeaderMap;
use shared::config::DbConfig;
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

/// How often the listening session is checked (a half-open connection would lose notifications
/// silently until TCP keepalives noticed).
pub const LISTEN_PING: Duration = Duration::from_secs(10);

/// Live keys by the SHA-256 digest of the clear key.
type KeyMap = HashMap<[u8; 32], Grant>;

/// Recent "unknown" and "revoked" answers by digest, with when they were found.
type MissMap = HashMap<[u8; 32], (Instant, Miss)>;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Miss {
    Unknown,
    Revoked,
}

#[derive(Clone)]
pub struct KeyCache {
    keys: Arc<RwLock<Arc<KeyMap>>>,
    misses: Arc<Mutex<MissMap>>,
    /// The current second's start and the lookups made in it.
    budget: Arc<Mutex<(Instant, u32)>>,
    /// Bumped by each key-change notification.
    revision: Arc<AtomicU64>,
    /// The revision of each key's latest notification (bounded: the oldest go first).
    notified: Arc<Mutex<HashMap<[u8; 32], u64>>>,
}

const KEY_QUERY: &str = "SELECT k.key_hash, k.app_id, k.kind, a.rate_limit_events_per_sec, \
     k.revoked_at IS NOT NULL FROM api_keys k JOIN apps a USING (app_id)";

impl KeyCache {
    /// Loads every live key once; fails when the database cannot be read.
    pub async fn load(db: &Db) -> Result<Self, DbError> {
        let cache = Self {
            keys: Arc::new(RwLock::new(Arc::new(HashMap::new()))),
            misses: Arc::default(),
            budget: Arc::new(Mutex::new((Instant::now(), 0))),
            revision: Arc::default(),
            notified: Arc::default(),
        };
        cache.reload(db).await?;
        Ok(cache)
    }

    pub async fn reload(&self, db: &Db) -> Result<usize, DbError> {
        let started = self.revision.load(Ordering::SeqCst);
        let rows = db
            .query(
                "load api keys",
                &format!("{KEY_QUERY} WHERE k.revoked_at IS NULL"),
                &[],
            )
            .await?;
        let mut map: KeyMap = rows.iter().filter_map(parse_row).collect();
        let mut keys = self.keys.write().unwrap_or_else(|p| p.into_inner());
        // Keys notified while this read ran may have changed after it: left out, so the next
        // request looks them up afresh.
        for (digest, rev) in self
            .notified
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            if *rev > started {
                map.remove(digest);
            }
        }
        let n = map.len();
        *keys = Arc::new(map);
        shared::metrics::key_reload();
        Ok(n)
    }

    /// Reloads every `every` until the tasks stop.
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

    /// Listens for key changes on the primary and applies each (looking the key up on
    /// `primary`); checks the session every [`LISTEN_PING`], and reconnects with backoff when
    /// it ends, reloading everything then.
    pub fn spawn_listen(
        &self,
        config: DbConfig,
        primary: Db,
        privacy: Arc<crate::privacy::Privacy>,
        tasks: &shared::tasks::Tasks,
    ) {
        let cache = self.clone();
        let stop = tasks.stop_token();
        tasks.spawn("key_notifications", async move {
            let mut pg = shared::db::pg_config(&config.primary, &config);
            pg.application_name("sluice-gateway-listen");
            let mut backoff = shared::retry::Backoff::standard();
            while !stop.is_cancelled() {
                let channels = [CHANNEL, crate::privacy::CHANNEL];
                match shared::db::listen(&pg, &config, &channels).await {
                    Ok((session, mut changes)) => {
                        backoff.reset();
                        if let Err(e) = cache.reload(&primary).await {
                            tracing::warn!(error = %e, "Cannot reload API keys after listening again.");
                        }
                        privacy.refresh_logged(&primary).await;
                        let mut ping = tokio::time::interval(LISTEN_PING);
                        ping.tick().await;
                        loop {
                            tokio::select! {
                                n = changes.recv() => match n {
                                    Some(n) if n.channel() == CHANNEL => {
                                        cache.changed(&primary, n.payload()).await
                                    }
                                    Some(_) => privacy.refresh_logged(&primary).await,
                                    None => break,
                                },
                                _ = ping.tick() => {
                                    let alive = tokio::time::timeout(
                                        Duration::from_secs(5),
                                        session.simple_query("SELECT 1"),
                                    )
                                    .await
                                    .is_ok_and(|r| r.is_ok());
                                    if !alive {
                                        break;
                                    }
                                }
                                _ = stop.cancelled() => return,
                            }
                        }
                        tracing::warn!("Lost the key-change session; listening again.");
                    }
                    Err(e) => {
                        let sqlstate = e.sql_state().unwrap_or("unreachable");
                        shared::metrics::db_connect_error("listen", sqlstate.to_owned());
                        tracing::warn!(sqlstate, error = %e, "Cannot listen for key changes; retrying.")
                    }
                }
                if !backoff.wait(&stop).await {
                    return;
                }
            }
        });
    }

    /// A notification: re-read the key whose digest (hex) it carries.
    async fn changed(&self, db: &Db, payload: &str) {
        let Some(digest) = hex::decode(payload)
            .ok()
            .and_then(|d| <[u8; 32]>::try_from(d.as_slice()).ok())
        else {
            return;
        };
        let rev = self.revision.fetch_add(1, Ordering::SeqCst) + 1;
        {
            let mut notified = self.notified.lock().unwrap_or_else(|p| p.into_inner());
            if notified.len() >= MAX_MISSES {
                let floor = rev.saturating_sub(MAX_MISSES as u64 / 2);
                notified.retain(|_, r| *r >= floor);
            }
            notified.insert(digest, rev);
        }
        if let Err(e) = self.look_up(db, digest).await {
            // Unknown state: forget the key, the next request looks it up again.
            tracing::warn!(error = %e, "Cannot re-read a changed API key; dropping it from the cache.");
            self.forget(&digest);
        }
    }

    /// What `key` is. A key the cache does not know is looked up on `db` (the primary) within
    /// the lookup budget and [`LOOKUP_TIMEOUT`]; `Err` only when that lookup failed.
    pub async fn check(&self, db: &Db, key: &str) -> Result<KeyCheck, DbError> {
        let digest = hash_key(key);
        if let Some(g) = self.live(&digest) {
            return Ok(KeyCheck::Live(g));
        }
        if KeyKind::of_key(key).is_none() {
            return Ok(KeyCheck::Unknown);
        }
        if let Some(m) = self.cached_miss(&digest) {
            return Ok(m);
        }
        if !self.take_budget() {
            shared::metrics::key_lookup("over_budget");
            return Ok(KeyCheck::Busy);
        }
        tokio::time::timeout(LOOKUP_TIMEOUT, self.look_up(db, digest))
            .await
            .unwrap_or(Err(DbError::Timeout {
                op: "look up api key",
                timeout: LOOKUP_TIMEOUT,
            }))
    }

    /// The grant of a live key in the cache. The digest is looked up, then compared in constant
    /// time, so timing says nothing about the clear key.
    fn live(&self, digest: &[u8; 32]) -> Option<Grant> {
        let keys = self.keys.read().unwrap_or_else(|p| p.into_inner()).clone();
        keys.get_key_value(digest)
            .filter(|(stored, _)| bool::from(stored.ct_eq(digest)))
            .map(|(_, g)| g.clone())
    }

    fn cached_miss(&self, digest: &[u8; 32]) -> Option<KeyCheck> {
        let misses = self.misses.lock().unwrap_or_else(|p| p.into_inner());
        let (at, m) = misses.get(digest)?;
        (at.elapsed() < MISS_TTL).then_some(match m {
            Miss::Unknown => KeyCheck::Unknown,
            Miss::Revoked => KeyCheck::Revoked,
        })
    }

    fn take_budget(&self) -> bool {
        let mut b = self.budget.lock().unwrap_or_else(|p| p.into_inner());
        if b.0.elapsed() >= Duration::from_secs(1) {
            *b = (Instant::now(), 0);
        }
        if b.1 >= LOOKUPS_PER_SEC {
            return false;
        }
        b.1 += 1;
        true
    }

    /// Reads one key from `db` and records what it is.
    async fn look_up(&self, db: &Db, digest: [u8; 32]) -> Result<KeyCheck, DbError> {
        let started = self.revision.load(Ordering::SeqCst);
        let rows = db
            .query(
                "look up api key",
                &format!("{KEY_QUERY} WHERE k.key_hash = $1"),
                &[&digest.as_slice()],
            )
            .await?;
        let found = rows.first().map(|r| (parse_row(r), r.get::<_, bool>(4)));
        let check = match found {
            Some((Some((_, grant)), false)) => KeyCheck::Live(grant),
            Some((_, true)) => KeyCheck::Revoked,
            _ => KeyCheck::Unknown,
        };
        shared::metrics::key_lookup(match check {
            KeyCheck::Live(_) => "live",
            KeyCheck::Unknown => "unknown",
            KeyCheck::Revoked => "revoked",
            KeyCheck::Busy => "over_budget",
        });
        self.record(digest, &check, started);
        Ok(check)
    }

    /// Caches what a read that started at revision `started` found, unless the key was notified
    /// since (then what was read may be stale).
    fn record(&self, digest: [u8; 32], check: &KeyCheck, started: u64) {
        let miss = match check {
            KeyCheck::Live(g) => {
                let mut keys = self.keys.write().unwrap_or_else(|p| p.into_inner());
                if self.changed_since(&digest, started) {
                    return;
                }
                let mut map = (**keys).clone();
                map.insert(digest, g.clone());
                *keys = Arc::new(map);
                self.misses
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&digest);
                return;
            }
            KeyCheck::Unknown => Miss::Unknown,
            KeyCheck::Revoked => Miss::Revoked,
            KeyCheck::Busy => return,
        };
        self.forget(&digest);
        if self.changed_since(&digest, started) {
            return;
        }
        let mut misses = self.misses.lock().unwrap_or_else(|p| p.into_inner());
        if misses.len() >= MAX_MISSES {
            misses.retain(|_, (at, _)| at.elapsed() < MISS_TTL);
            if misses.len() >= MAX_MISSES {
                misses.clear();
            }
        }
        misses.insert(digest, (Instant::now(), miss));
    }

    fn changed_since(&self, digest: &[u8; 32], started: u64) -> bool {
        self.notified
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(digest)
            .is_some_and(|rev| *rev > started)
    }

    fn forget(&self, digest: &[u8; 32]) {
        let mut keys = self.keys.write().unwrap_or_else(|p| p.into_inner());
        if keys.contains_key(digest) {
            let mut map = (**keys).clone();
            map.remove(digest);
            *keys = Arc::new(map);
        }
    }
}

/// A key row as a cache entry; `None` for a row this build cannot use.
fn parse_row(row: &tokio_postgres::Row) -> Option<([u8; 32], Grant)> {
    let hash: Vec<u8> = row.get(0);
    let hash = <[u8; 32]>::try_from(hash.as_slice()).ok()?;
    let kind = KeyKind::parse(row.get(2))?;
    let app: String = row.get(1);
    let limit: Option<i32> = row.get(3);
    Some((
        hash,
        Grant {
            app_id: app.into(),
            kind,
            rate_limit: limit.map(|l| l.max(0) as u32),
        },
    ))
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
