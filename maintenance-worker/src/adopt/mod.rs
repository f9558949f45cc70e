//! `maintenance-worker adopt`: upgrades an installation of the original design in place. Its
//! plain `analytics_events` (an integer `id`, `app_id`, `event_name`, `timestamp`, and usually
//! `user_id`, `session_id`, `metadata`) is renamed `analytics_events_original`, the migrations
//! create the partitioned table, and the old rows are copied into it month by month, newest first,
//! in bounded batches, while the new pipeline already takes events.
//!
//! - Each batch inserts its rows and records how far its month got in one statement
//!   (`sluice_adopt_months`), so an interrupted run resumes where the last committed batch ended
//!   and never copies a row twice.
//! - Each row's `event_id` is derived from its old id ([`shape::EVENT_ID`]), so the verification
//!   finds every copied row again: per month, the copied rows must equal the old rows, with no id
//!   twice.
//! - Rows of a month with no partition (older than `RETENTION_MONTHS`, or past the premade
//!   months), without a time, or without an app or event name are counted and left in the old
//!   table, which the operator drops once satisfied.

mod months;
pub mod shape;

use chrono::Utc;
use serde::Serialize;
use shared::db::{connect_one, pg_config, DbError};
use shared::schema::partitions::{retention_floor, Month};
use tokio_postgres::Client;

use crate::config::MaintenanceConfig;
pub use months::MonthReport;
use shape::{Shape, ORIGINAL};

/// Session advisory lock key of `adopt` ("adopt" in ASCII): one run at a time.
const ADOPT_LOCK: i64 = 0x61_646f_7074;

/// How long a run waits for the lock of another before it gives up.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(120);

/// Why `adopt` stopped.
#[derive(Debug, thiserror::Error)]
pub enum AdoptError {
    #[error("analytics_events is not the original design's table: {0}")]
    Shape(String),
    #[error("another `maintenance-worker adopt` has been running on this database for {}s", LOCK_WAIT.as_secs())]
    Busy,
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("migrations: {0}")]
    Migrate(String),
}

/// What `adopt` was asked to do.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// Old rows copied per statement (and transaction).
    pub batch_rows: i64,
}

/// What `adopt` did, printed as JSON.
#[derive(Debug, Serialize)]
pub struct Report {
    /// Whether this run found the original table and moved it aside (false when resuming).
    pub moved_aside: bool,
    /// The apps of the old rows, registered in `apps` so keys can be made for them.
    pub apps_registered: u64,
    pub months: Vec<MonthReport>,
    /// Old rows copied, in all months.
    pub copied: i64,
    /// Old rows left in `analytics_events_original`, by reason.
    pub left_behind: LeftBehind,
    /// Every month with a partition was copied and verified.
    pub complete: bool,
}

#[derive(Debug, Default, Serialize)]
pub struct LeftBehind {
    /// Rows of months older than the retention window (no partition).
    pub past_retention: i64,
    /// Rows of months after the premade partitions.
    pub no_partition: i64,
    /// Rows without an app or an event name, which `analytics_events` cannot hold.
    pub invalid: i64,
    /// Rows without a time.
    pub no_timestamp: i64,
}

/// Refuses to run the migrations over the original design's table (migration 1 would fail on it
/// with a bare "already exists"), naming the command that upgrades it.
pub async fn refuse_original(client: &Client) -> Result<(), AdoptError> {
    if original_in_place(client).await? {
        return Err(AdoptError::Migrate(
            "this database holds the original design's plain analytics_events: run \
             `maintenance-worker adopt`, which moves it aside, migrates and copies its rows"
                .into(),
        ));
    }
    Ok(())
}

/// `analytics_events` exists and is a plain table (the partitioned one is relkind `p`).
async fn original_in_place(client: &Client) -> Result<bool, DbError> {
    let row = client
        .query_one(
            "SELECT coalesce((SELECT relkind = 'r' FROM pg_class \
                               WHERE oid = to_regclass('analytics_events')), false)",
            &[],
        )
        .await
        .map_err(DbError::query("find the original table"))?;
    Ok(row.get(0))
}

/// Runs the whole upgrade (or resumes it): move aside, migrate, copy, verify.
pub async fn run(config: &MaintenanceConfig, options: Options) -> Result<Report, AdoptError> {
    let (client, conn) = connect_one(
        &pg_config(&config.db.session_endpoint(), &config.db),
        &config.db,
    )
    .await?;
    lock(&client).await?;
    let out = adopt(&client, config, options).await;
    drop(client);
    let _ = conn.await;
    out
}

/// Takes the adopt lock, waiting up to [`LOCK_WAIT`] for it: a run killed mid-batch leaves its
/// statement running on the server, holding the lock, until the statement ends and the server
/// finds the connection gone.
async fn lock(client: &Client) -> Result<(), AdoptError> {
    let free: bool = client
        .query_one("SELECT pg_try_advisory_lock($1)", &[&ADOPT_LOCK])
        .await
        .map_err(DbError::query("take the adopt lock"))?
        .get(0);
    if free {
        return Ok(());
    }
    tracing::warn!(
        "Another adopt holds the lock (or a killed one's last batch is finishing): waiting."
    );
    client
        .batch_execute(&format!("SET lock_timeout = '{}s'", LOCK_WAIT.as_secs()))
        .await
        .map_err(DbError::query("set the lock timeout"))?;
    match client
        .execute("SELECT pg_advisory_lock($1)", &[&ADOPT_LOCK])
        .await
    {
        Ok(_) => Ok(()),
        Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::LOCK_NOT_AVAILABLE) => {
            Err(AdoptError::Busy)
        }
        Err(e) => Err(DbError::Query {
            op: "take the adopt lock",
            source: e,
        }
        .into()),
    }
}

