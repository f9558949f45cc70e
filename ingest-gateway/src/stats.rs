//! The read API: `GET /v1/stats/daily` and `GET /v1/stats/top-events`, for a read key, each app
//! seeing only its own data. Every day, today included, comes from `daily_analytics_summary`
//! plus the stored events the maintenance worker has not folded into it yet
//! (`summary_pending`), so an event counts as soon as the writer has committed it, exactly, and
//! a big app's today costs what arrived since the last fold, not a scan of its day. All reads go
//! through the read pool, and answers through the cache (`X-Cache: HIT|MISS`).

use std::collections::HashMap;

use bytes::Bytes;
use chrono::{NaiveDate, Utc};
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use serde::Serialize;
use sha2::{Digest, Sha256};
use shared::db::Db;

use crate::apps::KeyKind;
use crate::auth::authenticate;
use crate::cache::ComputeFailed;
use crate::error::ApiError;
use crate::routes::AppState;
use crate::validate::EventName;

pub const MAX_LIMIT: u32 = 100;
pub const DEFAULT_LIMIT: u32 = 10;

/// A validated query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    pub from: NaiveDate,
    pub to: NaiveDate,
    pub event_name: Option<String>,
    pub limit: u32,
}

/// Which endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Daily,
    Top,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Daily => "daily",
            Kind::Top => "top",
        }
    }
}

/// Parses and checks the query string: dates, their order, the range, the limit.
pub fn parse(kind: Kind, query: Option<&str>, max_days: u32) -> Result<Query, ApiError> {
    let mut q = Params::default();
    for (k, v) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        q.set(kind, &k, &v)?;
    }
    let from = q
        .from
        .ok_or_else(|| bad("from is required (YYYY-MM-DD)".into()))?;
    let to =
        q.to.ok_or_else(|| bad("to is required (YYYY-MM-DD)".into()))?;
    if from > to {
        return Err(bad(format!("from ({from}) is after to ({to})")));
    }
    let days = (to - from).num_days() + 1;
    if days > max_days as i64 {
        return Err(bad(format!(
            "the range covers {days} days; at most {max_days} are allowed"
        )));
    }
    Ok(Query {
        from,
        to,
        event_name: q.event_name,
        limit: q.limit.unwrap_or(DEFAULT_LIMIT),
    })
}

fn bad(message: String) -> ApiError {
    ApiError::BadQuery(message)
}

/// The parameters of a query string as given, each checked on its own.
#[derive(Default)]
struct Params {
    from: Option<NaiveDate>,
    to: Option<NaiveDate>,
    event_name: Option<String>,
    limit: Option<u32>,
}

impl Params {
    /// One parameter: those of the endpoint, and `api_key` (read by [`authenticate`]).
    fn set(&mut self, kind: Kind, k: &str, v: &str) -> Result<(), ApiError> {
        let date = |v: &str| {
            NaiveDate::parse_from_str(v, "%Y-%m-%d")
                .map_err(|_| bad(format!("{k} must be a date YYYY-MM-DD, got {v:?}")))
        };
        match (k, kind) {
            ("from", _) => self.from = Some(date(v)?),
            ("to", _) => self.to = Some(date(v)?),
            ("event_name", Kind::Daily) => {
                self.event_name = Some(EventName::parse(v).map_err(bad)?.into_inner())
            }
            ("limit", Kind::Top) => self.limit = Some(limit(v)?),
            ("api_key", _) => {}
            (other, _) => return Err(bad(format!("unknown parameter {other:?}"))),
        }
        Ok(())
    }
}

/// `limit`: 1 to [`MAX_LIMIT`].
fn limit(v: &str) -> Result<u32, ApiError> {
    let n: u32 = v
        .parse()
        .map_err(|_| bad(format!("limit must be a whole number, got {v:?}")))?;
    if !(1..=MAX_LIMIT).contains(&n) {
        return Err(bad(format!("limit must be 1 to {MAX_LIMIT}, got {n}")));
    }
    Ok(n)
}

/// The cache key: the app, the endpoint and the query; invalidating `{prefix}:v1:{app}:` clears
/// one app.
/// The cache key of an answer. `generation` is the number of the app's finished erasures: a
/// finished erasure retires every answer computed before it.
pub fn cache_key(prefix: &str, app: &str, generation: i64, kind: Kind, q: &Query) -> String {
    let name = q
        .event_name
        .as_deref()
        .map(|n| hex::encode(&Sha256::digest(n.as_bytes())[..8]))
        .unwrap_or_else(|| "-".into());
    format!(
        "{prefix}:v1:{app}:g{generation}:{}:{}:{}:{name}:{}",
        kind.name(),
        q.from,
        q.to,
        q.limit
    )
}

#[derive(Debug, Serialize)]
struct Day {
    day: String,
    event_name: String,
    events: i64,
    unique_users: i64,
    unique_sessions: i64,
}

