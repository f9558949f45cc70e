//! Monthly partitions of `analytics_events`: names and bounds computed from the clock, never taken
//! from input, and the DDL that creates them.

use chrono::{DateTime, Datelike, NaiveDate, TimeZone, Utc};
use tokio_postgres::Client;

use crate::db::DbError;

/// A calendar month (UTC), the unit of partitioning.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Month {
    pub year: i32,
    /// 1 to 12.
    pub month: u32,
}

impl Month {
    pub fn of(t: DateTime<Utc>) -> Self {
        Self {
            year: t.year(),
            month: t.month(),
        }
    }

    /// `n` months later (or earlier when negative).
    pub fn plus(self, n: i32) -> Self {
        let idx = self.year * 12 + (self.month as i32 - 1) + n;
        Self {
            year: idx.div_euclid(12),
            month: idx.rem_euclid(12) as u32 + 1,
        }
    }

    /// Midnight UTC on the first day of the month.
    pub fn start(self) -> DateTime<Utc> {
        let day = NaiveDate::from_ymd_opt(self.year, self.month, 1)
            .and_then(|d| d.and_hms_opt(0, 0, 0))
            .expect("a month's first day exists");
        Utc.from_utc_datetime(&day)
    }

    /// The partition holding this month's events.
    pub fn partition_name(self) -> String {
        format!("analytics_events_p{:04}{:02}", self.year, self.month)
    }

    /// Parses a name made by [`Month::partition_name`].
    pub fn from_partition_name(name: &str) -> Option<Self> {
        let digits = name.strip_prefix("analytics_events_p")?;
        if digits.len() != 6 || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let year = digits[..4].parse().ok()?;
        let month = digits[4..].parse().ok()?;
        (1..=12).contains(&month).then_some(Self { year, month })
    }

    /// `CREATE TABLE IF NOT EXISTS ... PARTITION OF` for this month; the name and the bounds are
    /// computed here, so nothing from outside reaches the DDL.
    pub fn create_sql(self) -> String {
        format!(
            "CREATE TABLE IF NOT EXISTS {} PARTITION OF analytics_events \
             FOR VALUES FROM ('{}') TO ('{}')",
            self.partition_name(),
            self.start().format("%Y-%m-%d %H:%M:%S+00"),
            self.plus(1).start().format("%Y-%m-%d %H:%M:%S+00"),
        )
    }
}

/// The months that must have a partition at `now`: from the month holding the retention floor
/// through `premake_months` after the current month.
pub fn wanted_months(now: DateTime<Utc>, retention_months: u32, premake_months: u32) -> Vec<Month> {
    let first = Month::of(retention_floor(now, retention_months));
    let last = Month::of(now).plus(premake_months as i32);
    std::iter::successors(Some(first), |m| Some(m.plus(1)))
        .take_while(|m| *m <= last)
        .collect()
}

/// The oldest instant inside the retention window at `now` (`now` minus `retention_months`
/// calendar months): older events are refused by the gateway, and a partition that ends before it
/// is dropped by the retention job.
pub fn retention_floor(now: DateTime<Utc>, retention_months: u32) -> DateTime<Utc> {
    now.checked_sub_months(chrono::Months::new(retention_months))
        .unwrap_or(DateTime::<Utc>::MIN_UTC)
}

/// Creates every missing partition in `months`, each under a short lock timeout so the DDL never
/// queues behind a long query (and so never stalls the writers queued behind it). Returns the
/// months it created.
pub async fn ensure(client: &Client, months: &[Month]) -> Result<Vec<Month>, DbError> {
    let existing = existing(client).await?;
    let mut created = Vec::new();
    for m in months {
        if existing.contains(m) {
            continue;
        }
        with_lock_retry(client, "create partition", &m.create_sql()).await?;
        created.push(*m);
    }
    Ok(created)
}

