//! The suppression lists and erasure generations every gateway holds in memory: read from
//! `privacy_epochs` and `suppressed_users` (on a notification, by the poll, after the listening
//! session reconnects), applied to each request's events before they are queued.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use shared::db::{Db, DbError};
use shared::privacy::user_digest;
use shared::queue::QueuedEvent;

/// What one app's privacy state is on this gateway.
#[derive(Default, Clone)]
struct AppPrivacy {
    /// `privacy_epochs.suppressions` of the snapshot `suppressed` was read from.
    suppressions: i64,
    erasures_done: i64,
    suppressed: Arc<HashSet<[u8; 32]>>,
    /// Digests this gateway committed itself, with their epoch, not yet in a snapshot read
    /// since: a re-read of an older snapshot keeps them.
    local: Vec<(i64, [u8; 32])>,
}

impl AppPrivacy {
    /// The list as read at `epoch`, if newer than what is held, plus the digests committed here
    /// after that snapshot.
    fn apply_snapshot(&mut self, epoch: i64, mut set: HashSet<[u8; 32]>) {
        if epoch <= self.suppressions {
            return;
        }
        self.local.retain(|(e, _)| *e > epoch);
        set.extend(self.local.iter().map(|(_, d)| *d));
        self.suppressions = epoch;
        self.suppressed = Arc::new(set);
    }
}

/// Every app's suppression list and erasure generation, as last read.
pub struct Privacy {
    apps: RwLock<HashMap<String, AppPrivacy>>,
    /// Where the answers a finished erasure retired are deleted.
    cache: Option<Arc<crate::cache::Cache>>,
}

impl Privacy {
    /// The lists of every app, empty until [`Privacy::refresh`]; retired answers are deleted
    /// from `cache`.
    pub fn new(cache: Option<Arc<crate::cache::Cache>>) -> Self {
        Self {
            apps: RwLock::default(),
            cache,
        }
    }

    /// The app's suppressed user digests, when it has any.
    fn suppressed(&self, app_id: &str) -> Option<Arc<HashSet<[u8; 32]>>> {
        let apps = self.apps.read().unwrap_or_else(|p| p.into_inner());
        apps.get(app_id)
            .filter(|a| !a.suppressed.is_empty())
            .map(|a| a.suppressed.clone())
    }

    /// How many erasures of the app have finished: part of its read cache keys.
    pub fn generation(&self, app_id: &str) -> i64 {
        let apps = self.apps.read().unwrap_or_else(|p| p.into_inner());
        apps.get(app_id).map_or(0, |a| a.erasures_done)
    }

