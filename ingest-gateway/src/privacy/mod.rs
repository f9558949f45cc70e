//! Privacy: erasure requests and suppression (docs/privacy.md, migration 7).
//!
//! - `POST /v1/privacy/erasures` and `ingest-gateway users erase` record a request (and, with
//!   `suppress`, its users' digests in the suppression list) in one transaction; the maintenance
//!   worker carries it out. `GET /v1/privacy/erasures/{id}` and `erasures list` read it back.
//!   Only an app's admin key reaches these routes, and only for that app's requests.
//! - Every gateway keeps each app's suppression list (digests, never clear ids) in memory and
//!   drops those users' events before they are queued, answering them as accepted. A trigger on
//!   `privacy_epochs` sends `NOTIFY sluice_privacy` when a change commits; every gateway hears it
//!   on its key-change session ([`crate::auth`]) and re-reads the epochs, so a new suppression
//!   reaches every gateway within milliseconds (the gateway that took the request applies it
//!   before answering). The epochs are also read every `PRIVACY_POLL_MS` [60000] and after the
//!   listening session reconnects, in case a notification was lost.
//! - `privacy_epochs.erasures_done` is part of the read cache's keys ([`Privacy::generation`]), so
//!   a finished erasure retires the app's cached answers on every gateway at once; the retired
//!   entries are deleted from Redis by the poll.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use serde::{Deserialize, Serialize};
use shared::db::{Db, DbError};
use shared::privacy::{user_digest, MAX_USERS_PER_ERASURE};
use shared::queue::QueuedEvent;
use uuid::Uuid;

use crate::apps::KeyKind;
use crate::error::ApiError;
use crate::routes::AppState;
use crate::validate::MAX_ID_BYTES;

/// The NOTIFY channel of suppression and erasure changes (see migration 7).
pub const CHANNEL: &str = "sluice_privacy";

/// The largest erasure request body: 1,000 ids of 200 bytes, each byte escaped as `\\u00XX`.
pub const MAX_ERASURE_BODY: usize = 2 * 1024 * 1024;

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
    fn add_local(&self, app_id: &str, epoch: i64, digests: &[[u8; 32]]) {
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
            let known = {
                let apps = self.apps.read().unwrap_or_else(|p| p.into_inner());
                apps.get(&app_id).map(|a| (a.suppressions, a.erasures_done))
            };
            let (known_suppressions, known_done) = known.unwrap_or_default();
            if suppressions > known_suppressions {
                self.reload_app(db, &app_id).await?;
            }
            if done > known_done {
                {
                    let mut apps = self.apps.write().unwrap_or_else(|p| p.into_inner());
                    let app = apps.entry(app_id.clone()).or_default();
                    app.erasures_done = app.erasures_done.max(done);
                }
                self.delete_retired(&app_id).await;
            }
        }
        Ok(())
    }

    /// Deletes the app's cached answers of earlier generations (unreachable already: this only
    /// frees the cache of what they said).
    async fn delete_retired(&self, app_id: &str) {
        if let Some(cache) = &self.cache {
            let prefix = format!("{}:v1:{app_id}:", cache.prefix());
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
    let id = Uuid::now_v7();
    let digests: Vec<Vec<u8>> = user_ids
        .iter()
        .map(|u| user_digest(app_id, u).to_vec())
        .collect();
    let (app, ids) = (app_id.to_owned(), user_ids.to_vec());
    let users = ids.len() as i32;
    db.transaction("record erasure request", move |tx| {
        Box::pin(async move {
            let row = tx
                .query_one(
                    &format!(
                        "INSERT INTO erasures (erasure_id, app_id, suppress, users) \
                         VALUES ($1, $2, $3, $4) RETURNING {ERASURE_COLUMNS}"
                    ),
                    &[&id, &app, &suppress, &users],
                )
                .await
                .map_err(DbError::query("insert erasure"))?;
            tx.execute(
                "INSERT INTO erasure_users (erasure_id, user_hash, user_id) \
                 SELECT $1, h, u FROM unnest($2::bytea[], $3::text[]) AS t (h, u)",
                &[&id, &digests, &ids],
            )
            .await
            .map_err(DbError::query("insert erasure users"))?;
            let mut epoch = None;
            if suppress {
                tx.execute(
                    "INSERT INTO suppressed_users (app_id, user_hash, erasure_id) \
                     SELECT $1, h, $2 FROM unnest($3::bytea[]) AS h ON CONFLICT DO NOTHING",
                    &[&app, &id, &digests],
                )
                .await
                .map_err(DbError::query("insert suppressions"))?;
                let r = tx
                    .query_one(
                        "INSERT INTO privacy_epochs (app_id, suppressions) VALUES ($1, 1) \
                         ON CONFLICT (app_id) DO UPDATE \
                         SET suppressions = privacy_epochs.suppressions + 1 \
                         RETURNING suppressions",
                        &[&app],
                    )
                    .await
                    .map_err(DbError::query("bump suppression epoch"))?;
                epoch = Some(r.get(0));
            }
            Ok((Erasure::from_row(&row), epoch))
        })
    })
    .await
}

/// One request of `app_id` (another app's id reads as none).
pub async fn get_erasure(db: &Db, app_id: &str, id: Uuid) -> Result<Option<Erasure>, DbError> {
    let rows = db
        .query(
            "read erasure",
            &format!(
                "SELECT {ERASURE_COLUMNS} FROM erasures WHERE erasure_id = $1 AND app_id = $2"
            ),
            &[&id, &app_id],
        )
        .await?;
    Ok(rows.first().map(Erasure::from_row))
}

/// An app's requests, oldest first.
pub async fn list_erasures(db: &Db, app_id: &str) -> Result<Vec<Erasure>, DbError> {
    let rows = db
        .query(
            "list erasures",
            &format!(
                "SELECT {ERASURE_COLUMNS} FROM erasures WHERE app_id = $1 ORDER BY requested_at"
            ),
            &[&app_id],
        )
        .await?;
    Ok(rows.iter().map(Erasure::from_row).collect())
}

/// The body of `POST /v1/privacy/erasures`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ErasureBody {
    user_ids: Vec<String>,
    #[serde(default)]
    suppress: bool,
}

