//! PostgreSQL pools: a write pool on the primary and a read pool on the replica (or the primary).
//!
//! deadpool-postgres has no minimum size, no maximum lifetime and waits forever by default; [`Db`]
//! adds all three: it opens `pool_min` connections at start and keeps them open, retires
//! connections older than `max_lifetime` (and those above the minimum left idle for
//! [`IDLE_TIMEOUT`]), and bounds every wait and every query. Every query goes
//! through a helper that names its operation, caches the prepared statement and logs it when it is
//! slower than `SLOW_QUERY_MS`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use deadpool_postgres::{
    Manager, ManagerConfig, Object, Pool, PoolError, RecyclingMethod, Runtime, TimeoutType,
    Transaction,
};
use futures::future::BoxFuture;
use postgres_native_tls::MakeTlsConnector;
use serde::Serialize;
use tokio_postgres::types::ToSql;
use tokio_postgres::Row;

use crate::config::{DbConfig, PgEndpoint, SslMode};
use crate::metrics::{self, PoolName};

/// A database operation failed; every variant names the operation, and a server's refusal shows
/// its own message and SQLSTATE (tokio-postgres and deadpool print just "db error").
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("{op}: no connection from the {pool} pool: {}", describe_pool(source))]
    Pool {
        op: &'static str,
        pool: &'static str,
        #[source]
        source: PoolError,
    },
    #[error("{op}: {}", describe(source))]
    Query {
        op: &'static str,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error("{op}: no answer within {timeout:?}")]
    Timeout { op: &'static str, timeout: Duration },
    #[error("{op}: {message}")]
    Other { op: &'static str, message: String },
}

/// What the server said (message, SQLSTATE, severity, detail), or the client-side error with
/// every cause in its chain ("error connecting to server: Connection refused (os error 111)").
pub fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => {
            let mut s = format!(
                "{} (SQLSTATE {}, {})",
                db.message(),
                db.code().code(),
                db.severity()
            );
            if let Some(d) = db.detail() {
                s.push_str(&format!(": {d}"));
            }
            s
        }
        None => {
            let mut s = e.to_string();
            let mut cause = std::error::Error::source(e);
            while let Some(c) = cause {
                s.push_str(&format!(": {c}"));
                cause = c.source();
            }
            s
        }
    }
}

/// A pool's failure to hand out a connection, with the server's own words when it refused one.
fn describe_pool(e: &PoolError) -> String {
    match e {
        PoolError::Backend(e) => format!("cannot connect: {}", describe(e)),
        PoolError::Timeout(TimeoutType::Wait) => "every connection is busy".to_owned(),
        PoolError::Timeout(TimeoutType::Create) => "cannot connect: no answer in time".to_owned(),
        PoolError::Timeout(TimeoutType::Recycle) => "a connection stopped answering".to_owned(),
        other => other.to_string(),
    }
}

/// The `sqlstate` label of `sluice_db_connect_errors_total` for a failed connection attempt:
/// PostgreSQL's SQLSTATE when the server refused it, `timeout` or `unreachable` otherwise.
/// `None` when no connection was attempted (the pool was merely busy).
pub fn connect_error_label(e: &PoolError) -> Option<String> {
    match e {
        PoolError::Backend(e) => Some(
            e.code()
                .map_or_else(|| "unreachable".to_owned(), |c| c.code().to_owned()),
        ),
        PoolError::Timeout(TimeoutType::Create) => Some("timeout".to_owned()),
        _ => None,
    }
}

impl DbError {
    pub fn query(op: &'static str) -> impl FnOnce(tokio_postgres::Error) -> Self {
        move |source| DbError::Query { op, source }
    }

    /// The SQLSTATE code when PostgreSQL itself refused the statement or the connection.
    pub fn sql_state(&self) -> Option<&str> {
        match self {
            DbError::Query { source, .. } => source.code().map(|c| c.code()),
            DbError::Pool {
                source: PoolError::Backend(e),
                ..
            } => e.code().map(|c| c.code()),
            _ => None,
        }
    }

