//! PostgreSQL behind a transaction pooler (PgBouncer with `pool_mode = transaction`).
//!
//! Such a pooler hands each transaction, or each statement outside one, to whichever server
//! connection is free, so nothing may outlive a transaction: no prepared statement kept for later
//! (tokio-postgres names them `s0`, `s1`, ... per client, so a leftover one even collides with
//! another client's), no session advisory lock, no `SET` without `LOCAL`, no `LISTEN`. And it
//! refuses (or drops) the `options` startup parameter that carries our `statement_timeout`.
//!
//! So a pooled endpoint's connections ([`PgEndpoint::pooled`]) get no startup options, set their
//! time zone with `SET` (a parameter the pooler tracks per client and restores on every server it
//! hands out), run every helper statement unnamed ([`ParamTypes`]) inside a transaction of its
//! own, set the statement timeout in each transaction ([`local_timeout`]), and end every other
//! transaction with [`DEALLOCATE`].
//! The parts that need a session connect to `DB_DIRECT_HOST`, and every session and every
//! unpooled connection checks that it is one: it starts with the option `sluice.startup=kept`
//! and reads it back; a pooler that dropped it fails that check, and one that refuses it fails
//! the connection; both are a start-up error that names the fix ([`MISPOINTED`]).

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use deadpool_postgres::{Hook, HookError, Object};
use futures::TryStreamExt;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{Error, Row, Transaction};

use crate::config::PgEndpoint;

/// Run last in every transaction of a pooled connection that prepares named statements (the
/// writer's batch, `Db::transaction`; see `Db::before_commit`): whatever tokio-postgres prepared
/// in it goes, so nothing is left for another client's statement of the same name to collide
/// with. (Their `Close` messages, sent when the statements drop, come before the commit: the
/// callers keep no row past it.)
pub const DEALLOCATE: &str = "DEALLOCATE ALL";

/// The statement each pooled transaction starts with: the timeout a session gets from its
/// startup options.
pub fn local_timeout(statement_timeout: std::time::Duration) -> String {
    format!(
        "SET LOCAL statement_timeout = {}",
        statement_timeout.as_millis()
    )
}

/// The parameter types of the statements the helpers run, learned once each: a pooled helper
/// sends its statement unnamed with them (tokio-postgres' `query_typed`), which prepares nothing
/// on the server and needs no `Close` later (a `Close` sent after the commit would reach the
/// pooler pipelined with the next transaction's first message, and PgBouncer 1.18 drops the
/// answer to that message: the client then waits for ever).
#[derive(Default)]
pub struct ParamTypes(Mutex<HashMap<String, Arc<[Type]>>>);

impl ParamTypes {
    /// `sql`'s parameter types; the first time, prepared (and closed) in a transaction of its own.
    pub async fn learn(&self, client: &mut Object, sql: &str) -> Result<Arc<[Type]>, Error> {
        if let Some(t) = self.lock().get(sql) {
            return Ok(t.clone());
        }
        let tx = client.transaction().await?;
        let types: Arc<[Type]> = match tx.prepare(sql).await {
            Ok(stmt) => stmt.params().into(),
            Err(e) => {
                let _ = tx.rollback().await;
                return Err(e);
            }
        };
        tx.commit().await?;
        self.lock().insert(sql.to_owned(), types.clone());
        Ok(types)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<[Type]>>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The parameters with their types, as `query_typed` takes them.
pub fn typed<'p>(
    params: &[&'p (dyn ToSql + Sync)],
    types: &[Type],
) -> Vec<(&'p (dyn ToSql + Sync), Type)> {
    params.iter().copied().zip(types.iter().cloned()).collect()
}

pub async fn typed_rows(
    tx: &Transaction<'_>,
    sql: &str,
    params: &[(&(dyn ToSql + Sync), Type)],
) -> Result<Vec<Row>, Error> {
    tx.query_typed(sql, params).await
}

pub async fn typed_one(
    tx: &Transaction<'_>,
    sql: &str,
    params: &[(&(dyn ToSql + Sync), Type)],
) -> Result<Row, Error> {
    tx.query_typed_one(sql, params).await
}

/// The rows the statement affected.
pub async fn typed_count(
    tx: &Transaction<'_>,
    sql: &str,
    params: &[(&(dyn ToSql + Sync), Type)],
) -> Result<u64, Error> {
    let rows = tx.query_typed_raw(sql, params.iter().cloned()).await?;
    futures::pin_mut!(rows);
    while rows.try_next().await?.is_some() {}
    Ok(rows.rows_affected().unwrap_or(0))
}

/// What a session or an unpooled connection says when it reached a pooler.
pub const MISPOINTED: &str = "this endpoint is a connection pooler, not PostgreSQL: it refused \
     or dropped the connection's startup options. Behind a transaction pooler (PgBouncer, \
     pool_mode = transaction) set DB_POOLER=transaction and point DB_DIRECT_HOST and \
     DB_DIRECT_PORT at PostgreSQL itself";

/// The startup options of a connection to `ep`: none for a pooler (PgBouncer refuses the
/// parameter), else the statement timeout, UTC and the marker [`check_session`] reads back.
pub fn startup_options(ep: &PgEndpoint, statement_timeout_ms: u128) -> Option<String> {
    (!ep.pooled).then(|| {
        format!(
            "-c statement_timeout={statement_timeout_ms} -c timezone=UTC -c sluice.startup=kept"
        )
    })
}

/// The pool's hook on each new connection: a pooled one sets its time zone, any other checks it
/// is a session of PostgreSQL's own.
pub fn post_create(ep: &PgEndpoint) -> Hook {
    let pooled = ep.pooled;
    Hook::async_fn(move |client, _| {
        Box::pin(async move {
            if pooled {
                client
                    .batch_execute("SET TimeZone = 'UTC'")
                    .await
                    .map_err(HookError::Backend)
            } else {
                check_session(client).await.map_err(HookError::Message)
            }
        })
    })
}

/// Reads back the startup marker: missing means a pooler dropped the startup options. A simple
/// query, so nothing is prepared: the endpoint may be a transaction pooler whose server
/// connection still holds another client's statement of the name tokio-postgres would pick
/// (`prepared statement "s0" already exists`), which would hide the dropped marker.
pub async fn check_session(client: &tokio_postgres::Client) -> Result<(), Cow<'static, str>> {
    let said = client
        .simple_query("SELECT current_setting('sluice.startup', true)")
        .await
        .map_err(|e| Cow::Owned(format!("check the session: {}", super::describe(&e))))?;
    let marker = said.iter().find_map(|m| match m {
        tokio_postgres::SimpleQueryMessage::Row(row) => Some(row.get(0)),
        _ => None,
    });
    match marker.flatten() {
        Some("kept") => Ok(()),
        _ => Err(Cow::Borrowed(MISPOINTED)),
    }
}

/// The pooler refused the startup options (PgBouncer does unless `ignore_startup_parameters`
/// names `options`), or dropped them: the endpoint is misconfigured, not merely down.
pub fn is_mispointed(message: &str) -> bool {
    message.contains("unsupported startup parameter") || message.contains(MISPOINTED)
}
