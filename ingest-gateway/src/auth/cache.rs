//! The in-memory key cache: live keys by digest, recent misses, the lookup budget, and the
//! revisions that keep a read older than a key's latest notification from caching it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use shared::db::{Db, DbError};
use subtle::ConstantTimeEq;

use super::{Grant, KeyCheck, LOOKUPS_PER_SEC, LOOKUP_TIMEOUT, MAX_MISSES, MISS_TTL};
use crate::apps::{hash_key, KeyKind};

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

    /// Re-reads every live key (on the primary); the number loaded.
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
        self.drop_notified_since(&mut map, started);
        let n = map.len();
        *keys = Arc::new(map);
        shared::metrics::key_reload();
        Ok(n)
    }

    /// Keys notified since revision `started` may have changed after a read that started then:
    /// left out, so the next request looks them up afresh.
    fn drop_notified_since(&self, map: &mut KeyMap, started: u64) {
        let notified = self.notified.lock().unwrap_or_else(|p| p.into_inner());
        for (digest, rev) in notified.iter() {
            if *rev > started {
                map.remove(digest);
            }
        }
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

    /// A notification: re-read the key whose digest (hex) it carries.
    pub(super) async fn changed(&self, db: &Db, payload: &str) {
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
