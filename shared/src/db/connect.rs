//! Connections to PostgreSQL: the settings and TLS every connection uses, and the sessions held
//! outside the pools (migrations, the leader lock, `LISTEN`).

use std::time::Duration;

use postgres_native_tls::MakeTlsConnector;

use super::DbError;
use crate::config::{DbConfig, PgEndpoint, SslMode};

/// The tokio-postgres settings of an endpoint: server-side statement timeout (none behind a
/// transaction pooler, see `pooler`), connect timeout, keepalives and an application name that
/// shows in `pg_stat_activity`.
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
        .ssl_mode(match config.tls.mode {
            SslMode::Disable => tokio_postgres::config::SslMode::Disable,
            SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => {
                tokio_postgres::config::SslMode::Require
            }
        });
    if let Some(options) = super::pooler::startup_options(ep, config.statement_timeout.as_millis())
    {
        pg.options(options);
    }
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
    session_of_its_own(&client).await?;
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
    let (client, conn) = pg
        .connect(pg_tls(config)?)
        .await
        .map_err(DbError::query("connect to listen"))?;
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(forward_notifications(conn, tx));
    session_of_its_own(&client).await?;
    let sql: Vec<String> = channels.iter().map(|c| format!("LISTEN {c};")).collect();
    client
        .batch_execute(&sql.concat())
        .await
        .map_err(DbError::query("listen"))?;
    Ok((client, rx))
}

/// Checks that a session is PostgreSQL's own, not a pooler's (see `pooler`).
async fn session_of_its_own(client: &tokio_postgres::Client) -> Result<(), DbError> {
    super::pooler::check_session(client)
        .await
        .map_err(|message| DbError::Other {
            op: "open a session",
            message: message.into_owned(),
        })
}

/// Drives a listening session's connection, sending its notifications to `tx` until the session
/// ends or the receiver is gone.
async fn forward_notifications<S, T>(
    mut conn: tokio_postgres::Connection<S, T>,
    tx: tokio::sync::mpsc::UnboundedSender<tokio_postgres::Notification>,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
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
}
