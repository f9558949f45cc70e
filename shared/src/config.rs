//! Typed configuration read once from the environment.
//!
//! Every daemon builds its config from an [`Env`], which is the process environment in production
//! and a plain map in tests (tests never mutate the process environment, so they run in parallel).
//! A value that does not parse is an error naming the variable, never a silent default.
//!
//! Here: [`DbConfig`] (the primary, the replica and the pools' sizes), [`RedisConfig`] (the
//! queue's and the cache's Redis), [`LogConfig`] and the windows every daemon shares; `env.rs`:
//! [`Env`] and [`ConfigError`].

use std::time::Duration;

use crate::secret::Secret;

mod env;
#[cfg(test)]
mod tests;

pub use env::{ConfigError, Env};

/// One PostgreSQL server and the pool kept to it.
#[derive(Debug, Clone)]
pub struct PgEndpoint {
    pub host: String,
    pub port: u16,
    pub dbname: String,
    pub user: String,
    pub password: Secret,
    /// Largest number of connections the pool opens.
    pub pool_max: usize,
    /// Connections opened at start and kept open.
    pub pool_min: usize,
    /// The server is a transaction pooler (`DB_POOLER=transaction`): its connections get no
    /// startup options, no cached prepared statements, and every statement runs in a
    /// transaction of its own (see `db`).
    pub pooled: bool,
}

/// The database settings every daemon shares.
#[derive(Debug, Clone)]
pub struct DbConfig {
    /// The primary, with the write pool's sizes.
    pub primary: PgEndpoint,
    /// The read replica's server (`DB_READ_HOST`, `DB_READ_PORT`); `None` when `DB_READ_HOST`
    /// is unset: reads then go to the primary. Its `pool_max` and `pool_min` are not used: the
    /// read pool's sizes are `read_pool_max` and `read_pool_min` wherever it points (see
    /// [`DbConfig::read_endpoint`]).
    pub replica: Option<PgEndpoint>,
    /// Where the parts that need a PostgreSQL session of their own connect (migrations, the
    /// maintenance worker, the gateway's key-change session): `DB_DIRECT_HOST` and
    /// `DB_DIRECT_PORT` when PostgreSQL sits behind a transaction pooler, else the primary.
    pub direct: Option<PgEndpoint>,
    /// The read pool's sizes, the only place they are kept.
    pub read_pool_max: usize,
    pub read_pool_min: usize,
    /// Connections older than this are closed and replaced.
    pub max_lifetime: Duration,
    /// Server-side `statement_timeout`, and the client-side bound on every query.
    pub statement_timeout: Duration,
    /// Queries slower than this are logged.
    pub slow_query: Duration,
    /// How long a caller waits for a free connection before the pool gives up.
    pub acquire_timeout: Duration,
    /// TCP connect timeout for a new connection.
    pub connect_timeout: Duration,
    /// TLS to PostgreSQL (`DB_SSLMODE`, `DB_SSLROOTCERT`), for the primary and the replica.
    pub tls: PgTls,
    /// The pool variables as set; a daemon sizes its pools from them and its needs with
    /// [`DbConfig::sized_for`] (the sizes above are the contract's figures, for tools and tests).
    pub pool_vars: crate::budget::PoolVars,
}

/// `DB_SSLMODE`, with libpq's meanings: `disable` (plain), `prefer` (TLS when the server offers
/// it, certificate not checked), `require` (TLS or no connection, certificate not checked),
/// `verify-ca` (TLS with a certificate signed by a trusted CA), `verify-full` (and issued for
/// `DB_HOST`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgTls {
    pub mode: SslMode,
    /// A PEM file of CA certificates trusted beside the system's (`DB_SSLROOTCERT`).
    pub root_cert: Option<String>,
}

impl PgTls {
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        let mode = match env.string("DB_SSLMODE", "prefer").as_str() {
            "disable" => SslMode::Disable,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            other => {
                return Err(ConfigError::new(
                    "DB_SSLMODE",
                    format!(
                        "{other:?} is not one of disable, prefer, require, verify-ca, verify-full"
                    ),
                ))
            }
        };
        let root_cert = env.get("DB_SSLROOTCERT").map(str::to_owned);
        if let Some(path) = &root_cert {
            if !std::path::Path::new(path).is_file() {
                return Err(ConfigError::new(
                    "DB_SSLROOTCERT",
                    format!("{path} is not a file"),
                ));
            }
        }
        Ok(Self { mode, root_cert })
    }
}

