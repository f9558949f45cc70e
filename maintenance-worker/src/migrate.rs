//! `maintenance-worker migrate`: applies `migrations/` and creates the partitions of the
//! retention and premake windows.

use chrono::Utc;
use shared::db::{pg_config, DbError};
use shared::schema::{self, MigrateReport, PartitionWindow};

use crate::config::MaintenanceConfig;

/// Applies every pending migration on the primary. Safe to run concurrently with itself.
pub async fn run(config: &MaintenanceConfig) -> anyhow::Result<MigrateReport> {
    let (client, conn) = pg_config(&config.db.primary, &config.db)
        .connect(tokio_postgres::NoTls)
        .await
        .map_err(DbError::query("connect for migration"))?;
    let conn = tokio::spawn(conn);
    let report = schema::migrate(
        &client,
        PartitionWindow {
            now: Utc::now(),
            retention_months: config.retention_months,
            premake_months: config.premake_months,
        },
    )
    .await?;
    drop(client);
    let _ = conn.await;
    Ok(report)
}
