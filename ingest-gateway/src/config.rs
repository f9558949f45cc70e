//! The gateway's configuration, read once from the environment.

use std::net::SocketAddr;
use std::time::Duration;

use shared::budget;
use shared::config::{self, ConfigError, DbConfig, Env, LogConfig, RedisConfig};

/// Which browser origins get CORS answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CorsOrigins {
    Any,
    List(Vec<String>),
}

impl CorsOrigins {
    /// The `Access-Control-Allow-Origin` value for a request from `origin`, if allowed.
    pub fn allow(&self, origin: &str) -> Option<String> {
        match self {
            CorsOrigins::Any => Some("*".to_owned()),
            CorsOrigins::List(list) => list
                .iter()
                .find(|o| o.eq_ignore_ascii_case(origin))
                .map(|_| origin.to_owned()),
        }
    }
}

#[derive(Debug, Clone)]
pub struct GatewayConfig {
    pub db: DbConfig,
    pub redis: RedisConfig,
    pub log: LogConfig,
    pub addr: SocketAddr,
    pub metrics_addr: SocketAddr,
    pub max_events_per_request: usize,
    pub max_body_bytes: usize,
    /// Largest SDK request body, after decompression (the SDK routes).
    pub sdk_max_body_bytes: usize,
    /// Largest SDK message (one element of a batch), as sent.
    pub sdk_max_event_bytes: usize,
    pub cors: CorsOrigins,
    /// Events per second per app; 0 turns the limit off. Apps may override it.
    pub rate_limit_events_per_sec: u32,
    pub queue_high_water: u64,
    pub dedupe_window: Duration,
    pub retention_months: u32,
    pub stream_shards: u16,
    /// Prefix of every Redis key of the queue, so that several pipelines (or tests) share a Redis.
    pub stream_prefix: String,
    /// How often the in-memory key cache is reloaded: a revoked key stops working within this.
    pub key_refresh: Duration,
    /// How often the suppression lists and erasure generations are re-read in case a
    /// notification was lost (`PRIVACY_POLL_MS`).
    pub privacy_poll: Duration,
    /// Bound on every Redis call of a request; past it the client gets 503.
    pub redis_timeout: Duration,
    /// Concurrent client connections above which new ones wait to be accepted.
    pub max_connections: usize,
    pub header_read_timeout: Duration,
    pub body_read_timeout: Duration,
    /// How long shutdown waits for in-flight requests.
    pub shutdown_grace: Duration,
    /// Cache TTL of read answers whose range includes today.
    pub cache_ttl_live: Duration,
    /// Cache TTL of read answers for closed ranges.
    pub cache_ttl_closed: Duration,
    /// Bound on every cache call; past it the cache counts as down.
    pub cache_timeout: Duration,
    /// How often the cache's keys, memory and hit ratio are published on `/metrics`.
    pub cache_stats_interval: Duration,
    /// Longest range a read query may cover, in days.
    pub stats_max_range_days: u32,
}

impl CorsOrigins {
    /// `CORS_ALLOWED_ORIGINS`: `*` (the default) or a comma-separated list of origins.
    fn from_env(env: &Env) -> Self {
        match env.get("CORS_ALLOWED_ORIGINS").unwrap_or("*").trim() {
            "*" => CorsOrigins::Any,
            list => CorsOrigins::List(origins(list)),
        }
    }
}

/// The origins of a comma-separated list, each without a trailing slash.
fn origins(list: &str) -> Vec<String> {
    list.split(',')
        .map(|o| o.trim().trim_end_matches('/').to_owned())
        .filter(|o| !o.is_empty())
        .collect()
}

