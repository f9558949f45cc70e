//! The migrated template every test database is cloned from, migrated once per schema version
//! and per month (partitions follow the clock).
//!
//! Tests run in parallel processes (nextest), so the template is built under an advisory lock
//! and published by renaming it.

use shared::schema::{self, PartitionWindow, MIGRATIONS};

use crate::db::{connect, recreate_database};

/// The template's name changes with the migrations and the month, so a stale template is never
/// used; it is built once by whichever test gets there first.
pub(crate) async fn ensure_template() -> String {
    let sums: String = MIGRATIONS.iter().map(|m| m.checksum()).collect();
    let digest = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(sums.as_bytes()))
    };
    let now = chrono::Utc::now();
    let name = format!("sluice_tmpl_{}_{}", &digest[..12], now.format("%Y%m"));
    let admin = connect("postgres").await;
    admin
        .execute("SELECT pg_advisory_lock(7304863)", &[])
        .await
        .expect("template lock");
    let exists = admin
        .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&name])
        .await
        .expect("look up template")
        .is_some();
    if !exists {
        build(&admin, &name, now).await;
    }
    let _ = admin
        .execute("SELECT pg_advisory_unlock(7304863)", &[])
        .await;
    name
}

/// Drops the stale templates, migrates a new one under a building name and publishes it as
/// `name`. Runs under the template lock.
async fn build(admin: &tokio_postgres::Client, name: &str, now: chrono::DateTime<chrono::Utc>) {
    // Templates of older migrations or months are of no use any more.
    let stale: Vec<String> = admin
        .query(
            "SELECT datname::text FROM pg_database WHERE datname LIKE 'sluice\\_tmpl\\_%' AND datname <> $1",
            &[&name],
        )
        .await
        .map(|rows| rows.iter().map(|r| r.get(0)).collect())
        .unwrap_or_default();
    for old in stale {
        let _ = admin
            .batch_execute(&format!("DROP DATABASE IF EXISTS {old} WITH (FORCE)"))
            .await;
    }
    let building = format!("{name}_building");
    // A half-built template of a run that died is dropped first.
    recreate_database(admin, &building)
        .await
        .expect("create template database");
    {
        let client = connect(&building).await;
        schema::migrate(
            &client,
            PartitionWindow {
                now,
                retention_months: 12,
                premake_months: 6,
            },
        )
        .await
        .expect("migrate template");
    }
    // Wait for the migration connection to be gone before renaming.
    for _ in 0..100 {
        let busy = admin
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = $1",
                &[&building],
            )
            .await
            .map(|r| r.get::<_, i64>(0))
            .unwrap_or(0);
        if busy == 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    admin
        .batch_execute(&format!("ALTER DATABASE {building} RENAME TO {name}"))
        .await
        .expect("publish template");
}
