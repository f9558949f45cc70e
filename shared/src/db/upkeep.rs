//! A pool's upkeep: the health check, the pool gauges, and connections retired when old or idle
//! above the minimum.

use std::time::Duration;

use serde::Serialize;

use super::Db;
use crate::metrics;

/// What the health check reports for one pool (the original `healthCheck()` fields).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct PoolHealth {
    pub pool: &'static str,
    pub reachable: bool,
    pub size: usize,
    pub idle: usize,
    pub waiting: usize,
    pub max: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Connections above a pool's minimum that stay unused this long are closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(300);

impl Db {
    /// Reachability (a `SELECT 1` through the pool) and the pool's counts.
    pub async fn health(&self) -> PoolHealth {
        let probe = async {
            let c = self.get("health check").await?;
            self.timed("health check", c.simple_query("SELECT 1"))
                .await
                .map(|_| ())
        };
        let result = tokio::time::timeout(Duration::from_secs(5), probe).await;
        let error = match result {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(e.to_string()),
            Err(_) => Some("health check timed out after 5s".to_owned()),
        };
        let s = self.status();
        self.export_gauges();
        PoolHealth {
            pool: self.inner.name.as_str(),
            reachable: error.is_none(),
            size: s.size,
            idle: s.available,
            waiting: s.waiting,
            max: s.max_size,
            error,
        }
    }

    /// Publishes `sluice_db_pool_connections{pool,state}`.
    pub fn export_gauges(&self) {
        let s = self.status();
        let name = self.inner.name;
        metrics::pool_connections(name, "total", s.size);
        metrics::pool_connections(name, "idle", s.available);
        metrics::pool_connections(name, "active", s.size.saturating_sub(s.available));
        metrics::pool_connections(name, "waiting", s.waiting);
        metrics::pool_connections(name, "max", s.max_size);
    }

    /// Closes idle connections older than the maximum lifetime, and those above the minimum
    /// left unused for `IDLE_TIMEOUT`, so a pool shrinks back to its minimum after a burst; busy
    /// ones are retired on a later pass, after they come back.
    pub fn retire_old(&self) -> usize {
        let max = self.inner.max_lifetime;
        let s = self.status();
        let busy = s.size.saturating_sub(s.available);
        let mut keep_idle = self.inner.min.saturating_sub(busy);
        self.inner
            .pool
            .retain(|_, m| {
                if m.age() >= max {
                    return false;
                }
                if keep_idle > 0 {
                    keep_idle -= 1;
                    return true;
                }
                m.last_used() < IDLE_TIMEOUT
            })
            .removed
            .len()
    }

    /// Every `every`: retire old connections, re-open the minimum, export the gauges.
    pub fn spawn_upkeep(&self, every: Duration, tasks: &crate::tasks::Tasks) {
        let db = self.clone();
        let stop = tasks.stop_token();
        tasks.spawn(
            "pool_upkeep",
            crate::shutdown::every(every, stop, move || {
                let db = db.clone();
                async move {
                    let retired = db.retire_old();
                    if retired > 0 {
                        tracing::debug!(
                            retired,
                            pool = db.inner.name.as_str(),
                            "Retired old connections."
                        );
                    }
                    if let Err(e) = db.warm().await {
                        tracing::warn!(error = %e, "Cannot keep the pool's minimum open.");
                    }
                    db.export_gauges();
                }
            }),
        );
    }
}