impl Day {
    /// From `(day, event_name, events, unique_users, unique_sessions)`, the shape of both the
    /// summary view and the live query.
    fn from_row(r: &tokio_postgres::Row) -> Self {
        Day {
            day: r.get::<_, NaiveDate>(0).to_string(),
            event_name: r.get(1),
            events: r.get(2),
            unique_users: r.get(3),
            unique_sessions: r.get(4),
        }
    }
}

pub async fn handle(state: &AppState, req: Request<Incoming>, kind: Kind) -> Response<Full<Bytes>> {
    match answer(state, &req, kind).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn answer(
    state: &AppState,
    req: &Request<Incoming>,
    kind: Kind,
) -> Result<Response<Full<Bytes>>, ApiError> {
    let grant = authenticate(state, req, KeyKind::Read).await?;
    let q = parse(kind, req.uri().query(), state.config.stats_max_range_days)?;
    let generation = state.privacy.generation(&grant.app_id);
    let key = cache_key(state.cache.prefix(), &grant.app_id, generation, kind, &q);
    let ttl = ttl(state, &q);
    let (app, db) = (grant.app_id.to_string(), state.pools.read.clone());
    let (body, hit) = state
        .cache
        .get_or_compute(&key, ttl, || compute(db, app, kind, q))
        .await?;
    Ok(cached_response(body, hit))
}

/// How long an answer is cached: briefly when its range includes today, long otherwise.
fn ttl(state: &AppState, q: &Query) -> std::time::Duration {
    if q.to >= Utc::now().date_naive() {
        state.config.cache_ttl_live
    } else {
        state.config.cache_ttl_closed
    }
}

/// The answer's JSON from the read pool (its failure logged: the cache passes on only that
/// it failed).
async fn compute(db: Db, app: String, kind: Kind, q: Query) -> Result<String, ComputeFailed> {
    let r = match kind {
        Kind::Daily => daily(&db, &app, &q).await,
        Kind::Top => top(&db, &app, &q).await,
    };
    r.map_err(|e| {
        tracing::warn!(error = %e, "Read query failed.");
        ComputeFailed
    })
}

/// `200` with the answer's JSON and `X-Cache: HIT|MISS`.
fn cached_response(body: String, hit: bool) -> Response<Full<Bytes>> {
    let mut resp = crate::reply::json_text(StatusCode::OK, body);
    resp.headers_mut().insert(
        "x-cache",
        HeaderValue::from_static(if hit { "HIT" } else { "MISS" }),
    );
    resp
}

/// Per (day, event name): the summary's counts plus the inserted events not yet folded into it
/// (`summary_pending`): their events, and their distinct ids not already among the summary's
/// (`summary_members`). Exact at the read's snapshot whenever the fold last ran; the fold only
/// keeps the pending part small. Each id is one probe of the members' key (the LIMIT keeps the
/// probe a subquery of its own, so all five key columns are its index condition whatever the
/// statistics say). `$4` is an event name or NULL for all.
pub const DAILY: &str = "
WITH pend AS (
    SELECT day, event_name, events, users, sessions FROM summary_pending
     WHERE app_id = $1 AND day BETWEEN $2 AND $3 AND ($4::text IS NULL OR event_name = $4)
), pe AS (
    SELECT day, event_name, sum(events)::bigint AS events FROM pend GROUP BY 1, 2
), nu AS (
    SELECT p.day, p.event_name, count(DISTINCT u.id)::bigint AS n
      FROM pend p CROSS JOIN LATERAL unnest(p.users) AS u(id)
      LEFT JOIN LATERAL (SELECT 1 AS hit FROM summary_members m
                          WHERE m.app_id = $1 AND m.day = p.day AND m.event_name = p.event_name
                            AND m.kind = 'u' AND m.member = u.id LIMIT 1) k ON true
     WHERE k.hit IS NULL
     GROUP BY 1, 2
), ns AS (
    SELECT p.day, p.event_name, count(DISTINCT x.id)::bigint AS n
      FROM pend p CROSS JOIN LATERAL unnest(p.sessions) AS x(id)
      LEFT JOIN LATERAL (SELECT 1 AS hit FROM summary_members m
                          WHERE m.app_id = $1 AND m.day = p.day AND m.event_name = p.event_name
                            AND m.kind = 's' AND m.member = x.id LIMIT 1) k ON true
     WHERE k.hit IS NULL
     GROUP BY 1, 2
), s AS (
    SELECT day, event_name, events, unique_users, unique_sessions FROM daily_analytics_summary
     WHERE app_id = $1 AND day BETWEEN $2 AND $3 AND ($4::text IS NULL OR event_name = $4)
)
SELECT day, event_name,
       coalesce(s.events, 0) + coalesce(pe.events, 0),
       coalesce(s.unique_users, 0) + coalesce(nu.n, 0),
       coalesce(s.unique_sessions, 0) + coalesce(ns.n, 0)
  FROM s FULL JOIN pe USING (day, event_name)
  LEFT JOIN nu USING (day, event_name)
  LEFT JOIN ns USING (day, event_name)
 ORDER BY 1, 2";

/// Events per name over the range: the summary's and the pending rows'.
const TOP: &str = "
SELECT event_name, sum(events)::bigint FROM (
    SELECT event_name, events FROM daily_analytics_summary
     WHERE app_id = $1 AND day BETWEEN $2 AND $3
    UNION ALL
    SELECT event_name, events FROM summary_pending
     WHERE app_id = $1 AND day BETWEEN $2 AND $3
) t GROUP BY 1";

async fn daily(db: &Db, app: &str, q: &Query) -> Result<String, shared::db::DbError> {
    let rows = db
        .query("daily stats", DAILY, &[&app, &q.from, &q.to, &q.event_name])
        .await?;
    let days: Vec<Day> = rows.iter().map(Day::from_row).collect();
    Ok(serde_json::json!({"app_id": app, "days": days}).to_string())
}

async fn top(db: &Db, app: &str, q: &Query) -> Result<String, shared::db::DbError> {
    let mut totals: HashMap<String, i64> = HashMap::new();
    for r in db.query("top events", TOP, &[&app, &q.from, &q.to]).await? {
        *totals.entry(r.get(0)).or_default() += r.get::<_, i64>(1);
    }
    let mut events: Vec<(String, i64)> = totals.into_iter().collect();
    events.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    events.truncate(q.limit as usize);
    let events: Vec<serde_json::Value> = events
        .into_iter()
        .map(|(n, c)| serde_json::json!({"event_name": n, "events": c}))
        .collect();
    Ok(serde_json::json!({"app_id": app, "events": events}).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(kind: Kind, q: &str) -> Result<Query, String> {
        parse(kind, Some(q), 366).map_err(|e| e.to_string())
    }

    #[test]
    fn queries_are_validated() {
        let q = p(
            Kind::Daily,
            "from=2026-11-01&to=2026-11-28&event_name=sign%20up",
        )
        .expect("ok");
        assert_eq!(q.event_name.as_deref(), Some("sign up"));
        assert_eq!(q.limit, DEFAULT_LIMIT);
        assert!(p(Kind::Daily, "from=2026-11-29&to=2026-11-28")
            .unwrap_err()
            .contains("after"));
        assert!(p(Kind::Daily, "from=2026-13-01&to=2026-11-28")
            .unwrap_err()
            .contains("YYYY-MM-DD"));
        assert!(p(Kind::Daily, "to=2026-11-28")
            .unwrap_err()
            .contains("from is required"));
        assert!(p(Kind::Daily, "from=2026-11-28")
            .unwrap_err()
            .contains("to is required"));
        assert!(p(Kind::Daily, "from=2026-11-28&to=2026-11-28&limit=5")
            .unwrap_err()
            .contains("unknown"));
        assert!(p(Kind::Top, "from=2026-11-28&to=2026-11-28&event_name=x")
            .unwrap_err()
            .contains("unknown"));
        assert!(p(Kind::Daily, "from=2026-11-28&to=2026-11-28&event_name=").is_err());
        // The range limit, at it and one past it.
        assert!(
            p(Kind::Daily, "from=2025-11-28&to=2026-11-28").is_ok(),
            "366 days"
        );
        assert!(p(Kind::Daily, "from=2025-11-27&to=2026-11-28")
            .unwrap_err()
            .contains("367 days"));
        // The limit, at its bounds and past them.
        assert_eq!(
            p(Kind::Top, "from=2026-11-28&to=2026-11-28&limit=100")
                .expect("ok")
                .limit,
            100
        );
        assert_eq!(
            p(Kind::Top, "from=2026-11-28&to=2026-11-28&limit=1")
                .expect("ok")
                .limit,
            1
        );
        assert!(p(Kind::Top, "from=2026-11-28&to=2026-11-28&limit=101").is_err());
        assert!(p(Kind::Top, "from=2026-11-28&to=2026-11-28&limit=0").is_err());
        assert!(p(Kind::Top, "from=2026-11-28&to=2026-11-28&limit=x").is_err());
    }

    #[test]
    fn cache_keys_carry_the_app_and_the_query() {
        let q = p(Kind::Daily, "from=2026-11-01&to=2026-11-28").expect("ok");
        let a = cache_key("s:cache", "app_a", 0, Kind::Daily, &q);
        assert!(a.starts_with("s:cache:v1:app_a:g0:daily:2026-11-01:2026-11-28:"));
        assert_ne!(a, cache_key("s:cache", "app_b", 0, Kind::Daily, &q));
        assert_ne!(a, cache_key("s:cache", "app_a", 0, Kind::Top, &q));
        assert_ne!(a, cache_key("s:cache", "app_a", 1, Kind::Daily, &q));
        let named = p(Kind::Daily, "from=2026-11-01&to=2026-11-28&event_name=a:b").expect("ok");
        assert!(!cache_key("s:cache", "app_a", 0, Kind::Daily, &named).contains("a:b"));
    }
}