/// A pool's (maximum, minimum) from its two variables, `defaults` when unset. Either alone is a
/// bound a daemon's need may sit under (see `budget`); both set must agree.
fn pool_size(
    env: &Env,
    (max_var, min_var): (&'static str, &'static str),
    defaults: (u64, u64),
) -> Result<(usize, usize), ConfigError> {
    let max = env.bounded(max_var, defaults.0, 1, 10_000)? as usize;
    let min = env.bounded(min_var, defaults.1, 0, 10_000)? as usize;
    if min > max && env.get(min_var).is_some() && env.get(max_var).is_some() {
        return Err(ConfigError::new(
            min_var,
            format!("{min} is above {max_var} ({max})"),
        ));
    }
    Ok((max, min))
}

/// The primary (`DB_HOST`, `DB_PORT`, `DB_NAME`, `DB_USER`, `DB_PASSWORD`) with the write pool's
/// sizes.
fn primary(env: &Env) -> Result<PgEndpoint, ConfigError> {
    let (pool_max, pool_min) = pool_size(env, ("DB_POOL_MAX", "DB_POOL_MIN"), (50, 10))?;
    Ok(PgEndpoint {
        host: env.string("DB_HOST", "localhost"),
        port: env.parse("DB_PORT", 5432u16)?,
        dbname: env.string("DB_NAME", "analytics_db"),
        user: env.string("DB_USER", "postgres"),
        password: env
            .secret("DB_PASSWORD", Some("postgres"))
            .unwrap_or_default(),
        pool_max,
        pool_min,
        pooled: pooler(env)?,
    })
}

/// `DB_POOLER`: `none` (the default: `DB_HOST` is PostgreSQL or a session pooler) or
/// `transaction` (`DB_HOST`, and `DB_READ_HOST` when set, are a transaction pooler such as
/// PgBouncer with `pool_mode = transaction`).
fn pooler(env: &Env) -> Result<bool, ConfigError> {
    match env.string("DB_POOLER", "none").as_str() {
        "none" => Ok(false),
        "transaction" => Ok(true),
        other => Err(ConfigError::new(
            "DB_POOLER",
            format!("{other:?} is neither \"none\" nor \"transaction\""),
        )),
    }
}

/// The session endpoint at `DB_DIRECT_HOST` and `DB_DIRECT_PORT`, with the primary's database,
/// role and pool sizes; required behind a transaction pooler, which cannot hold a session.
fn direct(env: &Env, primary: &PgEndpoint) -> Result<Option<PgEndpoint>, ConfigError> {
    let Some(host) = env.get("DB_DIRECT_HOST") else {
        if primary.pooled {
            return Err(ConfigError::new(
                "DB_POOLER",
                "transaction pooling needs DB_DIRECT_HOST (and DB_DIRECT_PORT): migrations, the \
                 maintenance worker's leadership and locks and the gateway's key-change session \
                 need a PostgreSQL session, which a transaction pooler cannot hold",
            ));
        }
        return Ok(None);
    };
    Ok(Some(PgEndpoint {
        host: host.to_owned(),
        port: env.parse("DB_DIRECT_PORT", 5432u16)?,
        pooled: false,
        ..primary.clone()
    }))
}

/// The replica at `DB_READ_HOST` and `DB_READ_PORT`, with the primary's database and role.
fn replica(env: &Env, primary: &PgEndpoint) -> Result<Option<PgEndpoint>, ConfigError> {
    let Some(host) = env.get("DB_READ_HOST") else {
        return Ok(None);
    };
    Ok(Some(PgEndpoint {
        host: host.to_owned(),
        port: env.parse("DB_READ_PORT", 5432u16)?,
        pool_max: 0,
        pool_min: 0,
        ..primary.clone()
    }))
}

