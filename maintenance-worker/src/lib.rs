//! The maintenance worker: applies migrations, and (as a daemon) keeps partitions, retention,
//! the summary view and planner statistics in order on its own schedules.
//!
//! - [`config`]: environment to [`config::MaintenanceConfig`].
//! - [`migrate`]: the `migrate` command.

pub mod config;
pub mod migrate;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use shared::daemon::{self, Ops};
use shared::metrics::Daemon;

pub use config::MaintenanceConfig;

/// Runs the daemon until `shutdown` is cancelled.
pub async fn run(
    config: MaintenanceConfig,
    ops_listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let pools = daemon::open_pools(&config.db).await?;
    let ops = Ops::start(
        Daemon::Maintenance,
        ops_listener,
        daemon::pools_ready(pools.clone()),
        shutdown.clone(),
    );
    daemon::spawn_pool_upkeep(&pools, ops.stopped.clone());
    tracing::info!("Maintenance worker running.");
    shutdown.cancelled().await;
    tracing::info!("Maintenance worker stopped.");
    ops.stop().await;
    Ok(())
}
