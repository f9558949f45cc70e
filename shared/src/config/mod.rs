//! Typed configuration read once from the environment.
//!
//! Every daemon builds its config from an [`Env`], which is the process environment in production
//! and a plain map in tests (tests never mutate the process environment, so they run in parallel).
//! A value that does not parse is an error naming the variable, never a silent default.

use std::collections::HashMap;
use std::fmt::Display;
use std::net::SocketAddr;
use std::str::FromStr;
use std::time::Duration;

use crate::secret::Secret;

/// A value of one environment variable could not be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid value for {var}: {reason}")]
pub struct ConfigError {
    /// The environment variable at fault.
    pub var: &'static str,
    /// Why its value was refused (the value itself is left out: it may be a secret).
    pub reason: String,
}

impl ConfigError {
    pub fn new(var: &'static str, reason: impl Into<String>) -> Self {
        Self {
            var,
            reason: reason.into(),
        }
    }
}

/// Where configuration values come from.
#[derive(Debug, Clone, Default)]
pub struct Env {
    vars: HashMap<String, String>,
    /// Every variable asked for, set or not (docs/configuration.md is checked against it).
    asked: std::sync::Arc<std::sync::Mutex<std::collections::BTreeSet<String>>>,
}

impl Env {
    /// The process environment, read once.
    pub fn from_process() -> Self {
        Self {
            vars: std::env::vars().collect(),
            asked: Default::default(),
        }
    }

    /// A fixed set of variables, for tests and tools.
    pub fn from_pairs<K: Into<String>, V: Into<String>>(
        pairs: impl IntoIterator<Item = (K, V)>,
    ) -> Self {
        Self {
            vars: pairs
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
            asked: Default::default(),
        }
    }

    /// The names of every variable asked for so far, set or not.
    pub fn asked(&self) -> Vec<String> {
        self.asked
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .cloned()
            .collect()
    }

    /// The raw value; an empty value counts as unset.
    pub fn get(&self, var: &str) -> Option<&str> {
        self.asked
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(var.to_owned());
        self.vars
            .get(var)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }

    pub fn string(&self, var: &'static str, default: &str) -> String {
        self.get(var).unwrap_or(default).to_owned()
    }

