//! The database schema: the migrations in `migrations/` (embedded at build time), the runner that
//! applies them, and the version check every daemon makes before it starts.
//!
//! Architecture invariant: only `maintenance-worker migrate` (and test set-up) calls [`migrate`];
//! the other daemons only call [`check_version`].

pub mod partitions;

use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};
use tokio_postgres::Client;

use crate::db::DbError;

/// One migration file.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    pub version: i32,
    pub name: &'static str,
    pub sql: &'static str,
}

/// Every migration, in order. A new file in `migrations/` is added here too.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "0001_init.sql",
        sql: include_str!("../../../migrations/0001_init.sql"),
    },
    Migration {
        version: 2,
        name: "0002_dedupe_and_dead_letters.sql",
        sql: include_str!("../../../migrations/0002_dedupe_and_dead_letters.sql"),
    },
    Migration {
        version: 3,
        name: "0003_entry_ledger.sql",
        sql: include_str!("../../../migrations/0003_entry_ledger.sql"),
    },
    Migration {
        version: 4,
        name: "0004_exact_bookkeeping.sql",
        sql: include_str!("../../../migrations/0004_exact_bookkeeping.sql"),
    },
    Migration {
        version: 5,
        name: "0005_key_notifications.sql",
        sql: include_str!("../../../migrations/0005_key_notifications.sql"),
    },
    Migration {
        version: 6,
        name: "0006_incremental_summary.sql",
        sql: include_str!("../../../migrations/0006_incremental_summary.sql"),
    },
    Migration {
        version: 7,
        name: "0007_privacy.sql",
        sql: include_str!("../../../migrations/0007_privacy.sql"),
    },
    Migration {
        version: 8,
        name: "0008_session_owners.sql",
        sql: include_str!("../../../migrations/0008_session_owners.sql"),
    },
    Migration {
        version: 9,
        name: "0009_writer_pending.sql",
        sql: include_str!("../../../migrations/0009_writer_pending.sql"),
    },
    Migration {
        version: 10,
        name: "0010_c_collation.sql",
        sql: include_str!("../../../migrations/0010_c_collation.sql"),
    },
];

/// The schema version this build expects.
pub fn expected_version() -> i32 {
    MIGRATIONS.last().map_or(0, |m| m.version)
}

impl Migration {
    /// SHA-256 of the file, hex: an applied migration whose file later changed is refused.
    pub fn checksum(&self) -> String {
        hex::encode(Sha256::digest(self.sql.as_bytes()))
    }
}

/// Why the schema cannot be used or migrated.
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error(
        "migration {version} ({name}) was applied with checksum {applied} but the file now has \
         {current}; migrations must never be edited once applied"
    )]
    ChecksumMismatch {
        version: i32,
        name: String,
        applied: String,
        current: String,
    },
    #[error(
        "the database schema is at version {found} but this binary needs {expected}; \
         run `maintenance-worker migrate` first"
    )]
    TooOld { found: i32, expected: i32 },
    #[error(
        "the database schema is at version {found}, newer than this binary knows ({expected}); \
         upgrade the binary"
    )]
    TooNew { found: i32, expected: i32 },
}

/// What a migration run did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MigrateReport {
    pub applied: Vec<i32>,
    pub partitions_created: usize,
}

/// Key of the advisory lock that serialises migration runs across processes.
const MIGRATE_LOCK: i64 = 0x736c_7569_6365_0001;

/// Where partitions come from at migration time: the clock and the two windows.
#[derive(Debug, Clone, Copy)]
pub struct PartitionWindow {
    pub now: DateTime<Utc>,
    pub retention_months: u32,
    pub premake_months: u32,
}

/// Applies every pending migration, then creates the partitions of the retention and premake
/// windows, so a fresh install accepts events at once. Idempotent; two concurrent runs are
/// serialised by a session advisory lock, and the second finds nothing to do.
pub async fn migrate(
    client: &Client,
    window: PartitionWindow,
) -> Result<MigrateReport, SchemaError> {
    migrate_to(client, window, expected_version()).await
}

/// [`migrate`], applying the migrations up to `version` only (an upgrade's test starts from an
/// older schema with rows in it).
pub async fn migrate_to(
    client: &Client,
    window: PartitionWindow,
    version: i32,
) -> Result<MigrateReport, SchemaError> {
    client
        .execute("SELECT pg_advisory_lock($1)", &[&MIGRATE_LOCK])
        .await
        .map_err(DbError::query("take migration lock"))?;
    let out = migrate_locked(client, window, version).await;
    let _ = client
        .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATE_LOCK])
        .await;
    out
}