impl GatewayConfig {
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        Ok(Self {
            // The read pool serves the read API (and the first key load); the pool on the primary
            // is small and lazy: key lookups, notifications' re-reads and the periodic reload.
            db: DbConfig::from_env(env)?
                .sized_for(Some(budget::GATEWAY_WRITE), Some(budget::GATEWAY_READ)),
            redis: RedisConfig::from_env(env)?,
            log: LogConfig::from_env(env)?,
            addr: env.addr("GATEWAY_ADDR", "0.0.0.0:8080")?,
            metrics_addr: env.addr("METRICS_ADDR", "0.0.0.0:9100")?,
            max_events_per_request: usize_of(env, "MAX_EVENTS_PER_REQUEST", 1000, 1, 100_000)?,
            max_body_bytes: usize_of(env, "MAX_BODY_BYTES", 1 << 20, 1024, 1 << 30)?,
            sdk_max_body_bytes: usize_of(env, "SDK_MAX_BODY_BYTES", 5 << 20, 1024, 1 << 30)?,
            sdk_max_event_bytes: usize_of(env, "SDK_MAX_EVENT_BYTES", 32 << 10, 256, 16 << 20)?,
            cors: CorsOrigins::from_env(env),
            rate_limit_events_per_sec: u32_of(env, "RATE_LIMIT_EVENTS_PER_SEC", 0, 0, 100_000_000)?,
            queue_high_water: env.bounded("QUEUE_HIGH_WATER", 2_000_000, 1, u64::MAX / 2)?,
            dedupe_window: secs_of(env, "DEDUPE_WINDOW_HOURS", 24, 1, 24 * 365)? * 3600,
            retention_months: config::retention_months(env)?,
            stream_shards: config::stream_shards(env)?,
            stream_prefix: env.string("STREAM_PREFIX", "sluice"),
            key_refresh: env.millis("KEY_REFRESH_MS", 60_000, 100, 3_600_000)?,
            privacy_poll: env.millis("PRIVACY_POLL_MS", 60_000, 100, 3_600_000)?,
            redis_timeout: env.millis("REDIS_TIMEOUT_MS", 2000, 10, 60_000)?,
            max_connections: usize_of(env, "MAX_CONNECTIONS", 20_000, 1, 1_000_000)?,
            header_read_timeout: env.millis("HEADER_READ_TIMEOUT_MS", 10_000, 100, 600_000)?,
            body_read_timeout: env.millis("BODY_READ_TIMEOUT_MS", 30_000, 100, 600_000)?,
            shutdown_grace: env.millis("SHUTDOWN_GRACE_MS", 10_000, 0, 600_000)?,
            cache_ttl_live: secs_of(env, "CACHE_TTL_LIVE_SECS", 10, 1, 86_400)?,
            cache_ttl_closed: secs_of(env, "CACHE_TTL_CLOSED_SECS", 3600, 1, 30 * 86_400)?,
            cache_timeout: env.millis("CACHE_TIMEOUT_MS", 200, 10, 60_000)?,
            cache_stats_interval: env.millis("CACHE_STATS_INTERVAL_MS", 15_000, 100, 3_600_000)?,
            stats_max_range_days: u32_of(env, "STATS_MAX_RANGE_DAYS", 366, 1, 3660)?,
        })
    }
}

/// A count or a size within `min..=max` (bounds that fit a `usize`).
fn usize_of(
    env: &Env,
    var: &'static str,
    default: u64,
    min: u64,
    max: u64,
) -> Result<usize, ConfigError> {
    Ok(env.bounded(var, default, min, max)? as usize)
}

/// A count within `min..=max` (bounds that fit a `u32`).
fn u32_of(
    env: &Env,
    var: &'static str,
    default: u64,
    min: u64,
    max: u64,
) -> Result<u32, ConfigError> {
    Ok(env.bounded(var, default, min, max)? as u32)
}

/// A whole number of seconds within `min..=max` (hours when multiplied by 3600).
fn secs_of(
    env: &Env,
    var: &'static str,
    default: u64,
    min: u64,
    max: u64,
) -> Result<Duration, ConfigError> {
    Ok(Duration::from_secs(env.bounded(var, default, min, max)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_follow_the_contract() {
        let c = GatewayConfig::from_env(&Env::default()).expect("defaults");
        assert_eq!(c.addr.to_string(), "0.0.0.0:8080");
        assert_eq!(c.metrics_addr.to_string(), "0.0.0.0:9100");
        assert_eq!(c.max_events_per_request, 1000);
        assert_eq!(c.max_body_bytes, 1 << 20);
        assert_eq!(c.cors, CorsOrigins::Any);
        assert_eq!(c.rate_limit_events_per_sec, 0);
        assert_eq!(c.queue_high_water, 2_000_000);
        assert_eq!(c.dedupe_window, Duration::from_secs(24 * 3600));
        assert_eq!((c.db.primary.pool_max, c.db.primary.pool_min), (2, 0));
        assert_eq!((c.db.read_pool_max, c.db.read_pool_min), (10, 2));
    }

    #[test]
    fn bad_values_name_their_variable() {
        for (var, value) in [
            ("GATEWAY_ADDR", "8080"),
            ("METRICS_ADDR", "x:y"),
            ("MAX_EVENTS_PER_REQUEST", "0"),
            ("MAX_BODY_BYTES", "big"),
            ("RATE_LIMIT_EVENTS_PER_SEC", "-5"),
            ("QUEUE_HIGH_WATER", "0"),
            ("DEDUPE_WINDOW_HOURS", "1d"),
            ("STREAM_SHARDS", "0"),
            ("KEY_REFRESH_MS", "1"),
        ] {
            let err = GatewayConfig::from_env(&Env::from_pairs([(var, value)])).expect_err(var);
            assert_eq!(err.var, var, "{err}");
        }
    }

    #[test]
    fn cors_lists_match_exact_origins() {
        let c = GatewayConfig::from_env(&Env::from_pairs([(
            "CORS_ALLOWED_ORIGINS",
            "https://a.example, https://b.example/",
        )]))
        .expect("parse");
        assert_eq!(
            c.cors.allow("https://b.example"),
            Some("https://b.example".into())
        );
        assert_eq!(c.cors.allow("https://c.example"), None);
        assert_eq!(CorsOrigins::Any.allow("https://x"), Some("*".into()));
    }
}