/// The months that have a partition now.
pub async fn existing(client: &Client) -> Result<Vec<Month>, DbError> {
    let rows = client
        .query(
            "SELECT c.relname::text FROM pg_inherits i \
             JOIN pg_class c ON c.oid = i.inhrelid \
             JOIN pg_class p ON p.oid = i.inhparent \
             WHERE p.relname = 'analytics_events' AND p.relnamespace = current_schema()::regnamespace",
            &[],
        )
        .await
        .map_err(DbError::query("list partitions"))?;
    let mut months: Vec<Month> = rows
        .iter()
        .filter_map(|r| Month::from_partition_name(r.get(0)))
        .collect();
    months.sort();
    Ok(months)
}

/// Runs one DDL statement with `lock_timeout` set, retrying a few times when the lock is busy.
/// The statement is sent on its own (not in a transaction block), so `CONCURRENTLY` forms work;
/// the statement timeout is lifted for it, since DDL may legitimately take long once it holds
/// its lock.
pub async fn with_lock_retry(client: &Client, op: &'static str, sql: &str) -> Result<(), DbError> {
    let mut backoff = crate::retry::Backoff::standard();
    let set = "SET lock_timeout = '2s'";
    let reset = "RESET lock_timeout";
    client
        .batch_execute(&format!("{set}; SET statement_timeout = 0"))
        .await
        .map_err(DbError::query(op))?;
    let mut attempt = 0;
    let out = loop {
        attempt += 1;
        match client.batch_execute(sql).await {
            Ok(()) => break Ok(()),
            Err(e) if e.code().map(|c| c.code()) == Some("55P03") && attempt < 10 => {
                tracing::info!(op, attempt, "DDL lock busy; retrying.");
                backoff.sleep_at_most(None).await;
            }
            Err(e) => break Err(DbError::Query { op, source: e }),
        }
    };
    let _ = client
        .batch_execute(&format!("{reset}; RESET statement_timeout"))
        .await;
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(y: i32, m: u32, d: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, m, d, 12, 0, 0)
            .single()
            .expect("valid")
    }

    #[test]
    fn month_arithmetic_crosses_years() {
        let nov = Month {
            year: 2026,
            month: 11,
        };
        assert_eq!(
            nov.plus(2),
            Month {
                year: 2027,
                month: 1
            }
        );
        assert_eq!(
            nov.plus(-11),
            Month {
                year: 2025,
                month: 12
            }
        );
        assert_eq!(
            nov.plus(-23),
            Month {
                year: 2024,
                month: 12
            }
        );
        assert_eq!(
            Month {
                year: 2026,
                month: 1
            }
            .plus(-1),
            Month {
                year: 2025,
                month: 12
            }
        );
    }

    #[test]
    fn names_and_bounds() {
        let m = Month {
            year: 2026,
            month: 12,
        };
        assert_eq!(m.partition_name(), "analytics_events_p202612");
        assert_eq!(
            Month::from_partition_name("analytics_events_p202612"),
            Some(m)
        );
        assert_eq!(Month::from_partition_name("analytics_events_p202613"), None);
        assert_eq!(Month::from_partition_name("analytics_events_p2026"), None);
        assert_eq!(Month::from_partition_name("other_p202612"), None);
        assert_eq!(
            m.create_sql(),
            "CREATE TABLE IF NOT EXISTS analytics_events_p202612 PARTITION OF analytics_events \
             FOR VALUES FROM ('2026-12-01 00:00:00+00') TO ('2027-01-01 00:00:00+00')"
        );
    }

    #[test]
    fn wanted_months_cover_retention_and_premake() {
        let months = wanted_months(at(2026, 11, 28), 12, 6);
        assert_eq!(months.len(), 19);
        assert_eq!(
            months[0],
            Month {
                year: 2025,
                month: 11
            }
        );
        assert_eq!(
            months[18],
            Month {
                year: 2027,
                month: 5
            }
        );
        assert_eq!(retention_floor(at(2026, 11, 28), 12), at(2025, 11, 28));
    }
}
