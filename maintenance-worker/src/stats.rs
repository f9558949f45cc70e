//! `maintenance-worker stats`: sizes, row estimates, dead tuples, quarantine and the buffer
//! cache hit ratio, as readable tables (the original maintenance script's report).

use shared::db::{Db, DbError};

fn mib(bytes: i64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut w: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            w[i] = w[i].max(c.len());
        }
    }
    let line = |cells: Vec<String>| {
        cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<width$}", width = w[i]))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_owned()
    };
    let mut out = line(header.iter().map(|s| s.to_string()).collect());
    out.push('\n');
    out.push_str(&line(w.iter().map(|n| "-".repeat(*n)).collect()));
    out.push('\n');
    for r in rows {
        out.push_str(&line(r.clone()));
        out.push('\n');
    }
    out
}

/// The whole report as text.
pub async fn report(db: &Db) -> Result<String, DbError> {
    let mut out = tables(db).await?;
    out.push_str(&partitions_total(db).await?);
    out.push_str(&indexes(db).await?);
    out.push_str(&counts(db).await?);
    Ok(out)
}

/// Every table and partition of the schema (and materialized view): sizes, row estimate, dead
/// and live tuples.
const TABLES: &str = "
SELECT c.relname::text, pg_total_relation_size(c.oid), pg_relation_size(c.oid),
       pg_indexes_size(c.oid), greatest(c.reltuples, 0)::bigint,
       coalesce(s.n_dead_tup, 0), coalesce(s.n_live_tup, 0)
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
  LEFT JOIN pg_stat_user_tables s ON s.relid = c.oid
 WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'm')
 ORDER BY c.relname";

/// Every table, partition and materialized view: sizes, row estimate, dead tuples.
async fn tables(db: &Db) -> Result<String, DbError> {
    let tables = db.query("stats: tables", TABLES, &[]).await?;
    let rows: Vec<Vec<String>> = tables
        .iter()
        .map(|r| {
            vec![
                r.get::<_, String>(0),
                mib(r.get(1)),
                mib(r.get(2)),
                mib(r.get(3)),
                r.get::<_, i64>(4).to_string(),
                r.get::<_, i64>(5).to_string(),
            ]
        })
        .collect();
    let header = [
        "table",
        "total",
        "heap",
        "indexes",
        "rows (estimate)",
        "dead tuples",
    ];
    Ok(format!("Tables and partitions\n{}", table(&header, &rows)))
}

/// The size of every partition of `analytics_events` together, in bytes.
const PARTITIONS: &str = "
SELECT coalesce(sum(pg_total_relation_size(i.inhrelid)), 0)::bigint
  FROM pg_inherits i JOIN pg_class p ON p.oid = i.inhparent
 WHERE p.relname = 'analytics_events'";

/// The size of every partition of `analytics_events` together.
async fn partitions_total(db: &Db) -> Result<String, DbError> {
    let total: i64 = db.query_one("stats: total", PARTITIONS, &[]).await?.get(0);
    Ok(format!(
        "\nanalytics_events, all partitions: {}\n",
        mib(total)
    ))
}

/// The 25 largest indexes and how often each was scanned.
async fn indexes(db: &Db) -> Result<String, DbError> {
    let indexes = db
        .query(
            "stats: indexes",
            "SELECT indexrelname::text, relname::text, pg_relation_size(indexrelid), idx_scan \
             FROM pg_stat_user_indexes ORDER BY pg_relation_size(indexrelid) DESC LIMIT 25",
            &[],
        )
        .await?;
    let rows: Vec<Vec<String>> = indexes
        .iter()
        .map(|r| {
            vec![
                r.get::<_, String>(0),
                r.get::<_, String>(1),
                mib(r.get(2)),
                r.get::<_, i64>(3).to_string(),
            ]
        })
        .collect();
    Ok(format!(
        "\nLargest indexes\n{}",
        table(&["index", "table", "size", "scans"], &rows)
    ))
}

/// Quarantined rows, dead letters and the buffer cache hit ratio.
async fn counts(db: &Db) -> Result<String, DbError> {
    let count = |op: &'static str, sql: &'static str| async move {
        db.query_one(op, sql, &[]).await.map(|r| r.get::<_, i64>(0))
    };
    let quarantine = count(
        "stats: quarantine",
        "SELECT count(*) FROM events_quarantine",
    )
    .await?;
    let dead_letters = count("stats: dead letters", "SELECT count(*) FROM dead_letters").await?;
    let hit: Option<f64> = db
        .query_one(
            "stats: cache hit ratio",
            "SELECT (sum(blks_hit)::float8 / nullif(sum(blks_hit) + sum(blks_read), 0)) \
             FROM pg_stat_database WHERE datname = current_database()",
            &[],
        )
        .await?
        .get(0);
    Ok(format!(
        "\nRows in quarantine: {quarantine}\nDead letters: {dead_letters}\nBuffer cache hit ratio: {}\n",
        hit.map_or("n/a".to_owned(), |h| format!("{:.2}%", h * 100.0))
    ))
}
