//! `maintenance-worker migrate`: applies `migrations/` and creates the partitions of the
//! retention and premake windows.

use chrono::Utc;
use shared::db::{connect_one, pg_config};
use shared::schema::{self, MigrateReport, PartitionWindow};

use crate::config::MaintenanceConfig;

/// Applies every pending migration on the primary. Safe to run concurrently with itself.
pub async fn run(config: &MaintenanceConfig) -> anyhow::Result<MigrateReport> {
    let (client, conn) =
        connect_one(&pg_config(&config.db.primary, &config.db), &config.db).await?;
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
