//! PostgreSQL pools: a write pool on the primary and a read pool on the replica (or the primary).
//!
//! deadpool-postgres has no minimum size, no maximum lifetime and waits forever by default; [`Db`]
//! adds all three: it opens `pool_min` connections at start and keeps them open, retires
//! connections older than `max_lifetime` (and those above the minimum left idle for
//! [`IDLE_TIMEOUT`]), and bounds every wait and every query. Every query goes
//! through a helper that names its operation, caches the prepared statement and logs it when it is
//! slower than `SLOW_QUERY_MS`.

//!
//! - `error.rs`: [`DbError`], naming the operation and showing the server's message and SQLSTATE.
//! - `connect.rs`: connection settings and TLS, and the sessions held outside the pools.
//! - `upkeep.rs`: the health check, the pool gauges, and old or idle connections retired.

mod connect;
mod error;
pub mod pooler;
mod upkeep;

use std::sync::Arc;
use std::time::{Duration, Instant};

use deadpool_postgres::{
    Manager, ManagerConfig, Object, Pool, RecyclingMethod, Runtime, Transaction,
};
use futures::future::BoxFuture;
use tokio_postgres::types::ToSql;
use tokio_postgres::Row;

use crate::config::{DbConfig, PgEndpoint};
use crate::metrics::{self, PoolName};

pub use connect::{connect_one, listen, pg_config, pg_tls};
pub use error::{connect_error_label, describe, DbError};
pub use upkeep::{PoolHealth, IDLE_TIMEOUT};

/// The body of [`Db::query`], [`Db::query_one`] and [`Db::execute`]: `$method` on a cached
/// prepared statement; behind a transaction pooler, `pooler::$typed`: the statement sent unnamed
/// with its parameter types (learned once per statement), in a transaction of its own that sets
/// its statement timeout, so nothing is prepared on the server and nothing is sent after the
/// commit hands the server back.
macro_rules! run_statement {
    ($self:ident, $op:ident, $sql:ident, $params:ident, $method:ident, $typed:ident) => {{
        let mut client = $self.get($op).await?;
        if $self.inner.pooled {
            let out = $self
                .timed($op, async {
                    let types = $self.inner.types.learn(&mut client, $sql).await?;
                    let typed = pooler::typed($params, &types);
                    let tx = client.transaction().await?;
                    // Pipelined: the setting is sent ahead of the statement, no wait between.
                    let (set, out) = futures::join!(
                        tx.batch_execute(&$self.inner.local_timeout),
                        pooler::$typed(&tx, $sql, &typed)
                    );
                    match set.and(out) {
                        Ok(out) => tx.commit().await.map(|()| out),
                        Err(e) => {
                            let _ = tx.rollback().await;
                            Err(e)
                        }
                    }
                })
                .await;
            return $self.keep_unless_timed_out(client, out);
        }
        $self
            .timed($op, async {
                let stmt = client.prepare_cached($sql).await?;
                client.$method(&stmt, $params).await
            })
            .await
    }};
}

/// One pool with its limits.
#[derive(Clone)]
pub struct Db {
    inner: Arc<DbInner>,
}

struct DbInner {
    pool: Pool,
    name: PoolName,
    min: usize,
    /// Behind a transaction pooler: no statement cache, every helper statement in a transaction.
    pooled: bool,
    max_lifetime: Duration,
    query_timeout: Duration,
    /// Behind a transaction pooler, the statement timeout each transaction sets for itself.
    local_timeout: String,
    /// Behind a transaction pooler, each helper statement's parameter types.
    types: pooler::ParamTypes,
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
            .post_create(pooler::post_create(ep))
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
                pooled: ep.pooled,
                max_lifetime: config.max_lifetime,
                query_timeout: config.statement_timeout + Duration::from_secs(1),
                local_timeout: pooler::local_timeout(config.statement_timeout),
                types: pooler::ParamTypes::default(),
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

    /// Runs a statement through the prepared-statement cache (behind a transaction pooler: in a
    /// transaction of its own, unprepared after it), bounded and timed.
    pub async fn query(
        &self,
        op: &'static str,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, DbError> {
        run_statement!(self, op, sql, params, query, typed_rows)
    }

    pub async fn query_one(
        &self,
        op: &'static str,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Row, DbError> {
        run_statement!(self, op, sql, params, query_one, typed_one)
    }

    pub async fn execute(
        &self,
        op: &'static str,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<u64, DbError> {
        run_statement!(self, op, sql, params, execute, typed_count)
    }