    /// Parses `var` with `FromStr`, falling back to `default` when unset.
    pub fn parse<T>(&self, var: &'static str, default: T) -> Result<T, ConfigError>
    where
        T: FromStr,
        T::Err: Display,
    {
        match self.get(var) {
            None => Ok(default),
            Some(raw) => raw
                .trim()
                .parse()
                .map_err(|e| ConfigError::new(var, format!("{e} (got {raw:?})"))),
        }
    }

    pub fn parse_opt<T>(&self, var: &'static str) -> Result<Option<T>, ConfigError>
    where
        T: FromStr,
        T::Err: Display,
    {
        self.get(var)
            .map(|raw| {
                raw.trim()
                    .parse()
                    .map_err(|e| ConfigError::new(var, format!("{e} (got {raw:?})")))
            })
            .transpose()
    }

    /// A whole number within `min..=max`.
    pub fn bounded(
        &self,
        var: &'static str,
        default: u64,
        min: u64,
        max: u64,
    ) -> Result<u64, ConfigError> {
        let v: u64 = self.parse(var, default)?;
        if v < min || v > max {
            return Err(ConfigError::new(
                var,
                format!("{v} is outside {min}..={max}"),
            ));
        }
        Ok(v)
    }

    pub fn millis(
        &self,
        var: &'static str,
        default: u64,
        min: u64,
        max: u64,
    ) -> Result<Duration, ConfigError> {
        self.bounded(var, default, min, max)
            .map(Duration::from_millis)
    }

    pub fn addr(&self, var: &'static str, default: &str) -> Result<SocketAddr, ConfigError> {
        let raw = self.get(var).unwrap_or(default);
        raw.parse()
            .map_err(|e| ConfigError::new(var, format!("{e} (got {raw:?}, want HOST:PORT)")))
    }

    pub fn secret(&self, var: &'static str, default: Option<&str>) -> Option<Secret> {
        self.get(var).or(default).map(|v| Secret::new(v.to_owned()))
    }
}

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
}

/// The database settings every daemon shares.
#[derive(Debug, Clone)]
pub struct DbConfig {
    pub primary: PgEndpoint,
    /// `None` when `DB_READ_HOST` is unset: reads then go to the primary.
    pub replica: Option<PgEndpoint>,
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

impl DbConfig {
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        let pool_max = env.bounded("DB_POOL_MAX", 50, 1, 10_000)? as usize;
        let pool_min = env.bounded("DB_POOL_MIN", 10, 0, 10_000)? as usize;
        // Either alone is a bound a daemon's need may sit under (see `budget`); both set must
        // agree.
        let both = |a, b| env.get(a).is_some() && env.get(b).is_some();
        if pool_min > pool_max && both("DB_POOL_MIN", "DB_POOL_MAX") {
            return Err(ConfigError::new(
                "DB_POOL_MIN",
                format!("{pool_min} is above DB_POOL_MAX ({pool_max})"),
            ));
        }
        let primary = PgEndpoint {
            host: env.string("DB_HOST", "localhost"),
            port: env.parse("DB_PORT", 5432u16)?,
            dbname: env.string("DB_NAME", "analytics_db"),
            user: env.string("DB_USER", "postgres"),
            password: env
                .secret("DB_PASSWORD", Some("postgres"))
                .unwrap_or_default(),
            pool_max,
            pool_min,
        };
        let read_pool_max = env.bounded("DB_READ_POOL_MAX", 100, 1, 10_000)? as usize;
        let read_pool_min = env.bounded("DB_READ_POOL_MIN", 20, 0, 10_000)? as usize;
        if read_pool_min > read_pool_max && both("DB_READ_POOL_MIN", "DB_READ_POOL_MAX") {
            return Err(ConfigError::new(
                "DB_READ_POOL_MIN",
                format!("{read_pool_min} is above DB_READ_POOL_MAX ({read_pool_max})"),
            ));
        }
        let replica = match env.get("DB_READ_HOST") {
            None => None,
            Some(host) => Some(PgEndpoint {
                host: host.to_owned(),
                port: env.parse("DB_READ_PORT", 5432u16)?,
                pool_max: read_pool_max,
                pool_min: read_pool_min,
                ..primary.clone()
            }),
        };
        Ok(Self {
            primary,
            replica,
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

    /// The endpoint reads go to: the replica when configured, else the primary with the read
    /// pool's own size.
    pub fn read_endpoint(&self) -> PgEndpoint {
        match &self.replica {
            Some(r) => r.clone(),
            None => PgEndpoint {
                pool_max: self.read_pool_max,
                pool_min: self.read_pool_min,
                ..self.primary.clone()
            },
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
        if redis::parse_redis_url(u).is_none() {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Env {
        Env::from_pairs(pairs.iter().copied())
    }

    #[test]
    fn defaults_follow_the_contract() {
        let db = DbConfig::from_env(&Env::default()).expect("defaults parse");
        assert_eq!(db.primary.host, "localhost");
        assert_eq!(db.primary.port, 5432);
        assert_eq!(db.primary.dbname, "analytics_db");
        assert_eq!(db.primary.user, "postgres");
        assert_eq!(db.primary.password.expose(), "postgres");
        assert_eq!((db.primary.pool_max, db.primary.pool_min), (50, 10));
        assert_eq!((db.read_pool_max, db.read_pool_min), (100, 20));
        assert!(db.replica.is_none());
        assert_eq!(db.slow_query, Duration::from_millis(1000));
        assert_eq!(db.statement_timeout, Duration::from_secs(30));
        assert_eq!(db.max_lifetime, Duration::from_secs(3600));
        let redis = RedisConfig::from_env(&Env::default()).expect("defaults parse");
        assert_eq!(redis.url.expose(), "redis://localhost:6379/");
        assert_eq!(redis.cache_url.expose(), redis.url.expose());
    }

    #[test]
    fn read_pool_falls_back_to_primary() {
        let db = DbConfig::from_env(&env(&[("DB_HOST", "primary.example")])).expect("parse");
        let r = db.read_endpoint();
        assert_eq!(r.host, "primary.example");
        assert_eq!((r.pool_max, r.pool_min), (100, 20));
        let db = DbConfig::from_env(&env(&[
            ("DB_HOST", "primary.example"),
            ("DB_READ_HOST", "replica.example"),
            ("DB_READ_PORT", "6543"),
        ]))
        .expect("parse");
        let r = db.read_endpoint();
        assert_eq!((r.host.as_str(), r.port), ("replica.example", 6543));
    }

    #[test]
    fn every_bad_value_names_its_variable() {
        let cases: &[(&str, &str)] = &[
            ("DB_PORT", "not-a-port"),
            ("DB_PORT", "70000"),
            ("DB_POOL_MAX", "0"),
            ("DB_POOL_MAX", "lots"),
            ("DB_POOL_MIN", "-1"),
            ("DB_READ_PORT", "x"),
            ("DB_READ_POOL_MAX", "0"),
            ("DB_READ_POOL_MIN", "many"),
            ("SLOW_QUERY_MS", "soon"),
        ];
        for (var, value) in cases {
            let mut pairs = vec![(*var, *value)];
            if var.starts_with("DB_READ_PORT") {
                pairs.push(("DB_READ_HOST", "replica"));
            }
            let err = DbConfig::from_env(&env(&pairs)).expect_err(var);
            assert_eq!(err.var, *var, "{var}={value}: {err}");
            assert!(err.to_string().contains(var), "{err}");
        }
        let err = DbConfig::from_env(&env(&[("DB_POOL_MIN", "60"), ("DB_POOL_MAX", "50")]))
            .expect_err("min>max");
        assert_eq!(err.var, "DB_POOL_MIN");
        let err = DbConfig::from_env(&env(&[
            ("DB_READ_POOL_MIN", "101"),
            ("DB_READ_POOL_MAX", "100"),
        ]))
        .expect_err("min>max");
        assert_eq!(err.var, "DB_READ_POOL_MIN");
        for (var, value) in [
            ("REDIS_PORT", "port"),
            ("REDIS_URL", "http://x"),
            ("CACHE_REDIS_URL", "nope"),
            ("REDIS_URL", "redis://a:7000,http://b:7001"),
            ("REDIS_URL", " , "),
        ] {
            let err = RedisConfig::from_env(&env(&[(var, value)])).expect_err(var);
            assert_eq!(err.var, var);
        }
        let err = LogConfig::from_env(&env(&[("LOG_FORMAT", "xml")])).expect_err("format");
        assert_eq!(err.var, "LOG_FORMAT");
        let err = retention_months(&env(&[("RETENTION_MONTHS", "0")])).expect_err("zero");
        assert_eq!(err.var, "RETENTION_MONTHS");
        let err = premake_months(&env(&[("PARTITION_PREMAKE_MONTHS", "x")])).expect_err("x");
        assert_eq!(err.var, "PARTITION_PREMAKE_MONTHS");
        let err = DbConfig::from_env(&env(&[("DB_SSLMODE", "allow")])).expect_err("sslmode");
        assert_eq!(err.var, "DB_SSLMODE");
        let err = DbConfig::from_env(&env(&[("DB_SSLROOTCERT", "/nonexistent/ca.pem")]))
            .expect_err("root cert");
        assert_eq!(err.var, "DB_SSLROOTCERT");
        let err = stream_shards(&env(&[("STREAM_SHARDS", "0")])).expect_err("zero");
        assert_eq!(err.var, "STREAM_SHARDS");
    }

    #[test]
    fn redis_url_is_built_from_parts_and_wins_when_set() {
        let r = RedisConfig::from_env(&env(&[
            ("REDIS_HOST", "q"),
            ("REDIS_PORT", "7000"),
            ("REDIS_PASSWORD", "p@ss word"),
        ]))
        .expect("parse");
        assert_eq!(r.url.expose(), "redis://:p%40ss%20word@q:7000/");
        let r = RedisConfig::from_env(&env(&[
            ("REDIS_URL", "redis://u:7001/"),
            ("REDIS_HOST", "ignored"),
            ("CACHE_REDIS_URL", "redis://cache:6379/"),
        ]))
        .expect("parse");
        assert_eq!(r.url.expose(), "redis://u:7001/");
        assert_eq!(r.cache_url.expose(), "redis://cache:6379/");
        let cluster = "redis://a:7000,redis://b:7001,rediss://c:7002";
        let r = RedisConfig::from_env(&env(&[("REDIS_URL", cluster)])).expect("cluster list");
        assert_eq!(r.url.expose(), cluster);
        assert_eq!(r.cache_url.expose(), cluster);
    }

    #[test]
    fn secrets_stay_out_of_debug() {
        let db = DbConfig::from_env(&env(&[("DB_PASSWORD", "hunter2")])).expect("parse");
        let redis = RedisConfig::from_env(&env(&[("REDIS_PASSWORD", "hunter3")])).expect("parse");
        let shown = format!("{db:?} {redis:?}");
        assert!(
            !shown.contains("hunter2") && !shown.contains("hunter3"),
            "{shown}"
        );
    }
}
