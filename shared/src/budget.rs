//! The connection budget: how many PostgreSQL connections each daemon opens at rest and at most,
//! and the `max_connections` a deployment of N gateways, M writers and K maintenance replicas
//! needs (`docs/operations.md`, "Connection budget", explains the figures).
//!
//! Each daemon opens only the pools it uses, sized by what it does. `DB_POOL_MAX`,
//! `DB_POOL_MIN`, `DB_READ_POOL_MAX` and `DB_READ_POOL_MIN` are upper bounds: unset, a pool takes
//! its daemon's need; set, the maximum of a pool whose use is fixed by the daemon's concurrency
//! (the writer's, the maintenance worker's) is the smaller of the variable and the need, the
//! maximum of a pool driven by client demand (the gateway's) is the variable, and a warm minimum
//! is never more than the daemon uses in steady state.

use crate::config::{ConfigError, DbConfig, Env};

/// What one pool of one daemon needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolNeed {
    /// Connections the daemon can use at once: the pool's maximum when the variable is unset.
    pub max: usize,
    /// Connections it uses in steady state: the warm minimum, and the most the `_MIN` variable
    /// can ask for.
    pub warm: usize,
    /// True when the daemon can never use more than `max` at once, so the `_MAX` variable only
    /// lowers the pool; false when client demand decides, so the variable sets it.
    pub bounded: bool,
}

impl PoolNeed {
    /// The pool's (maximum, minimum) under the variables' values, when set.
    pub fn size(&self, var_max: Option<usize>, var_min: Option<usize>) -> (usize, usize) {
        let max = match var_max {
            None => self.max,
            Some(v) if self.bounded => v.min(self.max),
            Some(v) => v,
        };
        let min = var_min.map_or(self.warm, |m| m.min(self.warm)).min(max);
        (max, min)
    }
}

/// The gateway's pool on the primary: key lookups (a key the cache does not know, a key a
/// notification names) and the periodic key reload, which must not read a lagging replica;
/// nothing in the daemon writes (apps and keys are one-shot commands with a connection of their
/// own). Small, and opened on use.
pub const GATEWAY_WRITE: PoolNeed = PoolNeed {
    max: 2,
    warm: 0,
    bounded: false,
};

/// The gateway's read pool: the key cache's reload (every `KEY_REFRESH_MS`) and the read API's
/// queries (mostly answered from the cache, with one query per key in flight).
pub const GATEWAY_READ: PoolNeed = PoolNeed {
    max: 10,
    warm: 2,
    bounded: false,
};

/// Connections a writer uses beside its COPY streams: the readiness probe and a dead letter or
/// partition listing while every stream is busy.
pub const WRITER_CHORES: usize = 2;

/// The writer's write pool: one connection per COPY stream (`WRITER_CONCURRENCY`) plus chores.
pub fn writer(concurrency: usize) -> PoolNeed {
    PoolNeed {
        max: concurrency + WRITER_CHORES,
        warm: concurrency,
        bounded: true,
    }
}

/// The maintenance worker's write pool: a job holds its lock on one connection and works on
/// another, and two jobs often start together (partitions and views at the top of the hour),
/// plus the readiness probe. An erasure tick takes one of the two job slots and one connection.
pub const MAINTENANCE: PoolNeed = PoolNeed {
    max: 5,
    warm: 1,
    bounded: true,
};

/// Connections the maintenance worker opens outside its pool: the leader lock's session.
pub const MAINTENANCE_SESSIONS: usize = 1;

/// PostgreSQL's `superuser_reserved_connections` default: slots other roles cannot use.
pub const SUPERUSER_RESERVED: usize = 3;

/// Slots left for one-shot commands (`migrate`, `apps create`, `run-once`), `psql` and a
/// monitoring exporter.
pub const OPERATOR_HEADROOM: usize = 5;

/// `WRITER_CONCURRENCY` [2]: batches a writer writes at once, each on a connection of its own.
pub fn writer_concurrency(env: &Env) -> Result<usize, ConfigError> {
    env.bounded("WRITER_CONCURRENCY", 2, 1, 64)
        .map(|v| v as usize)
}

