//! `maintenance-worker migrate`: applies `migrations/` and creates the partitions of the
//! retention and premake windows.

use chrono::Utc;
use shared::db::{connect_one, pg_config};
use shared::schema::{self, MigrateReport, PartitionWindow};

use crate::config::MaintenanceConfig;

/// Applies every pending migration on the primary. Safe to run concurrently with itself.
pub async fn run(config: &MaintenanceConfig) -> anyhow::Result<MigrateReport> {
    let (client, conn) = connect_one(
        &pg_config(&config.db.session_endpoint(), &config.db),
        &config.db,
    )
    .await?;
    crate::adopt::refuse_original(&client).await?;
    let report = schema::migrate(
        &client,
        PartitionWindow {
            now: Utc::now(),
            retention_months: config.retention_months,
            premake_months: config.premake_months,
        },
    )
    .await?;
    claim_pipeline_zero(&client, &config.stream_prefix).await?;
    drop(client);
    let _ = conn.await;
    Ok(report)
}

/// On an installation upgraded past migration 4 (ledger rows written before pipelines had
/// numbers, and none registered yet), registers this installation's `STREAM_PREFIX` as pipeline
/// 0, whose ledger keys are the old ones: so no other prefix can take 0 first and the entries
/// committed before the upgrade stay recognised.
async fn claim_pipeline_zero(client: &tokio_postgres::Client, prefix: &str) -> anyhow::Result<()> {
    let n = client
        .execute(
            "INSERT INTO stream_pipelines (pipeline_id, stream_prefix) SELECT 0, $1 \
             WHERE NOT EXISTS (SELECT 1 FROM stream_pipelines) \
               AND EXISTS (SELECT 1 FROM entry_ledger) \
             ON CONFLICT DO NOTHING",
            &[&prefix],
        )
        .await?;
    if n > 0 {
        tracing::info!(
            prefix,
            "Registered the existing stream prefix as pipeline 0."
        );
    }
    Ok(())
}
