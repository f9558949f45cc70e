//! Leadership: any number of maintenance replicas run, one acts. The leader holds a PostgreSQL
//! session advisory lock on a connection of its own; when it dies, the server closes the session,
//! the lock is free, and another replica takes it at its next attempt (every `LEADER_RETRY_MS`).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use shared::config::DbConfig;
use tokio_postgres::Client;

use crate::metrics;

const LEADER_LOCK: i64 = 0x736c_7569_6365_2000;

#[derive(Clone, Default)]
pub struct Leadership {
    is_leader: Arc<AtomicBool>,
    /// Attempts made so far (shown on `/readyz`: "not leader" means something once one was made).
    attempts: Arc<AtomicU64>,
    /// Signalled each time this replica becomes leader.
    gained: Arc<tokio::sync::Notify>,
}

impl Leadership {
    pub fn is_leader(&self) -> bool {
        self.is_leader.load(Ordering::SeqCst)
    }

    pub fn attempts(&self) -> u64 {
        self.attempts.load(Ordering::SeqCst)
    }

    pub async fn gained(&self) {
        self.gained.notified().await
    }

    fn set(&self, leader: bool) {
        let was = self.is_leader.swap(leader, Ordering::SeqCst);
        metrics::leader(leader);
        if leader && !was {
            tracing::info!("This replica is now the maintenance leader.");
            self.gained.notify_waiters();
        } else if !leader && was {
            tracing::warn!("Lost maintenance leadership.");
        }
    }

    /// Tries to become (or stay) leader every `every` until `stop`, then releases the lock.
    pub fn spawn(&self, db: DbConfig, every: Duration, tasks: &shared::tasks::Tasks) {
        let me = self.clone();
        let stop = tasks.stop_token();
        tasks.spawn("leadership", async move {
            let mut held: Option<Client> = None;
            loop {
                held = me.attempt(&db, held).await;
                me.set(held.is_some());
                me.attempts.fetch_add(1, Ordering::SeqCst);
                tokio::select! {
                    _ = tokio::time::sleep(every) => {}
                    _ = stop.cancelled() => break,
                }
            }
            me.set(false);
            drop(held);
        });
    }

    /// Keeps a live lock connection, or opens one and tries the lock.
    async fn attempt(&self, db: &DbConfig, held: Option<Client>) -> Option<Client> {
        if let Some(client) = held {
            let alive =
                tokio::time::timeout(Duration::from_secs(5), client.simple_query("SELECT 1"))
                    .await
                    .is_ok_and(|r| r.is_ok());
            if alive {
                return Some(client);
            }
        }
        let mut pg = shared::db::pg_config(&db.session_endpoint(), db);
        pg.application_name("sluice-maintenance-leader");
        let (client, _conn) = match shared::db::connect_one(&pg, db).await {
            Ok(c) => c,
            Err(e) => {
                let sqlstate = e.sql_state().unwrap_or("unreachable");
                shared::metrics::db_connect_error("leader", sqlstate.to_owned());
                tracing::warn!(sqlstate, error = %e, "Cannot open the leader lock's connection; retrying.");
                return None;
            }
        };
        let got: bool = client
            .query_one("SELECT pg_try_advisory_lock($1)", &[&LEADER_LOCK])
            .await
            .ok()?
            .get(0);
        got.then_some(client)
    }
}
