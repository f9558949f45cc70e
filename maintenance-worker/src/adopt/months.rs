//! The move of one month of original rows: its plan and progress row in `sluice_adopt_months`,
//! the batches, and the verification that every valid old row is in `analytics_events` once.

use std::time::{Duration, Instant};

use chrono::{DateTime, Datelike, NaiveDate, Utc};
use serde::Serialize;
use shared::db::DbError;
use shared::schema::partitions::{self, Month};
use tokio_postgres::Client;

use super::shape::{Shape, ORIGINAL};
use super::{AdoptError, Options};

/// The progress of the move, one row a month of the original table. Kept after the move as its
/// record; `maintenance-worker adopt` run again reports from it.
const PROGRESS_TABLE: &str = "CREATE TABLE IF NOT EXISTS sluice_adopt_months (
    month       date PRIMARY KEY,
    old_rows    bigint NOT NULL,
    moved       bigint NOT NULL DEFAULT 0,
    skipped     bigint NOT NULL DEFAULT 0,
    last_ts     timestamptz,
    last_id     bigint,
    done_at     timestamptz,
    found       bigint,
    verified_at timestamptz
)";

/// Why a month's rows stay in the old table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    PastRetention,
    NoPartition,
}

/// One month of the move, as reported.
#[derive(Debug, Serialize)]
pub struct MonthReport {
    /// `YYYY-MM`.
    pub month: String,
    /// Rows of the original table in the month when the move was planned.
    pub old_rows: i64,
    /// Rows copied into `analytics_events`.
    pub copied: i64,
    /// Rows without an app or an event name, left behind.
    pub skipped: i64,
    /// Rows of `analytics_events` carrying an id derived from this month's old rows.
    pub found: Option<i64>,
    /// `found` equals the valid old rows and `copied`, and no id is there twice.
    pub verified: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub left_behind: Option<Reason>,
}

/// A month's progress row.
pub struct Planned {
    month: NaiveDate,
    old_rows: i64,
}

fn start(day: NaiveDate) -> DateTime<Utc> {
    day.and_hms_opt(0, 0, 0).unwrap_or_default().and_utc()
}

fn month_of(day: NaiveDate) -> Month {
    Month::of(start(day))
}

/// The months of the original table, newest first; recorded on the first run, read back on the
/// next.
pub async fn plan(client: &Client, shape: &Shape) -> Result<Vec<Planned>, DbError> {
    client
        .batch_execute(PROGRESS_TABLE)
        .await
        .map_err(DbError::query("create the adopt progress table"))?;
    client
        .execute(
            &format!(
                "INSERT INTO sluice_adopt_months (month, old_rows) SELECT * FROM ({}) m \
                  WHERE NOT EXISTS (SELECT 1 FROM sluice_adopt_months)",
                shape.months_sql()
            ),
            &[],
        )
        .await
        .map_err(DbError::query("plan the months of the original table"))?;
    let rows = client
        .query(
            "SELECT month, old_rows FROM sluice_adopt_months ORDER BY month DESC",
            &[],
        )
        .await
        .map_err(DbError::query("read the adopt progress"))?;
    Ok(rows
        .iter()
        .map(|r| Planned {
            month: r.get(0),
            old_rows: r.get(1),
        })
        .collect())
}

/// Rows of the original table without a time (no month to go to).
pub async fn no_timestamp(client: &Client) -> Result<i64, DbError> {
    let row = client
        .query_one(
            &format!("SELECT count(*)::bigint FROM {ORIGINAL} WHERE \"timestamp\" IS NULL"),
            &[],
        )
        .await
        .map_err(DbError::query("count original rows without a time"))?;
    Ok(row.get(0))
}

/// Copies what is left of the month and verifies it (or says why it stays behind).
pub async fn adopt(
    client: &Client,
    shape: &Shape,
    planned: Planned,
    floor: Month,
    options: Options,
) -> Result<MonthReport, AdoptError> {
    let month = month_of(planned.month);
    if !partitions::existing(client).await?.contains(&month) {
        return Ok(left_behind(&planned, month, floor));
    }
    copy(client, shape, &planned, options).await?;
    verify(client, shape, &planned).await
}

/// A month without a partition: older than the month of the retention floor (`floor`), or
/// after the premade partitions.
fn left_behind(planned: &Planned, month: Month, floor: Month) -> MonthReport {
    MonthReport {
        month: label(planned.month),
        old_rows: planned.old_rows,
        copied: 0,
        skipped: 0,
        found: None,
        verified: false,
        left_behind: Some(if month < floor {
            Reason::PastRetention
        } else {
            Reason::NoPartition
        }),
    }
}

fn label(day: NaiveDate) -> String {
    format!("{:04}-{:02}", day.year(), day.month())
}

/// The month's `[start, end)`.
fn bounds(planned: &Planned) -> (DateTime<Utc>, DateTime<Utc>) {
    (
        start(planned.month),
        month_of(planned.month).plus(1).start(),
    )
}