async fn migrate_locked(
    client: &Client,
    window: PartitionWindow,
    version: i32,
) -> Result<MigrateReport, SchemaError> {
    let applied = applied_migrations(client).await?;
    let mut report = MigrateReport::default();
    for m in MIGRATIONS.iter().filter(|m| m.version <= version) {
        if already_applied(&applied, m)? {
            continue;
        }
        apply(client, m).await?;
        tracing::info!(version = m.version, name = m.name, "Applied migration.");
        report.applied.push(m.version);
    }
    if let Some((found, ..)) = applied.last() {
        if *found > expected_version() {
            return Err(SchemaError::TooNew {
                found: *found,
                expected: expected_version(),
            });
        }
    }
    let months =
        partitions::wanted_months(window.now, window.retention_months, window.premake_months);
    report.partitions_created = partitions::ensure(client, &months).await?.len();
    Ok(report)
}

/// The migrations applied so far, as (version, name, checksum) in version order; the table
/// that records them is created first if needed.
async fn applied_migrations(client: &Client) -> Result<Vec<(i32, String, String)>, SchemaError> {
    client
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS sluice_schema_migrations (
                version    integer PRIMARY KEY,
                name       text NOT NULL,
                checksum   text NOT NULL,
                applied_at timestamptz NOT NULL DEFAULT now()
            )",
        )
        .await
        .map_err(DbError::query("create migrations table"))?;
    let rows = client
        .query(
            "SELECT version, name, checksum FROM sluice_schema_migrations ORDER BY version",
            &[],
        )
        .await
        .map_err(DbError::query("read applied migrations"))?;
    Ok(rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect())
}

/// True when `m` is among `applied`; an error when it was applied with another checksum (an
/// applied migration is never edited).
fn already_applied(applied: &[(i32, String, String)], m: &Migration) -> Result<bool, SchemaError> {
    let Some((_, name, sum)) = applied.iter().find(|(v, _, _)| *v == m.version) else {
        return Ok(false);
    };
    if *sum != m.checksum() {
        return Err(SchemaError::ChecksumMismatch {
            version: m.version,
            name: name.clone(),
            applied: sum.clone(),
            current: m.checksum(),
        });
    }
    Ok(true)
}

async fn apply(client: &Client, m: &Migration) -> Result<(), SchemaError> {
    let sql = format!(
        "BEGIN;\n{}\n;INSERT INTO sluice_schema_migrations (version, name, checksum) \
         VALUES ({}, '{}', '{}');\nCOMMIT;",
        m.sql,
        m.version,
        m.name.replace('\'', "''"),
        m.checksum()
    );
    if let Err(e) = client.batch_execute(&sql).await {
        let _ = client.batch_execute("ROLLBACK").await;
        return Err(DbError::Query {
            op: "apply migration",
            source: e,
        }
        .into());
    }
    Ok(())
}

/// The version the database is at; 0 when it was never migrated.
pub async fn current_version(client: &Client) -> Result<i32, DbError> {
    let tracked: bool = client
        .query_one(
            "SELECT to_regclass('sluice_schema_migrations') IS NOT NULL",
            &[],
        )
        .await
        .map_err(DbError::query("read schema version"))?
        .get(0);
    if !tracked {
        return Ok(0);
    }
    let row = client
        .query_one(
            "SELECT coalesce(max(version), 0) FROM sluice_schema_migrations",
            &[],
        )
        .await
        .map_err(DbError::query("read schema version"))?;
    Ok(row.get(0))
}

/// Refuses to go on when the schema is older (or newer) than this binary expects.
pub async fn check_version(client: &Client) -> Result<(), SchemaError> {
    let found = current_version(client).await?;
    let expected = expected_version();
    if found < expected {
        return Err(SchemaError::TooOld { found, expected });
    }
    if found > expected {
        return Err(SchemaError::TooNew { found, expected });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_are_numbered_in_order_from_one() {
        for (i, m) in MIGRATIONS.iter().enumerate() {
            assert_eq!(m.version, i as i32 + 1);
            assert!(
                m.name.starts_with(&format!("{:04}_", m.version)),
                "{}",
                m.name
            );
        }
    }

    #[test]
    fn every_file_in_migrations_is_listed() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../migrations");
        let mut files: Vec<String> = std::fs::read_dir(dir)
            .expect("migrations/ exists")
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".sql"))
            .collect();
        files.sort();
        let listed: Vec<&str> = MIGRATIONS.iter().map(|m| m.name).collect();
        assert_eq!(files, listed);
    }
}
