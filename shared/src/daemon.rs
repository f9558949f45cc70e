//! What every daemon does at start and stop: serve the ops endpoint, open and warm the pools it
//! uses (waiting, not ready, while PostgreSQL refuses), refuse an out-of-date schema, and keep
//! the pool gauges fresh until shutdown.

use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::DbConfig;
use crate::db::{Db, DbError};
use crate::metrics::{self, Daemon, PoolName};
use crate::ops::{self, Readiness, ReadyCheck};
use crate::schema;
use crate::tasks::Tasks;

/// Errors that stop a daemon from starting. A server that refuses or cannot be reached is not
/// one of them: the daemon waits for it, not ready (see [`connect`]).
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Db(#[from] crate::db::DbError),
    #[error(transparent)]
    Schema(#[from] schema::SchemaError),
}

/// Builds one pool of a daemon from its sized configuration (see [`crate::budget`]), without
/// connecting.
pub fn pool(config: &DbConfig, name: PoolName) -> Result<Db, DbError> {
    match name {
        PoolName::Write => Db::new(&config.primary, config, name),
        PoolName::Read => Db::new(&config.read_endpoint(), config, name),
    }
}

/// The write pool of a daemon that needs PostgreSQL sessions (the maintenance worker: session
/// locks, `SET`, `VACUUM`): on the direct endpoint when PostgreSQL sits behind a transaction
/// pooler (see [`DbConfig::session_endpoint`]).
pub fn session_pool(config: &DbConfig) -> Result<Db, DbError> {
    Db::new(&config.session_endpoint(), config, PoolName::Write)
}

/// Warms `db`'s minimum and checks the schema version, retrying with backoff while the server
/// refuses connections (too many clients, authentication) or cannot be reached; each refusal is
/// logged with the server's message and SQLSTATE, counted in `sluice_db_connect_errors_total`,
/// and shown by `/readyz` through `startup`. `Ok(false)` when `shutdown` came first; a schema
/// this binary does not expect is an error.
pub async fn connect(
    db: &Db,
    startup: &Startup,
    shutdown: &CancellationToken,
) -> Result<bool, StartError> {
    let first = || async { Ok(()) };
    Ok(connect_then(db, startup, shutdown, first).await?.is_some())
}

/// As [`connect`], then runs `first` (the daemon's first load, such as the gateway's keys) under
/// the same retries; its result, or `None` when `shutdown` came first.
pub async fn connect_then<T, F, Fut>(
    db: &Db,
    startup: &Startup,
    shutdown: &CancellationToken,
    mut first: F,
) -> Result<Option<T>, StartError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, DbError>>,
{
    metrics::db_connect_errors_zero(db.name());
    let mut backoff =
        crate::retry::Backoff::new(Duration::from_millis(100), Duration::from_secs(10));
    loop {
        match try_open(db, &mut first).await {
            Ok(v) => {
                startup.note(None);
                return Ok(Some(v));
            }
            // A pooler where PostgreSQL was expected: waiting will not mend it.
            Err(StartError::Db(e)) if e.is_mispointed() => return Err(StartError::Db(e)),
            // A refusal, or a failed query (not a schema mismatch).
            Err(StartError::Db(e) | StartError::Schema(schema::SchemaError::Db(e))) => {
                note_refusal(db, startup, &e)
            }
            Err(e) => return Err(e),
        }
        // Jittered, so replicas refused together do not retry together.
        if !backoff.wait(shutdown).await {
            return Ok(None);
        }
    }
}

/// One try: the pool's minimum opened, the schema checked, then `first`.
async fn try_open<T, Fut>(db: &Db, first: impl FnOnce() -> Fut) -> Result<T, StartError>
where
    Fut: std::future::Future<Output = Result<T, DbError>>,
{
    db.warm().await?;
    check_schema(db).await?;
    Ok(first().await?)
}

/// Logs a refused start with the server's SQLSTATE, and shows it on `/readyz`.
fn note_refusal(db: &Db, startup: &Startup, e: &DbError) {
    tracing::warn!(
        pool = db.name().as_str(),
        sqlstate = e.sql_state().unwrap_or("none"),
        error = %e,
        "Cannot open the database pool; not ready, retrying."
    );
    startup.note(Some(e.to_string()));
}

/// Refuses to start when `DB_DIRECT_HOST` is a pooler too (see `db::pooler`): the parts that
/// need a session would hold nothing. A server that is merely down is only logged: the session's
/// own loop waits for it.
pub async fn check_direct(config: &DbConfig) -> Result<(), StartError> {
    if config.direct.is_none() {
        return Ok(());
    }
    let pg = crate::db::pg_config(&config.session_endpoint(), config);
    match crate::db::connect_one(&pg, config).await {
        Ok(_) => Ok(()),
        Err(e) if e.is_mispointed() => Err(StartError::Db(e)),
        Err(e) => {
            tracing::warn!(error = %e, "DB_DIRECT_HOST does not answer yet.");
            Ok(())
        }
    }
}

/// Refuses to start against a schema this binary does not expect.
pub async fn check_schema(db: &Db) -> Result<(), StartError> {
    // In a transaction, so that it also holds behind a transaction pooler (see `db::pooler`).
    let mut client = db.get("check schema version").await?;
    let tx = db.begin(&mut client, "check schema version").await?;
    let out = schema::check_version(tx.client()).await;
    let out = match out {
        Err(schema::SchemaError::Db(e)) => Err(e),
        other => Ok(other),
    };
    db.finish(tx, out, "check schema version").await??;
    Ok(())
}

/// A daemon's readiness while it starts: not ready, showing the database's last refusal, until
/// [`Startup::started`] hands over the daemon's own check.
#[derive(Clone, Default)]
pub struct Startup {
    check: Arc<OnceLock<ReadyCheck>>,
    last_error: Arc<Mutex<Option<String>>>,
}

impl Startup {
    /// The check to serve on `/readyz` from the daemon's first moment.
    pub fn ready_check(&self) -> ReadyCheck {
        let me = self.clone();
        Arc::new(move || {
            let me = me.clone();
            Box::pin(async move {
                match me.check.get() {
                    Some(check) => check().await,
                    None => Readiness {
                        ready: false,
                        detail: serde_json::json!({
                            "starting": true,
                            "database_error": me.last_error(),
                        }),
                    },
                }
            })
        })
    }

    /// The daemon is up: from now on `/readyz` answers `check`.
    pub fn started(&self, check: ReadyCheck) {
        let _ = self.check.set(check);
    }

    fn note(&self, error: Option<String>) {
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = error;
    }

    fn last_error(&self) -> Option<String> {
        self.last_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
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

/// Readiness from a pool's health: ready when it reaches its server.
pub fn pool_ready(db: Db) -> ReadyCheck {
    Arc::new(move || {
        let db = db.clone();
        Box::pin(async move {
            let health = db.health().await;
            Readiness {
                ready: health.reachable,
                detail: serde_json::json!({ "pools": [health] }),
            }
        })
    })
}

/// Keeps `db` at its minimum, retires old and idle connections and exports the gauges.
pub fn spawn_upkeep(db: &Db, tasks: &Tasks) {
    db.spawn_upkeep(Duration::from_secs(15), tasks);
}