    /// True when the server cancelled the statement for running past `statement_timeout`.
    pub fn is_statement_timeout(&self) -> bool {
        self.sql_state() == Some("57014")
    }

    /// True for failures worth retrying as they are: the connection or the server was unavailable,
    /// or a serialization conflict or resource limit was hit. Data errors are not transient.
    pub fn is_transient(&self) -> bool {
        match self {
            DbError::Pool { .. } | DbError::Timeout { .. } => true,
            DbError::Query { source, .. } => match source.code() {
                None => true,
                Some(code) => {
                    let c = code.code();
                    // 08: connection, 40: serialization/deadlock, 53: resources, 57: operator
                    // intervention (shutdown, cancel), 55P03: lock not available.
                    c.starts_with("08")
                        || c.starts_with("40")
                        || c.starts_with("53")
                        || c.starts_with("57")
                        || c == "55P03"
                }
            },
            DbError::Other { .. } => false,
        }
    }
}

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

/// One pool with its limits.
#[derive(Clone)]
pub struct Db {
    inner: Arc<DbInner>,
}

struct DbInner {
    pool: Pool,
    name: PoolName,
    min: usize,
    max_lifetime: Duration,
    query_timeout: Duration,
    slow_query: Duration,
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Db")
            .field("name", &self.inner.name)
            .field("status", &self.inner.pool.status())
            .finish()
    }
}

/// A write and a read pool (the gateway's; the writer and the maintenance worker open only a
/// write pool, see `daemon::pool`). `read` is a clone of `write`'s endpoint when no replica is
/// set, but always a pool of its own so reads never starve writes.
#[derive(Clone, Debug)]
pub struct Pools {
    pub write: Db,
    pub read: Db,
}

impl Pools {
    pub fn new(config: &DbConfig) -> Result<Self, DbError> {
        Ok(Self {
            write: Db::new(&config.primary, config, PoolName::Write)?,
            read: Db::new(&config.read_endpoint(), config, PoolName::Read)?,
        })
    }

    pub async fn health(&self) -> Vec<PoolHealth> {
        let (w, r) = futures::join!(self.write.health(), self.read.health());
        vec![w, r]
    }
}

/// The tokio-postgres settings of an endpoint: server-side statement timeout, connect timeout,
/// keepalives and an application name that shows in `pg_stat_activity`.
pub fn pg_config(ep: &PgEndpoint, config: &DbConfig) -> tokio_postgres::Config {
    let mut pg = tokio_postgres::Config::new();
    pg.host(&ep.host)
        .port(ep.port)
        .dbname(&ep.dbname)
        .user(&ep.user)
        .password(ep.password.expose())
        .application_name("sluice")
        .connect_timeout(config.connect_timeout)
        .keepalives(true)
        .keepalives_idle(Duration::from_secs(60))
        .options(format!(
            "-c statement_timeout={} -c timezone=UTC",
            config.statement_timeout.as_millis()
        ))
        .ssl_mode(match config.tls.mode {
            SslMode::Disable => tokio_postgres::config::SslMode::Disable,
            SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => {
                tokio_postgres::config::SslMode::Require
            }
        });
    pg
}

