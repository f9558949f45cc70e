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
//! hands out), run every helper statement inside a transaction of its own (see `Db::query`), set
//! the statement timeout in each transaction ([`local_timeout`]) and end it with [`DEALLOCATE`].
//! The parts that need a session connect to `DB_DIRECT_HOST`, and every session and every
//! unpooled connection checks that it is one: it starts with the option `sluice.startup=kept`
//! and reads it back; a pooler that dropped it fails that check, and one that refuses it fails
//! the connection; both are a start-up error that names the fix ([`MISPOINTED`]).

use std::borrow::Cow;

use deadpool_postgres::{Hook, HookError};

use crate::config::PgEndpoint;

/// Run last in every transaction of a pooled connection (see `Db::before_commit`): the
/// statements tokio-postgres prepared in it go, even those its returned rows still hold (their
/// `Close` arrives later, on whichever server, where closing a missing statement is no error).
pub const DEALLOCATE: &str = "DEALLOCATE ALL";

/// The statement each pooled transaction starts with: the timeout a session gets from its
/// startup options.
pub fn local_timeout(statement_timeout: std::time::Duration) -> String {
    format!(
        "SET LOCAL statement_timeout = {}",
        statement_timeout.as_millis()
    )
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

/// Reads back the startup marker: missing means a pooler dropped the startup options.
pub async fn check_session(client: &tokio_postgres::Client) -> Result<(), Cow<'static, str>> {
    let row = client
        .query_one("SELECT current_setting('sluice.startup', true)", &[])
        .await
        .map_err(|e| Cow::Owned(format!("check the session: {}", super::describe(&e))))?;
    match row.get::<_, Option<String>>(0).as_deref() {
        Some("kept") => Ok(()),
        _ => Err(Cow::Borrowed(MISPOINTED)),
    }
}

/// The pooler refused the startup options (PgBouncer does unless `ignore_startup_parameters`
/// names `options`), or dropped them: the endpoint is misconfigured, not merely down.
pub fn is_mispointed(message: &str) -> bool {
    message.contains("unsupported startup parameter") || message.contains(MISPOINTED)
}