/// The environment's pool variables, as set (`None` when unset).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PoolVars {
    pub write_max: Option<usize>,
    pub write_min: Option<usize>,
    pub read_max: Option<usize>,
    pub read_min: Option<usize>,
}

impl PoolVars {
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        // A maximum of at least one, a minimum of zero or more, as `DbConfig::from_env` checks.
        let opt = |var, least| {
            env.get(var)
                .map(|_| env.bounded(var, 0, least, 10_000).map(|v| v as usize))
                .transpose()
        };
        Ok(Self {
            write_max: opt("DB_POOL_MAX", 1)?,
            write_min: opt("DB_POOL_MIN", 0)?,
            read_max: opt("DB_READ_POOL_MAX", 1)?,
            read_min: opt("DB_READ_POOL_MIN", 0)?,
        })
    }
}

impl DbConfig {
    /// Sizes the pools for a daemon's needs; a pool the daemon does not use (`None`) gets no
    /// connection at all.
    pub fn sized_for(mut self, write: Option<PoolNeed>, read: Option<PoolNeed>) -> Self {
        let v = self.pool_vars;
        let (wmax, wmin) = write.map_or((0, 0), |n| n.size(v.write_max, v.write_min));
        let (rmax, rmin) = read.map_or((0, 0), |n| n.size(v.read_max, v.read_min));
        (self.primary.pool_max, self.primary.pool_min) = (wmax, wmin);
        (self.read_pool_max, self.read_pool_min) = (rmax, rmin);
        self
    }
}

/// Connections one replica of a daemon holds to the primary.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Use {
    /// Once started and idle: the warm minimums and sessions.
    pub at_rest: usize,
    /// Every pool full.
    pub at_most: usize,
}

impl std::ops::Add for Use {
    type Output = Use;
    fn add(self, o: Use) -> Use {
        Use {
            at_rest: self.at_rest + o.at_rest,
            at_most: self.at_most + o.at_most,
        }
    }
}

impl std::ops::Mul<usize> for Use {
    type Output = Use;
    fn mul(self, n: usize) -> Use {
        Use {
            at_rest: self.at_rest * n,
            at_most: self.at_most * n,
        }
    }
}

fn pool_use(need: PoolNeed, var_max: Option<usize>, var_min: Option<usize>) -> Use {
    let (max, min) = need.size(var_max, var_min);
    Use {
        at_rest: min,
        at_most: max,
    }
}

/// Sessions a gateway holds outside its pools: the LISTEN session for key changes (on the
/// primary, where notifications are sent).
pub const GATEWAY_SESSIONS: usize = 1;

/// A gateway replica's connections to the primary under `env` (none for reads when
/// `DB_READ_HOST` sends them to a replica), its key-change session included.
pub fn gateway_use(env: &Env) -> Result<Use, ConfigError> {
    let v = PoolVars::from_env(env)?;
    let session = Use {
        at_rest: GATEWAY_SESSIONS,
        at_most: GATEWAY_SESSIONS,
    };
    let write = pool_use(GATEWAY_WRITE, v.write_max, v.write_min) + session;
    let read = match env.get("DB_READ_HOST") {
        Some(_) => Use::default(),
        None => pool_use(GATEWAY_READ, v.read_max, v.read_min),
    };
    Ok(write + read)
}

/// A writer replica's connections under `env`.
pub fn writer_use(env: &Env) -> Result<Use, ConfigError> {
    let v = PoolVars::from_env(env)?;
    Ok(pool_use(
        writer(writer_concurrency(env)?),
        v.write_max,
        v.write_min,
    ))
}

/// A maintenance replica's connections under `env` (its leader session included).
pub fn maintenance_use(env: &Env) -> Result<Use, ConfigError> {
    let v = PoolVars::from_env(env)?;
    let session = Use {
        at_rest: MAINTENANCE_SESSIONS,
        at_most: MAINTENANCE_SESSIONS,
    };
    Ok(pool_use(MAINTENANCE, v.write_max, v.write_min) + session)
}

/// A deployment: replicas of each daemon and the environment each runs with.
#[derive(Debug, Clone)]
pub struct Deployment {
    pub gateways: (usize, Env),
    pub writers: (usize, Env),
    pub maintenance: (usize, Env),
}