async fn adopt(
    client: &Client,
    config: &MaintenanceConfig,
    options: Options,
) -> Result<Report, AdoptError> {
    let moved_aside = move_aside(client).await?;
    crate::migrate::run(config)
        .await
        .map_err(|e| AdoptError::Migrate(format!("{e:#}")))?;
    client
        .batch_execute("SET statement_timeout = 0; SET lock_timeout = 0")
        .await
        .map_err(DbError::query("lift the statement timeout"))?;
    let Some(shape) = original_shape(client).await? else {
        return Ok(Report::nothing(moved_aside));
    };
    let apps_registered = register_apps(client).await?;
    let months = months::plan(client, &shape).await?;
    let floor = Month::of(retention_floor(Utc::now(), config.retention_months));
    let mut reports = Vec::new();
    for month in months {
        reports.push(months::adopt(client, &shape, month, floor, options).await?);
    }
    Ok(Report::of(
        moved_aside,
        apps_registered,
        reports,
        months::no_timestamp(client).await?,
    ))
}

/// Renames the original table (with its indexes, constraints and sequence, so none of their
/// names can collide with the new schema's) and the original summary view, in one transaction.
/// False when there is nothing to move (already moved, or a Sluice database).
async fn move_aside(client: &Client) -> Result<bool, AdoptError> {
    if !original_in_place(client).await? {
        return Ok(false);
    }
    Shape::of(&columns(client, "analytics_events").await?)?;
    client
        .batch_execute(MOVE_ASIDE)
        .await
        .map_err(DbError::query("move the original table aside"))?;
    tracing::info!(
        table = ORIGINAL,
        "Moved the original analytics_events aside."
    );
    Ok(true)
}

/// The renames of [`move_aside`]: the table, then every index and sequence of it whose name
/// starts with `analytics_events`, and an original `daily_analytics_summary` view.
const MOVE_ASIDE: &str = "BEGIN;
ALTER TABLE analytics_events RENAME TO analytics_events_original;
DO $$
DECLARE r record;
BEGIN
  FOR r IN SELECT c.relname, c.relkind FROM pg_class c
            WHERE c.relname LIKE 'analytics\\_events\\_%' AND c.relname NOT LIKE 'analytics\\_events\\_original%'
              AND c.relnamespace = current_schema()::regnamespace AND c.relkind IN ('i', 'S')
  LOOP
    EXECUTE format('ALTER %s %I RENAME TO %I',
                   CASE r.relkind WHEN 'i' THEN 'INDEX' ELSE 'SEQUENCE' END,
                   r.relname, 'analytics_events_original' || substr(r.relname, 17));
  END LOOP;
  IF to_regclass('daily_analytics_summary') IS NOT NULL
     AND to_regclass('sluice_schema_migrations') IS NULL THEN
    ALTER MATERIALIZED VIEW daily_analytics_summary RENAME TO daily_analytics_summary_original;
  END IF;
END $$;
COMMIT;";

/// Column names and types of a table.
async fn columns(client: &Client, table: &str) -> Result<Vec<(String, String)>, DbError> {
    let rows = client
        .query(
            "SELECT attname::text, format_type(atttypid, atttypmod) FROM pg_attribute \
              WHERE attrelid = to_regclass($1) AND attnum > 0 AND NOT attisdropped",
            &[&table],
        )
        .await
        .map_err(DbError::query("read the original table's columns"))?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

/// The shape of `analytics_events_original`, once an index serves the move's keyset reads;
/// `None` when there is no original table.
async fn original_shape(client: &Client) -> Result<Option<Shape>, AdoptError> {
    let columns = columns(client, ORIGINAL).await?;
    if columns.is_empty() {
        return Ok(None);
    }
    let shape = Shape::of(&columns)?;
    client
        .batch_execute(&format!(
            "CREATE INDEX IF NOT EXISTS analytics_events_original_adopt_idx \
               ON {ORIGINAL} (\"timestamp\", id)"
        ))
        .await
        .map_err(DbError::query("index the original table by time"))?;
    Ok(Some(shape))
}

/// Registers every app of the old rows in `apps` (named after its id), so that
/// `ingest-gateway keys create --app <id>` can give it keys; returns how many were new.
async fn register_apps(client: &Client) -> Result<u64, DbError> {
    client
        .execute(
            &format!(
                "INSERT INTO apps (app_id, name) \
                 SELECT DISTINCT o.app_id::text, left(o.app_id::text, 200) FROM {ORIGINAL} o \
                  WHERE o.app_id IS NOT NULL AND length(o.app_id::text) > 0 \
                 ON CONFLICT (app_id) DO NOTHING"
            ),
            &[],
        )
        .await
        .map_err(DbError::query("register the original apps"))
}

impl Report {
    fn nothing(moved_aside: bool) -> Self {
        Self::of(moved_aside, 0, Vec::new(), 0)
    }

    fn of(moved_aside: bool, apps: u64, months: Vec<MonthReport>, no_timestamp: i64) -> Self {
        let mut left = LeftBehind {
            no_timestamp,
            ..LeftBehind::default()
        };
        for m in &months {
            left.invalid += m.skipped;
            match m.left_behind {
                Some(months::Reason::PastRetention) => left.past_retention += m.old_rows,
                Some(months::Reason::NoPartition) => left.no_partition += m.old_rows,
                None => {}
            }
        }
        Self {
            moved_aside,
            apps_registered: apps,
            copied: months.iter().map(|m| m.copied).sum(),
            complete: months.iter().all(|m| m.left_behind.is_some() || m.verified),
            months,
            left_behind: left,
        }
    }
}