/// The TLS connector for `DB_SSLMODE`: `prefer` and `require` encrypt without checking the
/// server's certificate (as libpq does), `verify-ca` checks it was signed by a trusted CA (the
/// system's, or `DB_SSLROOTCERT`), `verify-full` also checks it names the host.
pub fn pg_tls(config: &DbConfig) -> Result<MakeTlsConnector, DbError> {
    let tls = &config.tls;
    let mut b = native_tls::TlsConnector::builder();
    match tls.mode {
        SslMode::Disable | SslMode::Prefer | SslMode::Require => {
            b.danger_accept_invalid_certs(true)
                .danger_accept_invalid_hostnames(true);
        }
        SslMode::VerifyCa => {
            b.danger_accept_invalid_hostnames(true);
        }
        SslMode::VerifyFull => {}
    }
    if let Some(path) = &tls.root_cert {
        let pem = std::fs::read(path).map_err(|e| DbError::Other {
            op: "read DB_SSLROOTCERT",
            message: format!("{path}: {e}"),
        })?;
        let cert = native_tls::Certificate::from_pem(&pem).map_err(|e| DbError::Other {
            op: "read DB_SSLROOTCERT",
            message: format!("{path}: {e}"),
        })?;
        b.add_root_certificate(cert);
    }
    let connector = b.build().map_err(|e| DbError::Other {
        op: "set up TLS",
        message: e.to_string(),
    })?;
    Ok(MakeTlsConnector::new(connector))
}

/// One connection outside the pools (migrations, the leader lock), with the pools' settings and
/// TLS; its connection task is spawned.
pub async fn connect_one(
    pg: &tokio_postgres::Config,
    config: &DbConfig,
) -> Result<(tokio_postgres::Client, tokio::task::JoinHandle<()>), DbError> {
    let (client, conn) = pg
        .connect(pg_tls(config)?)
        .await
        .map_err(DbError::query("connect"))?;
    let task = tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "PostgreSQL connection closed.");
        }
    });
    Ok((client, task))
}

/// A session that LISTENs on `channels` (outside the pools: it is held for good). Notifications
/// arrive on the receiver, which closes when the session ends (the caller reconnects).
pub async fn listen(
    pg: &tokio_postgres::Config,
    config: &DbConfig,
    channels: &[&'static str],
) -> Result<
    (
        tokio_postgres::Client,
        tokio::sync::mpsc::UnboundedReceiver<tokio_postgres::Notification>,
    ),
    DbError,
> {
    let (client, mut conn) = pg
        .connect(pg_tls(config)?)
        .await
        .map_err(DbError::query("connect to listen"))?;
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut messages = futures::stream::poll_fn(move |cx| conn.poll_message(cx));
        while let Some(m) = futures::StreamExt::next(&mut messages).await {
            match m {
                Ok(tokio_postgres::AsyncMessage::Notification(n)) => {
                    if tx.send(n).is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::debug!(error = %e, "The listening session closed.");
                    return;
                }
            }
        }
    });
    let sql: Vec<String> = channels.iter().map(|c| format!("LISTEN {c};")).collect();
    client
        .batch_execute(&sql.concat())
        .await
        .map_err(DbError::query("listen"))?;
    Ok((client, rx))
}

impl Db {
    /// Builds the pool without connecting; call [`Db::warm`] to open the minimum.
    pub fn new(ep: &PgEndpoint, config: &DbConfig, name: PoolName) -> Result<Self, DbError> {
        let mgr = Manager::from_config(
            pg_config(ep, config),
            pg_tls(config)?,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(mgr)
            .max_size(ep.pool_max)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(config.acquire_timeout))
            .create_timeout(Some(config.connect_timeout))
            .recycle_timeout(Some(Duration::from_secs(5)))
            .build()
            .map_err(|e| DbError::Other {
                op: "build pool",
                message: e.to_string(),
            })?;
        Ok(Self {
            inner: Arc::new(DbInner {
                pool,
                name,
                min: ep.pool_min.min(ep.pool_max),
                max_lifetime: config.max_lifetime,
                query_timeout: config.statement_timeout + Duration::from_secs(1),
                slow_query: config.slow_query,
            }),
        })
    }

    pub fn name(&self) -> PoolName {
        self.inner.name
    }

    pub fn status(&self) -> deadpool_postgres::Status {
        self.inner.pool.status()
    }