    /// The events of `events` whose user is not suppressed, and how many were dropped. Borrows
    /// when nothing is dropped (the common case costs one map lookup per request).
    pub fn without_suppressed<'e>(
        &self,
        app_id: &str,
        events: &'e [QueuedEvent],
    ) -> (Cow<'e, [QueuedEvent]>, usize) {
        let Some(list) = self.suppressed(app_id) else {
            return (Cow::Borrowed(events), 0);
        };
        let is_suppressed = |e: &QueuedEvent| {
            e.user_id
                .as_deref()
                .is_some_and(|u| list.contains(&user_digest(app_id, u)))
        };
        if !events.iter().any(is_suppressed) {
            return (Cow::Borrowed(events), 0);
        }
        let kept: Vec<QueuedEvent> = events
            .iter()
            .filter(|e| !is_suppressed(e))
            .cloned()
            .collect();
        let dropped = events.len() - kept.len();
        (Cow::Owned(kept), dropped)
    }

    /// Applies a suppression this gateway just committed (at epoch `epoch`) before answering, so
    /// the client's next request is already filtered here. The epoch read stays where it is:
    /// other requests may have committed the epochs between, and the next re-read brings them.
    pub(super) fn add_local(&self, app_id: &str, epoch: i64, digests: &[[u8; 32]]) {
        let mut apps = self.apps.write().unwrap_or_else(|p| p.into_inner());
        let app = apps.entry(app_id.to_owned()).or_default();
        let mut set: HashSet<[u8; 32]> = (*app.suppressed).clone();
        set.extend(digests.iter().copied());
        app.suppressed = Arc::new(set);
        app.local.extend(digests.iter().map(|d| (epoch, *d)));
    }

    /// Reads `privacy_epochs` and re-reads the suppression list of every app whose epoch moved
    /// forward; deletes the cached answers of every app whose erasure generation moved.
    pub async fn refresh(&self, db: &Db) -> Result<(), DbError> {
        let rows = db
            .query(
                "read privacy epochs",
                "SELECT app_id, suppressions, erasures_done FROM privacy_epochs",
                &[],
            )
            .await?;
        for r in rows {
            let (app_id, suppressions, done): (String, i64, i64) = (r.get(0), r.get(1), r.get(2));
            let (known_suppressions, known_done) = self.epochs(&app_id);
            if suppressions > known_suppressions {
                self.reload_app(db, &app_id).await?;
            }
            if done > known_done {
                self.set_erasures_done(&app_id, done);
                self.delete_retired(&app_id).await;
            }
        }
        Ok(())
    }

    /// The app's suppression epoch and erasure generation as held (zero for an app not seen).
    fn epochs(&self, app_id: &str) -> (i64, i64) {
        let apps = self.apps.read().unwrap_or_else(|p| p.into_inner());
        apps.get(app_id)
            .map(|a| (a.suppressions, a.erasures_done))
            .unwrap_or_default()
    }

    fn set_erasures_done(&self, app_id: &str, done: i64) {
        let mut apps = self.apps.write().unwrap_or_else(|p| p.into_inner());
        let app = apps.entry(app_id.to_owned()).or_default();
        app.erasures_done = app.erasures_done.max(done);
    }

    /// Deletes the app's cached answers of earlier generations (unreachable already: this only
    /// frees the cache of what they said).
    async fn delete_retired(&self, app_id: &str) {
        if let Some(cache) = &self.cache {
            let prefix = cache.answers_prefix(Some(app_id));
            let _ = cache.invalidate_prefix(&prefix).await;
        }
    }

    /// [`Privacy::refresh`], its errors logged and retried a few times a second apart (the poll
    /// is the last resort).
    pub async fn refresh_logged(&self, db: &Db) {
        for attempt in 1..=3 {
            match self.refresh(db).await {
                Ok(()) => return,
                Err(e) => {
                    tracing::warn!(attempt, error = %e, "Cannot read the suppression lists.");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }

    /// One app's suppression list and its epoch, read in one statement (one snapshot). The
    /// digests this gateway committed after that snapshot are kept.
    async fn reload_app(&self, db: &Db, app_id: &str) -> Result<(), DbError> {
        let row = db
            .query_one(
                "read suppression list",
                "SELECT e.suppressions, coalesce(array_agg(s.user_hash) \
                 FILTER (WHERE s.user_hash IS NOT NULL), '{}') \
                 FROM privacy_epochs e LEFT JOIN suppressed_users s USING (app_id) \
                 WHERE e.app_id = $1 GROUP BY e.suppressions",
                &[&app_id],
            )
            .await?;
        let epoch: i64 = row.get(0);
        let hashes: Vec<Vec<u8>> = row.get(1);
        let set: HashSet<[u8; 32]> = hashes
            .iter()
            .filter_map(|h| <[u8; 32]>::try_from(h.as_slice()).ok())
            .collect();
        let mut apps = self.apps.write().unwrap_or_else(|p| p.into_inner());
        apps.entry(app_id.to_owned())
            .or_default()
            .apply_snapshot(epoch, set);
        Ok(())
    }

    /// Re-reads every `every` in case a notification was lost.
    pub fn spawn_poll(self: &Arc<Self>, every: Duration, db: Db, tasks: &shared::tasks::Tasks) {
        let privacy = self.clone();
        let stop = tasks.stop_token();
        tasks.spawn(
            "privacy_poll",
            shared::shutdown::every(every, stop, move || {
                let (privacy, db) = (privacy.clone(), db.clone());
                async move { privacy.refresh_logged(&db).await }
            }),
        );
    }
}

#[cfg(test)]
mod tests {
    use uuid::Uuid;

    use super::*;

    fn event(user: Option<&str>) -> QueuedEvent {
        QueuedEvent {
            event_id: Uuid::now_v7(),
            app_id: "app".into(),
            event_name: "e".into(),
            occurred_at_us: 0,
            received_at_us: 0,
            user_id: user.map(str::to_owned),
            session_id: None,
            metadata: None,
            client_id: false,
        }
    }

    #[test]
    fn a_snapshot_older_than_a_local_suppression_keeps_it_and_a_newer_one_replaces_all() {
        let d = |u: &str| user_digest("app", u);
        let mut app = AppPrivacy {
            suppressions: 4,
            ..AppPrivacy::default()
        };
        // This gateway committed epoch 6 (x); another committed epoch 5 (y) meanwhile.
        app.suppressed = Arc::new([d("x")].into());
        app.local.push((6, d("x")));
        app.apply_snapshot(5, [d("y")].into());
        assert_eq!(app.suppressions, 5);
        assert!(app.suppressed.contains(&d("x")) && app.suppressed.contains(&d("y")));
        // A stale snapshot changes nothing; the one of epoch 6 holds both and drops the local.
        app.apply_snapshot(5, HashSet::new());
        assert_eq!(app.suppressed.len(), 2);
        app.apply_snapshot(6, [d("x"), d("y")].into());
        assert!(app.local.is_empty());
        assert_eq!((app.suppressions, app.suppressed.len()), (6, 2));
    }

    #[test]
    fn suppressed_users_events_are_dropped_and_others_borrowed() {
        let p = Privacy::new(None);
        let events = vec![event(Some("gone")), event(Some("kept")), event(None)];
        let (kept, n) = p.without_suppressed("app", &events);
        assert!(matches!(kept, Cow::Borrowed(_)));
        assert_eq!(n, 0);
        p.add_local("app", 1, &[user_digest("app", "gone")]);
        let (kept, n) = p.without_suppressed("app", &events);
        assert_eq!(n, 1);
        assert_eq!(kept.len(), 2);
        assert!(kept.iter().all(|e| e.user_id.as_deref() != Some("gone")));
        // Another app's user of the same id is not suppressed.
        let (kept, n) = p.without_suppressed("other", &events);
        assert_eq!((kept.len(), n), (3, 0));
    }
}