/// Where a month's copy stands: after which (time, id) the next batch starts, rows copied so
/// far, and whether it is finished.
struct Mark {
    after: DateTime<Utc>,
    after_id: i64,
    moved: i64,
    done: bool,
}

async fn mark(client: &Client, planned: &Planned) -> Result<Mark, DbError> {
    let row = client
        .query_one(
            "SELECT coalesce(last_ts, $2), coalesce(last_id, -9223372036854775808), \
                    moved, done_at IS NOT NULL FROM sluice_adopt_months WHERE month = $1",
            &[&planned.month, &start(planned.month)],
        )
        .await
        .map_err(DbError::query("read the month's progress"))?;
    Ok(Mark {
        after: row.get(0),
        after_id: row.get(1),
        moved: row.get(2),
        done: row.get(3),
    })
}

/// Batches until the month has no old row after its mark; each batch and its mark commit
/// together, so a killed run resumes exactly after its last committed batch.
async fn copy(
    client: &Client,
    shape: &Shape,
    planned: &Planned,
    options: Options,
) -> Result<(), DbError> {
    let sql = client
        .prepare(&shape.batch_sql())
        .await
        .map_err(DbError::query("prepare the adopt batch"))?;
    let mut logged = Instant::now();
    loop {
        let m = mark(client, planned).await?;
        if m.done {
            return Ok(());
        }
        if logged.elapsed() > Duration::from_secs(5) {
            tracing::info!(month = %label(planned.month), moved = m.moved, of = planned.old_rows, "Adopting.");
            logged = Instant::now();
        }
        if !batch(client, &sql, planned, &m, options).await? {
            finished(client, planned).await?;
        }
    }
}

/// Copies the next batch after the mark; false when there was none.
async fn batch(
    client: &Client,
    sql: &tokio_postgres::Statement,
    planned: &Planned,
    m: &Mark,
    options: Options,
) -> Result<bool, DbError> {
    let (from, to) = bounds(planned);
    let params: [&(dyn tokio_postgres::types::ToSql + Sync); 6] = [
        &from,
        &to,
        &m.after,
        &m.after_id,
        &options.batch_rows,
        &planned.month,
    ];
    let copied = client
        .query_opt(sql, &params)
        .await
        .map_err(DbError::query("copy a batch of original rows"))?;
    Ok(copied.is_some())
}

/// Marks the month copied: a batch found no old row after its mark.
async fn finished(client: &Client, planned: &Planned) -> Result<(), DbError> {
    client
        .execute(
            "UPDATE sluice_adopt_months SET done_at = now() WHERE month = $1",
            &[&planned.month],
        )
        .await
        .map_err(DbError::query("mark the month copied"))?;
    Ok(())
}

/// The month as the progress table has it (a verified month is reported from there).
async fn recorded(client: &Client, planned: &Planned) -> Result<MonthReport, DbError> {
    let row = client
        .query_one(
            "SELECT moved, skipped, found, verified_at IS NOT NULL FROM sluice_adopt_months \
              WHERE month = $1",
            &[&planned.month],
        )
        .await
        .map_err(DbError::query("read the month's progress"))?;
    Ok(MonthReport {
        month: label(planned.month),
        old_rows: planned.old_rows,
        copied: row.get(0),
        skipped: row.get(1),
        found: row.get(2),
        verified: row.get(3),
        left_behind: None,
    })
}

/// The month's valid old rows, its copies, and its distinct copies.
async fn counts(
    client: &Client,
    shape: &Shape,
    planned: &Planned,
) -> Result<(i64, i64, i64), DbError> {
    let (from, to) = bounds(planned);
    let eligible = client
        .query_one(&shape.eligible_sql(), &[&from, &to])
        .await
        .map_err(DbError::query("count the month's original rows"))?;
    let found = client
        .query_one(&shape.found_sql(), &[&from, &to])
        .await
        .map_err(DbError::query("find the month's copied rows"))?;
    Ok((eligible.get(1), found.get(0), found.get(1)))
}

/// Counts the month's old rows and their copies: verified when every valid old row is found
/// exactly once. The result is recorded, so a later run reports it without counting again.
async fn verify(
    client: &Client,
    shape: &Shape,
    planned: &Planned,
) -> Result<MonthReport, AdoptError> {
    let mut report = recorded(client, planned).await?;
    if report.verified {
        return Ok(report);
    }
    let (valid, all, distinct) = counts(client, shape, planned).await?;
    report.found = Some(all);
    report.verified = all == distinct && all == valid && all == report.copied;
    if !report.verified {
        tracing::error!(month = %report.month, valid, copied = report.copied, found = all, distinct, "The month's copy does not match its original rows.");
    }
    client
        .execute(
            "UPDATE sluice_adopt_months SET found = $2, \
                    verified_at = CASE WHEN $3 THEN now() END WHERE month = $1",
            &[&planned.month, &all, &report.verified],
        )
        .await
        .map_err(DbError::query("record the month's verification"))?;
    Ok(report)
}