impl DbConfig {
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        let primary = primary(env)?;
        let read_vars = ("DB_READ_POOL_MAX", "DB_READ_POOL_MIN");
        let (read_pool_max, read_pool_min) = pool_size(env, read_vars, (100, 20))?;
        Ok(Self {
            replica: replica(env, &primary)?,
            direct: direct(env, &primary)?,
            primary,
            read_pool_max,
            read_pool_min,
            max_lifetime: Duration::from_secs(3600),
            statement_timeout: Duration::from_secs(30),
            slow_query: env.millis("SLOW_QUERY_MS", 1000, 1, 3_600_000)?,
            acquire_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
            tls: PgTls::from_env(env)?,
            pool_vars: crate::budget::PoolVars::from_env(env)?,
        })
    }

    /// The endpoint of the parts that need a session: the direct one when set, else the
    /// primary; with the write pool's sizes.
    pub fn session_endpoint(&self) -> PgEndpoint {
        match &self.direct {
            Some(d) => PgEndpoint {
                pool_max: self.primary.pool_max,
                pool_min: self.primary.pool_min,
                ..d.clone()
            },
            None => self.primary.clone(),
        }
    }

    /// The endpoint reads go to: the replica when configured, else the primary; with the read
    /// pool's sizes either way.
    pub fn read_endpoint(&self) -> PgEndpoint {
        let server = self.replica.as_ref().unwrap_or(&self.primary);
        PgEndpoint {
            pool_max: self.read_pool_max,
            pool_min: self.read_pool_min,
            ..server.clone()
        }
    }
}

/// Where the queue's Redis and the cache's Redis are.
#[derive(Debug, Clone)]
pub struct RedisConfig {
    /// The queue's Redis; it must run with `maxmemory-policy noeviction`.
    pub url: Secret,
    /// The cache's Redis (may be an LRU instance); the queue's Redis when unset.
    pub cache_url: Secret,
}

impl RedisConfig {
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        let url = match env.get("REDIS_URL") {
            Some(u) => u.to_owned(),
            None => {
                let host = env.string("REDIS_HOST", "localhost");
                let port: u16 = env.parse("REDIS_PORT", 6379)?;
                match env.get("REDIS_PASSWORD") {
                    Some(p) => format!("redis://:{}@{host}:{port}/", percent_encode(p)),
                    None => format!("redis://{host}:{port}/"),
                }
            }
        };
        check_redis_url("REDIS_URL", &url)?;
        let cache_url = match env.get("CACHE_REDIS_URL") {
            Some(u) => {
                check_redis_url("CACHE_REDIS_URL", u)?;
                u.to_owned()
            }
            None => url.clone(),
        };
        Ok(Self {
            url: Secret::new(url),
            cache_url: Secret::new(cache_url),
        })
    }
}

/// One `redis://` or `rediss://` URL, or a comma-separated list of them (a Redis Cluster's seed
/// nodes).
fn check_redis_url(var: &'static str, url: &str) -> Result<(), ConfigError> {
    let urls = crate::redis_conn::urls(url);
    if urls.is_empty() {
        return Err(ConfigError::new(var, "empty"));
    }
    for u in urls {
        if ::redis::parse_redis_url(u).is_none() {
            return Err(ConfigError::new(
                var,
                "not a redis:// or rediss:// URL, or a comma-separated list of them",
            ));
        }
    }
    Ok(())
}

/// Percent-encodes a password for use inside a URL's userinfo.
fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Log output settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogConfig {
    pub json: bool,
    /// An `EnvFilter` directive such as `info` or `batch_writer=debug,info`.
    pub filter: String,
}

impl LogConfig {
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        let json = match env.get("LOG_FORMAT").unwrap_or("plain") {
            "json" => true,
            "plain" | "text" => false,
            other => {
                return Err(ConfigError::new(
                    "LOG_FORMAT",
                    format!("{other:?} is neither \"json\" nor \"plain\""),
                ))
            }
        };
        let filter = env
            .get("RUST_LOG")
            .or(env.get("LOG_LEVEL"))
            .unwrap_or("info")
            .to_owned();
        tracing_subscriber::EnvFilter::try_new(&filter)
            .map_err(|e| ConfigError::new("RUST_LOG", e.to_string()))?;
        Ok(Self { json, filter })
    }
}

/// How long events are kept, in months; shared by the gateway (which refuses older events), the
/// writer and the maintenance worker (which drops older partitions).
pub fn retention_months(env: &Env) -> Result<u32, ConfigError> {
    env.bounded("RETENTION_MONTHS", 12, 1, 1200)
        .map(|v| v as u32)
}

/// Months of partitions kept ready ahead of now.
pub fn premake_months(env: &Env) -> Result<u32, ConfigError> {
    env.bounded("PARTITION_PREMAKE_MONTHS", 6, 1, 120)
        .map(|v| v as u32)
}

/// Number of stream shards the queue is split into (gateway and writers must agree).
pub fn stream_shards(env: &Env) -> Result<u16, ConfigError> {
    env.bounded("STREAM_SHARDS", 4, 1, 1024).map(|v| v as u16)
}
