//! What every daemon does at start and stop: open and warm the pools, refuse an out-of-date
//! schema, serve the ops endpoint, and keep the pool gauges fresh until shutdown.

use std::sync::Arc;
use std::time::Duration;

use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::DbConfig;
use crate::db::{Db, Pools};
use crate::metrics::{self, Daemon};
use crate::ops::{self, Readiness, ReadyCheck};
use crate::schema;
use crate::tasks::Tasks;

/// Errors that stop a daemon from starting.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Db(#[from] crate::db::DbError),
    #[error(transparent)]
    Schema(#[from] schema::SchemaError),
}

/// Opens the pools, warms their minimum and checks the schema version.
pub async fn open_pools(config: &DbConfig) -> Result<Pools, StartError> {
    let pools = Pools::new(config)?;
    pools.write.warm().await?;
    pools.read.warm().await?;
    check_schema(&pools.write).await?;
    Ok(pools)
}

/// Refuses to start against a schema this binary does not expect.
pub async fn check_schema(db: &Db) -> Result<(), StartError> {
    let client = db.get("check schema version").await?;
    schema::check_version(&client).await?;
    Ok(())
}

/// The ops endpoint of a running daemon.
pub struct Ops {
    pub metrics: PrometheusHandle,
    /// Cancelled when the daemon has finished, to stop the ops endpoint last.
    pub stopped: CancellationToken,
    task: JoinHandle<()>,
}

impl Ops {
    /// Registers the daemon's metrics and starts serving `/metrics`, `/healthz`, `/readyz`
    /// (unhealthy once one of `tasks` has died).
    pub fn start(
        daemon: Daemon,
        listener: TcpListener,
        ready: ReadyCheck,
        shutdown: CancellationToken,
        tasks: &Tasks,
    ) -> Self {
        let handle = metrics::install();
        metrics::register(daemon);
        let stopped = CancellationToken::new();
        let task = tokio::spawn(ops::serve(
            listener,
            handle.clone(),
            ready,
            shutdown,
            stopped.clone(),
            tasks.clone(),
        ));
        Self {
            metrics: handle,
            stopped,
            task,
        }
    }

    /// Stops the ops endpoint; called as the daemon's very last step.
    pub async fn stop(self) {
        self.stopped.cancel();
        let _ = self.task.await;
    }
}

/// Readiness from the pools' health: ready when every pool reaches its server.
pub fn pools_ready(pools: Pools) -> ReadyCheck {
    let pools = Arc::new(pools);
    Arc::new(move || {
        let pools = pools.clone();
        Box::pin(async move {
            let health = pools.health().await;
            Readiness {
                ready: health.iter().all(|h| h.reachable),
                detail: serde_json::json!({ "pools": health }),
            }
        })
    })
}

/// Keeps both pools at their minimum, retires old connections and exports the gauges.
pub fn spawn_pool_upkeep(pools: &Pools, tasks: &Tasks) {
    pools.write.spawn_upkeep(Duration::from_secs(15), tasks);
    pools.read.spawn_upkeep(Duration::from_secs(15), tasks);
}
