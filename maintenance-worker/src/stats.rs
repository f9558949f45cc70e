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
    let mut out = String::new();
    let tables = db
        .query(
            "stats: tables",
            "SELECT c.relname::text, pg_total_relation_size(c.oid), pg_relation_size(c.oid), \
                    pg_indexes_size(c.oid), greatest(c.reltuples, 0)::bigint, \
                    coalesce(s.n_dead_tup, 0), coalesce(s.n_live_tup, 0) \
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             LEFT JOIN pg_stat_user_tables s ON s.relid = c.oid \
             WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'm') \
             ORDER BY c.relname",
            &[],
        )
        .await?;
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
    out.push_str("Tables and partitions\n");
    out.push_str(&table(
        &[
            "table",
            "total",
            "heap",
            "indexes",
            "rows (estimate)",
            "dead tuples",
        ],
        &rows,
    ));
    let total: i64 = db
        .query_one(
            "stats: total",
            "SELECT coalesce(sum(pg_total_relation_size(i.inhrelid)), 0)::bigint FROM pg_inherits i \
             JOIN pg_class p ON p.oid = i.inhparent WHERE p.relname = 'analytics_events'",
            &[],
        )
        .await?
        .get(0);
    out.push_str(&format!(
        "\nanalytics_events, all partitions: {}\n",
        mib(total)
    ));
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
    out.push_str("\nLargest indexes\n");
    out.push_str(&table(&["index", "table", "size", "scans"], &rows));
    let quarantine: i64 = db
        .query_one(
            "stats: quarantine",
            "SELECT count(*) FROM events_quarantine",
            &[],
        )
        .await?
        .get(0);
    let dead_letters: i64 = db
        .query_one(
            "stats: dead letters",
            "SELECT count(*) FROM dead_letters",
            &[],
        )
        .await?
        .get(0);
    let hit: Option<f64> = db
        .query_one(
            "stats: cache hit ratio",
            "SELECT (sum(blks_hit)::float8 / nullif(sum(blks_hit) + sum(blks_read), 0)) \
             FROM pg_stat_database WHERE datname = current_database()",
            &[],
        )
        .await?
        .get(0);
    out.push_str(&format!(
        "\nRows in quarantine: {quarantine}\nDead letters: {dead_letters}\nBuffer cache hit ratio: {}\n",
        hit.map_or("n/a".to_owned(), |h| format!("{:.2}%", h * 100.0))
    ));
    Ok(out)
}
