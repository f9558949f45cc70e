//! [`DbError`]: every database failure names its operation and shows the server's own words.

use std::time::Duration;

use deadpool_postgres::{PoolError, TimeoutType};

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
        PoolError::Backend(e) => {
            let said = describe(e);
            match super::pooler::is_mispointed(&said) {
                true => format!("cannot connect: {said}: {}", super::pooler::MISPOINTED),
                false => format!("cannot connect: {said}"),
            }
        }
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

    /// True when the endpoint is a connection pooler where PostgreSQL itself was expected (see
    /// `pooler`): a configuration error, not an outage, so a daemon stops instead of waiting.
    pub fn is_mispointed(&self) -> bool {
        super::pooler::is_mispointed(&self.to_string())
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
