//! The batch writer's configuration, read once from the environment.

use std::net::SocketAddr;
use std::time::Duration;

use shared::budget;
use shared::config::{self, ConfigError, DbConfig, Env, LogConfig, RedisConfig};

#[derive(Debug, Clone)]
pub struct WriterConfig {
    pub db: DbConfig,
    pub redis: RedisConfig,
    pub log: LogConfig,
    pub metrics_addr: SocketAddr,
    pub batch_size: usize,
    pub batch_linger: Duration,
    pub claim_idle: Duration,
    pub max_deliveries: u32,
    pub dedupe_window: Duration,
    pub stream_shards: u16,
    pub stream_prefix: String,
    /// This replica's consumer name in the group; unique per process by default.
    pub consumer: String,
    /// Batches written at once (each on its own connection).
    pub writers: usize,
    /// How long SIGTERM waits for the batch in hand.
    pub shutdown_grace: Duration,
    /// Consumers of the group idle this long with nothing pending are deleted
    /// (`CONSUMER_IDLE_DELETE_MS`).
    pub consumer_idle_delete: Duration,
}

impl WriterConfig {
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        let host = std::fs::read_to_string("/etc/hostname")
            .map(|h| h.trim().to_owned())
            .unwrap_or_else(|_| "host".to_owned());
        let default_consumer = format!("{host}-{}", std::process::id());
        let writers = budget::writer_concurrency(env)?;
        Ok(Self {
            // One connection per COPY stream plus chores; no read pool.
            db: DbConfig::from_env(env)?.sized_for(Some(budget::writer(writers)), None),
            redis: RedisConfig::from_env(env)?,
            log: LogConfig::from_env(env)?,
            metrics_addr: env.addr("METRICS_ADDR", "0.0.0.0:9101")?,
            batch_size: env.bounded("BATCH_SIZE", 1000, 1, 100_000)? as usize,
            batch_linger: env.millis("BATCH_LINGER_MS", 200, 0, 60_000)?,
            claim_idle: env.millis("CLAIM_IDLE_MS", 30_000, 100, 86_400_000)?,
            max_deliveries: env.bounded("MAX_DELIVERIES", 5, 1, 1000)? as u32,
            dedupe_window: Duration::from_secs(
                env.bounded("DEDUPE_WINDOW_HOURS", 24, 1, 24 * 365)? * 3600,
            ),
            stream_shards: config::stream_shards(env)?,
            stream_prefix: env.string("STREAM_PREFIX", "sluice"),
            consumer: env.string("WRITER_CONSUMER_NAME", &default_consumer),
            writers,
            shutdown_grace: env.millis("SHUTDOWN_GRACE_MS", 30_000, 0, 600_000)?,
            consumer_idle_delete: env.millis(
                "CONSUMER_IDLE_DELETE_MS",
                3_600_000,
                1_000,
                30 * 86_400_000,
            )?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_follow_the_contract() {
        let c = WriterConfig::from_env(&Env::default()).expect("defaults");
        assert_eq!(c.metrics_addr.port(), 9101);
        assert_eq!(c.batch_size, 1000);
        assert_eq!(c.batch_linger, Duration::from_millis(200));
        assert_eq!(c.claim_idle, Duration::from_millis(30_000));
        assert_eq!(c.max_deliveries, 5);
        assert!(c.consumer.ends_with(&std::process::id().to_string()));
        // One connection per COPY stream, warm, plus chores; no read pool.
        assert_eq!((c.db.primary.pool_max, c.db.primary.pool_min), (4, 2));
        assert_eq!(c.db.read_pool_max, 0);
    }

    #[test]
    fn pool_variables_only_lower_the_writers_pool() {
        let c = WriterConfig::from_env(&Env::from_pairs([
            ("DB_POOL_MAX", "50"),
            ("DB_POOL_MIN", "10"),
            ("WRITER_CONCURRENCY", "3"),
        ]))
        .expect("parse");
        assert_eq!((c.db.primary.pool_max, c.db.primary.pool_min), (5, 3));
        let c = WriterConfig::from_env(&Env::from_pairs([("DB_POOL_MAX", "1")])).expect("parse");
        assert_eq!((c.db.primary.pool_max, c.db.primary.pool_min), (1, 1));
    }

    #[test]
    fn bad_values_name_their_variable() {
        for (var, value) in [
            ("BATCH_SIZE", "0"),
            ("BATCH_SIZE", "many"),
            ("BATCH_LINGER_MS", "-1"),
            ("CLAIM_IDLE_MS", "soon"),
            ("MAX_DELIVERIES", "0"),
            ("METRICS_ADDR", "9101"),
        ] {
            let err = WriterConfig::from_env(&Env::from_pairs([(var, value)])).expect_err(var);
            assert_eq!(err.var, var, "{err}");
        }
    }
}
