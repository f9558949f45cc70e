//! The batch writer: drains the event streams through one consumer group and writes the events
//! into `analytics_events` with binary COPY, exactly once.
//!
//! - [`config`]: environment to [`WriterConfig`].

pub mod config;

use tokio_util::sync::CancellationToken;

use shared::daemon::{self, Ops};
use shared::metrics::Daemon;
use tokio::net::TcpListener;

pub use config::WriterConfig;

/// Runs the writer until `shutdown` is cancelled.
pub async fn run(
    config: WriterConfig,
    ops_listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let pools = daemon::open_pools(&config.db).await?;
    let ops = Ops::start(
        Daemon::Writer,
        ops_listener,
        daemon::pools_ready(pools.clone()),
        shutdown.clone(),
    );
    daemon::spawn_pool_upkeep(&pools, ops.stopped.clone());
    tracing::info!(consumer = %config.consumer, "Batch writer running.");
    shutdown.cancelled().await;
    tracing::info!("Batch writer stopped.");
    ops.stop().await;
    Ok(())
}
