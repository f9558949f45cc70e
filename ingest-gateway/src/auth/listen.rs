//! The key-change session: a session of its own on the primary that LISTENs for key changes
//! (applied one key at a time) and privacy changes (the suppression lists re-read), checked
//! every [`LISTEN_PING`] and opened again with backoff when it ends.

use std::sync::Arc;
use std::time::Duration;

use shared::config::DbConfig;
use shared::db::Db;
use shared::tasks::Tasks;
use tokio::sync::mpsc::UnboundedReceiver;
use tokio_postgres::{Client, Notification};
use tokio_util::sync::CancellationToken;

use super::{KeyCache, CHANNEL};
use crate::privacy::{self, Privacy};

/// How often the listening session is checked (a half-open connection would lose notifications
/// silently until TCP keepalives noticed).
pub const LISTEN_PING: Duration = Duration::from_secs(10);

impl KeyCache {
    /// Listens for key changes on the primary and applies each (looking the key up on
    /// `primary`); checks the session every [`LISTEN_PING`], and reconnects with backoff when
    /// it ends, reloading everything then.
    pub fn spawn_listen(
        &self,
        config: DbConfig,
        primary: Db,
        privacy: Arc<Privacy>,
        tasks: &Tasks,
    ) {
        let listener = Listener {
            keys: self.clone(),
            primary,
            privacy,
            stop: tasks.stop_token(),
        };
        tasks.spawn("key_notifications", listener.run(config));
    }
}

/// What the session's notifications are applied to.
struct Listener {
    keys: KeyCache,
    primary: Db,
    privacy: Arc<Privacy>,
    stop: CancellationToken,
}

impl Listener {
    /// Listens until stopped, listening again with backoff whenever the session ends.
    async fn run(self, config: DbConfig) {
        let mut pg = shared::db::pg_config(&config.session_endpoint(), &config);
        pg.application_name("sluice-gateway-listen");
        let mut backoff = shared::retry::Backoff::standard();
        while !self.stop.is_cancelled() {
            match shared::db::listen(&pg, &config, &[CHANNEL, privacy::CHANNEL]).await {
                Ok((session, changes)) => {
                    backoff.reset();
                    if !self.follow(&session, changes).await {
                        return;
                    }
                    tracing::warn!("Lost the key-change session; listening again.");
                }
                Err(e) => {
                    let sqlstate = e.sql_state().unwrap_or("unreachable");
                    shared::metrics::db_connect_error("listen", sqlstate.to_owned());
                    tracing::warn!(sqlstate, error = %e, "Cannot listen for key changes; retrying.")
                }
            }
            if !backoff.wait(&self.stop).await {
                return;
            }
        }
    }

    /// Re-reads everything (notifications may have been missed while not listening), then
    /// applies each notification until the session ends (`true`) or the stop (`false`).
    async fn follow(&self, session: &Client, mut changes: UnboundedReceiver<Notification>) -> bool {
        if let Err(e) = self.keys.reload(&self.primary).await {
            tracing::warn!(error = %e, "Cannot reload API keys after listening again.");
        }
        self.privacy.refresh_logged(&self.primary).await;
        let mut ping = tokio::time::interval(LISTEN_PING);
        ping.tick().await;
        loop {
            tokio::select! {
                n = changes.recv() => match n {
                    Some(n) => self.apply(&n).await,
                    None => return true,
                },
                _ = ping.tick() => if !alive(session).await {
                    return true;
                },
                _ = self.stop.cancelled() => return false,
            }
        }
    }

    async fn apply(&self, n: &Notification) {
        if n.channel() == CHANNEL {
            self.keys.changed(&self.primary, n.payload()).await
        } else {
            self.privacy.refresh_logged(&self.primary).await
        }
    }
}

/// Whether the session still answers a query within 5 seconds.
async fn alive(session: &Client) -> bool {
    tokio::time::timeout(Duration::from_secs(5), session.simple_query("SELECT 1"))
        .await
        .is_ok_and(|r| r.is_ok())
}