    /// Runs `f` inside a transaction: committed when it returns `Ok`, rolled back otherwise.
    pub async fn transaction<T, F>(&self, op: &'static str, f: F) -> Result<T, DbError>
    where
        T: Send,
        F: for<'t> FnOnce(&'t Transaction<'t>) -> BoxFuture<'t, Result<T, DbError>>,
    {
        let mut client = self.get(op).await?;
        let started = Instant::now();
        let tx = self.begin(&mut client, op).await?;
        let out = self.bounded(op, f(&tx)).await;
        if matches!(out, Err(DbError::Timeout { .. })) {
            // Cut off with answers still to come: no rollback to wait for, the connection goes.
            drop(tx);
            return self.keep_unless_timed_out(client, out);
        }
        let v = self.finish(tx, out, op).await?;
        self.note_duration(op, started.elapsed());
        Ok(v)
    }

    /// Begins a transaction on `client`, one of this pool's connections; behind a transaction
    /// pooler it sets its own statement timeout (`SET LOCAL`: the pooler drops the startup
    /// option that sets it for a session).
    pub async fn begin<'c>(
        &self,
        client: &'c mut Object,
        op: &'static str,
    ) -> Result<Transaction<'c>, DbError> {
        let tx = client.transaction().await.map_err(DbError::query(op))?;
        if self.inner.pooled {
            tx.batch_execute(&self.inner.local_timeout)
                .await
                .map_err(DbError::query(op))?;
        }
        Ok(tx)
    }

    /// The prepared statement for `sql` in `tx`, one of this pool's transactions: from the
    /// connection's statement cache, so a statement sent every batch is parsed and described once
    /// per connection and costs no round trip after that; behind a transaction pooler, prepared
    /// afresh (the commit's [`Db::before_commit`] drops it with the rest).
    pub async fn prepare(
        &self,
        tx: &Transaction<'_>,
        sql: &str,
        op: &'static str,
    ) -> Result<tokio_postgres::Statement, DbError> {
        let out = if self.inner.pooled {
            tx.prepare(sql).await
        } else {
            tx.prepare_cached(sql).await
        };
        out.map_err(DbError::query(op))
    }

    /// Behind a transaction pooler, drops the statements prepared in `tx` (rows and statements
    /// kept past the commit would leave them on a server connection other clients get next);
    /// nothing otherwise. Every transaction that may prepare named statements calls it before
    /// committing ([`Db::commit`]); the helpers' own prepare nothing.
    pub async fn before_commit(&self, tx: &tokio_postgres::Transaction<'_>) -> Result<(), DbError> {
        if self.inner.pooled {
            tx.batch_execute(pooler::DEALLOCATE)
                .await
                .map_err(DbError::query("deallocate before commit"))?;
        }
        Ok(())
    }

    /// Ends `tx` of one of this pool's connections as `out` says: committed when it is `Ok`
    /// (after [`Db::before_commit`]), else rolled back and the rollback awaited. Never leave a
    /// pooled transaction to its drop: the `ROLLBACK` a drop sends is not waited for, the next
    /// transaction's `BEGIN` follows it on the wire, and a transaction pooler hands the server
    /// back at the rollback's answer and drops the `BEGIN`'s (PgBouncer 1.18): the client waits
    /// for ever.
    pub async fn finish<T>(
        &self,
        tx: Transaction<'_>,
        out: Result<T, DbError>,
        op: &'static str,
    ) -> Result<T, DbError> {
        match out {
            Ok(v) => self.commit(tx, op).await.map(|()| v),
            Err(e) => {
                Self::rollback(tx).await;
                Err(e)
            }
        }
    }

    /// Passes `out` on; when it is a timeout, closes `client` instead of returning it to the
    /// pool: its transaction was cut off mid-way, with answers still to come on it.
    pub fn keep_unless_timed_out<T>(
        &self,
        client: Object,
        out: Result<T, DbError>,
    ) -> Result<T, DbError> {
        if matches!(out, Err(DbError::Timeout { .. })) {
            drop(Object::take(client));
        }
        out
    }

    /// Rolls `tx` back and waits for the answer (see [`Db::finish`]); a failure is moot, the
    /// connection then being unusable and dropped by the pool.
    pub async fn rollback(tx: Transaction<'_>) {
        let _ = tx.rollback().await;
    }

    /// Commits `tx` of one of this pool's connections, after [`Db::before_commit`].
    pub async fn commit(&self, tx: Transaction<'_>, op: &'static str) -> Result<(), DbError> {
        if let Err(e) = self.before_commit(&tx).await {
            Self::rollback(tx).await;
            return Err(e);
        }
        tx.commit().await.map_err(DbError::query(op))
    }

    /// Bounds `fut` by the query timeout and logs it when slow.
    pub async fn timed<T>(
        &self,
        op: &'static str,
        fut: impl std::future::Future<Output = Result<T, tokio_postgres::Error>>,
    ) -> Result<T, DbError> {
        let started = Instant::now();
        let out = self
            .bounded(op, async { fut.await.map_err(DbError::query(op)) })
            .await;
        self.note_duration(op, started.elapsed());
        out
    }

    /// `fut`, or [`DbError::Timeout`] once it has run past the query timeout.
    pub async fn bounded<T>(
        &self,
        op: &'static str,
        fut: impl std::future::Future<Output = Result<T, DbError>>,
    ) -> Result<T, DbError> {
        let limit = self.inner.query_timeout;
        tokio::time::timeout(limit, fut)
            .await
            .unwrap_or(Err(DbError::Timeout { op, timeout: limit }))
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

    /// The number of connections kept open at rest.
    pub fn min(&self) -> usize {
        self.inner.min
    }
}
