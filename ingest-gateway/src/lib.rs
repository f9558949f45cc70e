//! The ingest gateway: accepts events over HTTP and queues them on Redis Streams; serves the
//! read API; manages apps and keys.
//!
//! - [`config`]: environment to [`GatewayConfig`].
//! - [`server`]: the accept loop, connection limits and graceful shutdown.
//! - [`routes`]: which handler answers which request, and the state they share.
//! - [`reply`]: JSON responses.
//! - [`apps`]: apps and API keys (`apps create`, `keys revoke`).

pub mod apps;
pub mod config;
pub mod reply;
pub mod routes;
pub mod server;

use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use shared::daemon::{self, Ops};
use shared::metrics::Daemon;

pub use config::GatewayConfig;

/// Runs the gateway until `shutdown` is cancelled.
pub async fn run(
    config: GatewayConfig,
    listener: TcpListener,
    ops_listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let pools = daemon::open_pools(&config.db).await?;
    let ops = Ops::start(
        Daemon::Gateway,
        ops_listener,
        daemon::pools_ready(pools.clone()),
        shutdown.clone(),
    );
    daemon::spawn_pool_upkeep(&pools, ops.stopped.clone());
    let state = Arc::new(routes::AppState {
        config,
        pools,
        shutdown: shutdown.clone(),
    });
    tracing::info!(addr = %listener.local_addr()?, "Gateway listening.");
    server::serve(listener, state, shutdown).await;
    tracing::info!("Gateway stopped.");
    ops.stop().await;
    Ok(())
}