/// The app of the request's admin key, taken from a header only: a key in the query string
/// ends up in proxies' and servers' access logs.
async fn admin(state: &AppState, req: &Request<Incoming>) -> Result<crate::auth::Grant, ApiError> {
    let key = crate::auth::presented_key(req.headers(), None).ok_or(ApiError::MissingKey)?;
    crate::ingest::grant_for(state, key, KeyKind::Admin).await
}

/// `POST /v1/privacy/erasures`.
pub async fn post(state: &AppState, req: Request<Incoming>) -> Response<Full<Bytes>> {
    match post_inner(state, req).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn post_inner(
    state: &AppState,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, ApiError> {
    if state.shutdown.is_cancelled() {
        return Err(ApiError::ShuttingDown);
    }
    let grant = admin(state, &req).await?;
    let gzip = crate::body::check_headers(req.headers())?;
    let (parts, incoming) = req.into_parts();
    let bytes = crate::body::read(
        &parts.headers,
        incoming,
        gzip,
        MAX_ERASURE_BODY,
        state.config.body_read_timeout,
    )
    .await?;
    let body: ErasureBody = serde_json::from_slice(&bytes).map_err(|e| {
        ApiError::InvalidErasure(format!(
            "the body must be {{\"user_ids\": [\"...\"], \"suppress\": true|false}}: {e}"
        ))
    })?;
    let ids = check_user_ids(&body.user_ids).map_err(ApiError::InvalidErasure)?;
    let (erasure, epoch) = create_erasure(&state.pools.write, &grant.app_id, &ids, body.suppress)
        .await
        .map_err(|e| {
            tracing::warn!(error = %e, "Cannot record an erasure request.");
            ApiError::DbUnavailable
        })?;
    if let Some(epoch) = epoch {
        let digests: Vec<[u8; 32]> = ids.iter().map(|u| user_digest(&grant.app_id, u)).collect();
        state.privacy.add_local(&grant.app_id, epoch, &digests);
    }
    tracing::info!(erasure_id = %erasure.erasure_id, app_id = %grant.app_id, users = ids.len(), suppress = body.suppress, "Erasure requested.");
    Ok(crate::reply::json(
        StatusCode::ACCEPTED,
        &serde_json::json!({"erasure_id": erasure.erasure_id, "status": erasure.status}),
    ))
}

/// `GET /v1/privacy/erasures/{id}`.
pub async fn get(state: &AppState, req: Request<Incoming>, id: &str) -> Response<Full<Bytes>> {
    let answer = async {
        let grant = admin(state, &req).await?;
        let id = Uuid::try_parse(id).map_err(|_| ApiError::ErasureNotFound)?;
        let erasure = get_erasure(&state.pools.write, &grant.app_id, id)
            .await
            .map_err(|e| {
                tracing::warn!(error = %e, "Cannot read an erasure request.");
                ApiError::DbUnavailable
            })?
            .ok_or(ApiError::ErasureNotFound)?;
        Ok::<_, ApiError>(crate::reply::json(StatusCode::OK, &erasure))
    };
    answer.await.unwrap_or_else(ApiError::into_response)
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
