//! The analyze job: statistics for what changed, not for all history.
//!
//! - A partition (or `events_quarantine`) is analyzed when rows changed in it since its last
//!   analyze, or it was never analyzed: closed months are skipped once their statistics exist.
//! - The partitioned parent, which autovacuum never analyzes (the planner's statistics across
//!   partitions come only from here), is analyzed when it never was, when its partitions now
//!   hold 10% more or fewer rows than its statistics describe, or when those are a week old.
//!   PostgreSQL 15 cannot analyze a parent alone: `ANALYZE analytics_events` samples every
//!   partition too, so those runs replace the per-partition ones. Its cost is amortized over the
//!   10% of history that arrived since the last one.
//!
//! Each analyze reads a sample of at most 300 x `default_statistics_target` rows a table; the
//! job's `rows` is that estimate for what it analyzed.

use deadpool_postgres::Object;
use shared::db::DbError;

use super::JobCtx;

/// The share of the parent's rows that may change before its statistics are taken again.
const PARENT_DRIFT: f64 = 0.1;

/// What the catalog says about the parent and each leaf table the job looks after.
const STATE: &str = "
SELECT c.oid::regclass::text, c.relkind = 'p', c.reltuples < 0, greatest(c.reltuples, 0)::bigint,
       coalesce(s.n_mod_since_analyze, 0), coalesce(s.n_live_tup, 0),
       coalesce(greatest(s.last_analyze, s.last_autoanalyze) < now() - interval '7 days', true)
  FROM pg_class c
  LEFT JOIN pg_stat_user_tables s ON s.relid = c.oid
 WHERE c.oid IN ('analytics_events'::regclass, 'events_quarantine'::regclass)
    OR c.oid IN (SELECT inhrelid FROM pg_inherits WHERE inhparent = 'analytics_events'::regclass)
 ORDER BY 1";

struct Table {
    name: String,
    parent: bool,
    never: bool,
    /// Rows its statistics describe (`reltuples`).
    described: i64,
    /// Rows inserted, updated or deleted since its last analyze.
    changed: i64,
    live: i64,
    /// Last analyzed more than a week ago (or never).
    old: bool,
}

/// Why the parent is due, if it is.
fn parent_due(parent: &Table, leaves: &[&Table]) -> Option<&'static str> {
    if parent.never {
        return Some("never analyzed");
    }
    let live: i64 = leaves.iter().map(|t| t.live).sum();
    if (live - parent.described).abs() as f64 > PARENT_DRIFT * parent.described as f64 {
        return Some("its partitions' rows moved more than 10%");
    }
    parent.old.then_some("a week since the last")
}

/// A leaf is due when rows changed in it since its last analyze, or it never was analyzed.
fn leaf_due(t: &Table) -> bool {
    t.changed > 0 || t.never
}

/// What one run analyzes: the parent (with the reason it is due) or the leaves that changed.
struct Plan<'t> {
    analyzed: Vec<&'t str>,
    parent: Option<&'static str>,
    /// The rows the analyzes sample, estimated.
    rows: i64,
}

/// Decides what to analyze; `target` is `default_statistics_target`.
fn plan(tables: &[Table], target: i64) -> Plan<'_> {
    let sample = |rows: i64| rows.clamp(0, 300 * target);
    let leaves: Vec<&Table> = tables
        .iter()
        .filter(|t| !t.parent && t.name != "events_quarantine")
        .collect();
    let reason = tables
        .iter()
        .find(|t| t.parent)
        .and_then(|p| parent_due(p, &leaves));
    let mut analyzed: Vec<&str> = Vec::new();
    let mut rows: i64 = 0;
    if reason.is_some() {
        analyzed.push("analytics_events");
        let all: i64 = leaves.iter().map(|t| t.live).sum();
        rows += sample(all) + leaves.iter().map(|t| sample(t.live)).sum::<i64>();
    }
    for t in tables.iter().filter(|t| !t.parent && leaf_due(t)) {
        // The parent's analyze samples every partition already.
        if reason.is_none() || t.name == "events_quarantine" {
            analyzed.push(&t.name);
            rows += sample(t.live);
        }
    }
    Plan {
        analyzed,
        parent: reason,
        rows,
    }
}

pub async fn run(ctx: &JobCtx) -> Result<serde_json::Value, DbError> {
    let mut client = ctx.db.get("analyze job").await?;
    let tables = read_state(&client).await?;
    let target: i64 = client
        .query_one(
            "SELECT current_setting('default_statistics_target')::bigint",
            &[],
        )
        .await
        .map_err(DbError::query("read default_statistics_target"))?
        .get(0);
    let plan = plan(&tables, target);
    for name in &plan.analyzed {
        analyze(&mut client, name).await?;
    }
    let stats: i64 = client
        .query_one(
            "SELECT count(*) FROM pg_stats WHERE tablename = 'analytics_events'",
            &[],
        )
        .await
        .map_err(DbError::query("read parent statistics"))?
        .get(0);
    Ok(serde_json::json!({
        "analyzed": plan.analyzed,
        "parent": plan.parent.unwrap_or("not due"),
        "parent_columns_with_stats": stats,
        "rows": plan.rows,
    }))
}

async fn read_state(client: &Object) -> Result<Vec<Table>, DbError> {
    Ok(client
        .query(STATE, &[])
        .await
        .map_err(DbError::query("read table statistics"))?
        .iter()
        .map(|r| Table {
            name: r.get(0),
            parent: r.get(1),
            never: r.get(2),
            described: r.get(3),
            changed: r.get(4),
            live: r.get(5),
            old: r.get(6),
        })
        .collect())
}

/// `ANALYZE name` in a transaction of its own, without the statement timeout.
async fn analyze(client: &mut Object, name: &str) -> Result<(), DbError> {
    let tx = client
        .transaction()
        .await
        .map_err(DbError::query("begin an analyze"))?;
    // Names come from the catalog (`regclass` output is already quoted where needed).
    tx.batch_execute(&format!("SET LOCAL statement_timeout = 0; ANALYZE {name}"))
        .await
        .map_err(DbError::query("analyze a table"))?;
    tx.commit()
        .await
        .map_err(DbError::query("commit an analyze"))
}
