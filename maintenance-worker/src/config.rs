//! The maintenance worker's configuration, read once from the environment.

use std::net::SocketAddr;
use std::str::FromStr;

use croner::Cron;
use shared::budget;
use shared::config::{self, ConfigError, DbConfig, Env, LogConfig};

/// A job's schedule: a cron expression (UTC) and the variable it came from.
#[derive(Debug, Clone)]
pub struct Schedule {
    pub var: &'static str,
    pub cron: Cron,
}

impl Schedule {
    fn from_env(env: &Env, var: &'static str, default: &str) -> Result<Self, ConfigError> {
        let raw = env.string(var, default);
        let cron = Cron::from_str(raw.trim())
            .map_err(|e| ConfigError::new(var, format!("{raw:?} is not a cron expression: {e}")))?;
        Ok(Self { var, cron })
    }
}

/// The job schedules.
#[derive(Debug, Clone)]
pub struct Schedules {
    pub partitions: Schedule,
    pub refresh_views: Schedule,
    pub analyze: Schedule,
    pub vacuum: Schedule,
    pub retention: Schedule,
    pub dedupe_prune: Schedule,
}

#[derive(Debug, Clone)]
pub struct MaintenanceConfig {
    pub db: DbConfig,
    pub log: LogConfig,
    pub metrics_addr: SocketAddr,
    pub retention_months: u32,
    pub premake_months: u32,
    pub schedules: Schedules,
    /// How long the writer's exactly-once bookkeeping is kept (`DEDUPE_WINDOW_HOURS`).
    pub dedupe_window: std::time::Duration,
    /// The pipeline's `STREAM_PREFIX` (`migrate` registers it as pipeline 0 on an upgrade).
    pub stream_prefix: String,
    /// How often a replica tries to become (or checks it still is) the leader.
    pub leader_retry: std::time::Duration,
}

impl MaintenanceConfig {
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        Ok(Self {
            // A few connections for jobs and readiness; no read pool.
            db: DbConfig::from_env(env)?.sized_for(Some(budget::MAINTENANCE), None),
            log: LogConfig::from_env(env)?,
            metrics_addr: env.addr("METRICS_ADDR", "0.0.0.0:9102")?,
            retention_months: config::retention_months(env)?,
            premake_months: config::premake_months(env)?,
            dedupe_window: std::time::Duration::from_secs(
                env.bounded("DEDUPE_WINDOW_HOURS", 24, 1, 24 * 365)? * 3600,
            ),
            leader_retry: env.millis("LEADER_RETRY_MS", 5000, 50, 600_000)?,
            stream_prefix: env.string("STREAM_PREFIX", "sluice"),
            schedules: Schedules {
                partitions: Schedule::from_env(env, "SCHEDULE_PARTITIONS", "0 * * * *")?,
                refresh_views: Schedule::from_env(env, "SCHEDULE_REFRESH_VIEWS", "* * * * *")?,
                analyze: Schedule::from_env(env, "SCHEDULE_ANALYZE", "0 2 * * *")?,
                vacuum: Schedule::from_env(env, "SCHEDULE_VACUUM", "0 3 * * 0")?,
                retention: Schedule::from_env(env, "SCHEDULE_RETENTION", "0 4 1 * *")?,
                dedupe_prune: Schedule::from_env(env, "SCHEDULE_DEDUPE_PRUNE", "30 * * * *")?,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_parse() {
        let c = MaintenanceConfig::from_env(&Env::default()).expect("defaults");
        assert_eq!(c.metrics_addr.port(), 9102);
        assert_eq!((c.retention_months, c.premake_months), (12, 6));
        assert_eq!(c.schedules.vacuum.var, "SCHEDULE_VACUUM");
        assert_eq!((c.db.primary.pool_max, c.db.primary.pool_min), (5, 1));
        assert_eq!(c.db.read_pool_max, 0);
    }

    #[test]
    fn a_bad_cron_expression_names_its_variable() {
        for var in [
            "SCHEDULE_PARTITIONS",
            "SCHEDULE_REFRESH_VIEWS",
            "SCHEDULE_ANALYZE",
            "SCHEDULE_VACUUM",
            "SCHEDULE_RETENTION",
            "SCHEDULE_DEDUPE_PRUNE",
        ] {
            let err = MaintenanceConfig::from_env(&Env::from_pairs([(var, "61 * * * *")]))
                .expect_err(var);
            assert_eq!(err.var, var);
            assert!(err.to_string().contains(var), "{err}");
        }
        let err = MaintenanceConfig::from_env(&Env::from_pairs([("METRICS_ADDR", "nowhere")]))
            .expect_err("addr");
        assert_eq!(err.var, "METRICS_ADDR");
    }
}