impl Deployment {
    /// Connections the daemons hold to the primary, at rest and at most.
    pub fn daemons(&self) -> Result<Use, ConfigError> {
        Ok(gateway_use(&self.gateways.1)? * self.gateways.0
            + writer_use(&self.writers.1)? * self.writers.0
            + maintenance_use(&self.maintenance.1)? * self.maintenance.0)
    }

    /// The smallest `max_connections` that serves every daemon at its maximum, with the
    /// superuser reserve and operator headroom:
    /// `N·gateway + M·writer + K·maintenance + SUPERUSER_RESERVED + OPERATOR_HEADROOM`.
    pub fn max_connections_needed(&self) -> Result<usize, ConfigError> {
        Ok(self.daemons()?.at_most + SUPERUSER_RESERVED + OPERATOR_HEADROOM)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Env {
        Env::from_pairs(pairs.iter().copied())
    }

    #[test]
    fn unset_variables_give_each_daemon_its_need() {
        let none = Env::default();
        let at = |rest, most| Use {
            at_rest: rest,
            at_most: most,
        };
        assert_eq!(gateway_use(&none), Ok(at(3, 13)));
        assert_eq!(writer_use(&none), Ok(at(2, 4)));
        assert_eq!(maintenance_use(&none), Ok(at(2, 6)));
        let four = env(&[("WRITER_CONCURRENCY", "4")]);
        assert_eq!(writer_use(&four), Ok(at(4, 6)));
    }

    #[test]
    fn set_variables_are_upper_bounds() {
        let contract = env(&[
            ("DB_POOL_MAX", "50"),
            ("DB_POOL_MIN", "10"),
            ("DB_READ_POOL_MAX", "100"),
            ("DB_READ_POOL_MIN", "20"),
        ]);
        // A writer or maintenance replica never opens more than it can use, nor warms more
        // than it uses in steady state.
        assert_eq!(writer_use(&contract).map(|u| u.at_most), Ok(4));
        assert_eq!(writer_use(&contract).map(|u| u.at_rest), Ok(2));
        assert_eq!(maintenance_use(&contract).map(|u| u.at_most), Ok(6));
        // The gateway's pools follow client demand: the variables set their maximum.
        assert_eq!(gateway_use(&contract).map(|u| u.at_most), Ok(151));
        assert_eq!(gateway_use(&contract).map(|u| u.at_rest), Ok(3));
        let small = env(&[("DB_POOL_MAX", "1"), ("DB_POOL_MIN", "0")]);
        assert_eq!(writer(2).size(Some(1), Some(0)), (1, 0));
        assert_eq!(writer_use(&small).map(|u| u.at_most), Ok(1));
        let replica = env(&[("DB_READ_HOST", "replica")]);
        assert_eq!(gateway_use(&replica).map(|u| u.at_most), Ok(3));
        let zero = writer_use(&env(&[("DB_POOL_MAX", "0")])).expect_err("zero");
        assert_eq!(zero.var, "DB_POOL_MAX");
    }

    #[test]
    fn a_daemon_opens_only_its_pools() {
        let db = DbConfig::from_env(&env(&[("DB_READ_HOST", "replica")]))
            .expect("parse")
            .sized_for(Some(writer(3)), None);
        assert_eq!((db.primary.pool_max, db.primary.pool_min), (5, 3));
        assert_eq!((db.read_pool_max, db.read_pool_min), (0, 0));
        let read = db.read_endpoint();
        assert_eq!(
            (read.host.as_str(), read.pool_max, read.pool_min),
            ("replica", 0, 0)
        );
    }

    #[test]
    fn defaults_serve_the_largest_deployment_on_a_stock_server() {
        // One gateway, writers at the KEDA maximum, two maintenance replicas.
        let d = Deployment {
            gateways: (1, Env::default()),
            writers: (8, Env::default()),
            maintenance: (2, Env::default()),
        };
        assert_eq!(d.daemons().map(|u| u.at_most), Ok(13 + 32 + 12));
        assert!(d.max_connections_needed().expect("budget") <= 100);
    }
}