    /// Opens connections until the pool holds its minimum. Fails when the server is unreachable.
    pub async fn warm(&self) -> Result<(), DbError> {
        let missing = self.inner.min.saturating_sub(self.status().size);
        let conns = futures::future::join_all((0..missing).map(|_| self.get("warm pool"))).await;
        // Holding them all at once forces distinct connections; dropping returns them idle.
        let held: Vec<Object> = conns.into_iter().collect::<Result<_, _>>()?;
        drop(held);
        Ok(())
    }

    /// A connection from the pool, waiting at most the acquire timeout. A connection the server
    /// refused is counted in `sluice_db_connect_errors_total{pool,sqlstate}`.
    pub async fn get(&self, op: &'static str) -> Result<Object, DbError> {
        self.inner.pool.get().await.map_err(|source| {
            if let Some(sqlstate) = connect_error_label(&source) {
                metrics::db_connect_error(self.inner.name.as_str(), sqlstate);
            }
            DbError::Pool {
                op,
                pool: self.inner.name.as_str(),
                source,
            }
        })
    }

    /// Runs a statement through the prepared-statement cache, bounded and timed.
    pub async fn query(
        &self,
        op: &'static str,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, DbError> {
        let client = self.get(op).await?;
        self.timed(op, async {
            let stmt = client.prepare_cached(sql).await?;
            client.query(&stmt, params).await
        })
        .await
    }

    pub async fn query_one(
        &self,
        op: &'static str,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Row, DbError> {
        let client = self.get(op).await?;
        self.timed(op, async {
            let stmt = client.prepare_cached(sql).await?;
            client.query_one(&stmt, params).await
        })
        .await
    }

    pub async fn execute(
        &self,
        op: &'static str,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<u64, DbError> {
        let client = self.get(op).await?;
        self.timed(op, async {
            let stmt = client.prepare_cached(sql).await?;
            client.execute(&stmt, params).await
        })
        .await
    }

    /// Runs `f` inside a transaction: committed when it returns `Ok`, rolled back otherwise.
    pub async fn transaction<T, F>(&self, op: &'static str, f: F) -> Result<T, DbError>
    where
        T: Send,
        F: for<'t> FnOnce(&'t Transaction<'t>) -> BoxFuture<'t, Result<T, DbError>>,
    {
        let mut client = self.get(op).await?;
        let started = Instant::now();
        let tx = client.transaction().await.map_err(DbError::query(op))?;
        let out = match tokio::time::timeout(self.inner.query_timeout, f(&tx)).await {
            Ok(out) => out,
            Err(_) => Err(DbError::Timeout {
                op,
                timeout: self.inner.query_timeout,
            }),
        };
        match out {
            Ok(v) => {
                tx.commit().await.map_err(DbError::query(op))?;
                self.note_duration(op, started.elapsed());
                Ok(v)
            }
            Err(e) => {
                let _ = tx.rollback().await;
                Err(e)
            }
        }
    }

    /// Bounds `fut` by the query timeout and logs it when slow.
    pub async fn timed<T>(
        &self,
        op: &'static str,
        fut: impl std::future::Future<Output = Result<T, tokio_postgres::Error>>,
    ) -> Result<T, DbError> {
        let started = Instant::now();
        let out = tokio::time::timeout(self.inner.query_timeout, fut).await;
        self.note_duration(op, started.elapsed());
        match out {
            Ok(r) => r.map_err(DbError::query(op)),
            Err(_) => Err(DbError::Timeout {
                op,
                timeout: self.inner.query_timeout,
            }),
        }
    }

    fn note_duration(&self, op: &'static str, elapsed: Duration) {
        if elapsed >= self.inner.slow_query {
            metrics::slow_query();
            tracing::warn!(
                op,
                pool = self.inner.name.as_str(),
                duration_ms = elapsed.as_millis() as u64,
                "Slow query."
            );
        }
    }

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

    /// The number of connections kept open at rest.
    pub fn min(&self) -> usize {
        self.inner.min
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
