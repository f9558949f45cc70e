//! The faults, and one run of each: load, inject, clear, measure recovery, more load, drain,
//! audit.

use std::time::{Duration, Instant};

use anyhow::Context;

use crate::load::{audit, recovery, Audit, Load};
use crate::servers::{OwnCluster, OwnPostgres, OwnRedis};
use crate::stack::{Stack, SHARDS};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Fault {
    /// SIGKILL of one batch writer (restarted a second later, as a supervisor would).
    WriterKill,
    /// SIGKILL of the gateway (restarted).
    GatewayKill,
    /// SIGKILL of the maintenance worker (restarted).
    MaintenanceKill,
    /// PostgreSQL stopped without a checkpoint (`pg_ctl stop -m immediate`) and started.
    PostgresRestart,
    /// The queue's Redis (AOF, `appendfsync everysec`) SIGKILLed and started; it reloads the AOF.
    RedisRestart,
    /// PostgreSQL stalled: `analytics_events` locked (ACCESS EXCLUSIVE) by a transaction that
    /// sleeps.
    PostgresStall,
    /// Redis stalled: `CLIENT PAUSE ... ALL`.
    RedisPause,
    /// All at once: a writer and the gateway killed, Redis and PostgreSQL restarted.
    Combined,
    /// One node of a three-node Redis Cluster SIGKILLed and started (the pipeline runs on the
    /// cluster).
    ClusterNodeRestart,
}

impl Fault {
    pub const ALL: [Fault; 9] = [
        Fault::WriterKill,
        Fault::GatewayKill,
        Fault::MaintenanceKill,
        Fault::PostgresRestart,
        Fault::RedisRestart,
        Fault::PostgresStall,
        Fault::RedisPause,
        Fault::Combined,
        Fault::ClusterNodeRestart,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Fault::WriterKill => "batch-writer SIGKILL",
            Fault::GatewayKill => "gateway SIGKILL",
            Fault::MaintenanceKill => "maintenance-worker SIGKILL",
            Fault::PostgresRestart => "PostgreSQL restart (immediate)",
            Fault::RedisRestart => "Redis restart (SIGKILL, AOF)",
            Fault::PostgresStall => "PostgreSQL stalled (table lock)",
            Fault::RedisPause => "Redis stalled (CLIENT PAUSE)",
            Fault::Combined => "combined (writer+gateway kill, Redis+PostgreSQL restart)",
            Fault::ClusterNodeRestart => "Redis Cluster node restart (SIGKILL, AOF)",
        }
    }
}

/// How long each phase lasts.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// Load before the fault.
    pub before: Duration,
    /// Load after the fault is cleared.
    pub after: Duration,
    /// How long a stall or an outage lasts.
    pub outage: Duration,
}

impl Timing {
    pub fn short() -> Self {
        Self {
            before: Duration::from_secs(4),
            after: Duration::from_secs(3),
            outage: Duration::from_secs(3),
        }
    }

    pub fn long(seconds: u64) -> Self {
        Self {
            before: Duration::from_secs(seconds),
            after: Duration::from_secs(seconds),
            outage: Duration::from_secs(10),
        }
    }
}

/// One line of the results table.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub fault: Fault,
    pub audit: Audit,
    /// From the fault cleared to a new event stored; `None` when it never came.
    pub recovery: Option<Duration>,
    /// Every daemon answered `/readyz` 200 at the end, with no restart by hand.
    pub healthy: bool,
    pub requests_failed: u64,
}

impl Outcome {
    pub fn passed(&self) -> bool {
        self.audit.lost == 0 && self.audit.doubled == 0 && self.recovery.is_some() && self.healthy
    }
}

/// The servers the faults act on.
pub struct Servers {
    pub pg: OwnPostgres,
    pub redis: OwnRedis,
    pub cluster: Option<OwnCluster>,
}

impl Servers {
    pub async fn start(with_cluster: bool) -> anyhow::Result<Self> {
        Ok(Self {
            pg: OwnPostgres::start().await?,
            redis: OwnRedis::start().await?,
            cluster: if with_cluster {
                Some(OwnCluster::start().await?)
            } else {
                None
            },
        })
    }
}

/// Load: 4 connections of 20-event requests.
const CONNECTIONS: usize = 4;
const BATCH: usize = 20;
const PAUSE: Duration = Duration::from_millis(10);

/// Runs one fault from start to audit.
pub async fn run(servers: &mut Servers, fault: Fault, timing: Timing) -> anyhow::Result<Outcome> {
    let name = format!("{fault:?}").to_lowercase();
    let redis_url = match fault {
        Fault::ClusterNodeRestart => servers.cluster.as_ref().context("no cluster")?.url(),
        _ => servers.redis.url(),
    };
    let prefix = match &servers.cluster {
        Some(c) if fault == Fault::ClusterNodeRestart => c.spread_prefix(&name, SHARDS).await?,
        _ => format!("faults-{name}-{}", uuid::Uuid::new_v4().simple()),
    };
    let mut stack = Stack::start(&servers.pg, &redis_url, &name, &prefix).await?;
    let load = Load::start(&stack.sender, CONNECTIONS, BATCH, PAUSE);
    tokio::time::sleep(timing.before).await;

    inject(servers, &mut stack, fault, timing).await?;
    let cleared = Instant::now();
    let recovered = recovery(&stack.sender, || stack.db(), Duration::from_secs(90)).await;
    let recovery_time = recovered.map(|_| cleared.elapsed());
    tokio::time::sleep(timing.after).await;
    load.stop().await;

    let drained = stack.drain(Duration::from_secs(90)).await;
    let healthy = drained
        && shared::testing::wait_for(Duration::from_secs(30), || async {
            stack.all_ready().await.then_some(())
        })
        .await
        .is_some();
    let acked = stack.sender.books.acked();
    let audit = audit(&stack.db().await?, &acked).await?;
    let outcome = Outcome {
        fault,
        audit,
        recovery: recovery_time,
        healthy,
        requests_failed: stack
            .sender
            .books
            .requests_failed
            .load(std::sync::atomic::Ordering::Relaxed),
    };
    if !outcome.passed() {
        eprintln!(
            "--- {} failed: {outcome:?}; daemon logs:\n{}",
            fault.name(),
            stack.logs()
        );
    }
    Ok(outcome)
}

async fn inject(
    servers: &mut Servers,
    stack: &mut Stack,
    fault: Fault,
    timing: Timing,
) -> anyhow::Result<()> {
    let kill = |d: &mut Option<shared::testing::Daemon>| {
        if let Some(mut d) = d.take() {
            let _ = d.child.kill();
            let _ = d.child.wait();
        }
    };
    match fault {
        Fault::WriterKill => {
            kill(&mut stack.writers[0]);
            tokio::time::sleep(Duration::from_secs(1)).await;
            stack.start_writer(0).await;
        }
        Fault::GatewayKill => {
            kill(&mut stack.gateway);
            tokio::time::sleep(Duration::from_secs(1)).await;
            stack.start_gateway().await;
        }
        Fault::MaintenanceKill => {
            kill(&mut stack.maintenance);
            tokio::time::sleep(Duration::from_secs(1)).await;
            stack.start_maintenance().await;
        }
        Fault::PostgresRestart => {
            servers.pg.stop();
            tokio::time::sleep(timing.outage).await;
            servers.pg.restart_immediate()?;
        }
        Fault::RedisRestart => {
            servers.redis.kill();
            tokio::time::sleep(timing.outage).await;
            servers.redis.restart().await?;
        }
        Fault::PostgresStall => {
            let c = stack.db().await?;
            c.batch_execute(&format!(
                "BEGIN; LOCK TABLE analytics_events IN ACCESS EXCLUSIVE MODE; SELECT pg_sleep({}); COMMIT",
                timing.outage.as_secs_f64()
            ))
            .await?;
        }
        Fault::RedisPause => {
            let client = redis::Client::open(servers.redis.url())?;
            let mut c = client.get_multiplexed_async_connection().await?;
            let _: () = redis::cmd("CLIENT")
                .arg("PAUSE")
                .arg(timing.outage.as_millis() as u64)
                .arg("ALL")
                .query_async(&mut c)
                .await?;
            tokio::time::sleep(timing.outage).await;
        }
        Fault::Combined => {
            kill(&mut stack.writers[0]);
            kill(&mut stack.gateway);
            servers.redis.kill();
            servers.pg.stop();
            tokio::time::sleep(timing.outage).await;
            servers.pg.restart_immediate()?;
            servers.redis.restart().await?;
            stack.start_gateway().await;
            stack.start_writer(0).await;
        }
        Fault::ClusterNodeRestart => {
            let cluster = servers.cluster.as_mut().context("no cluster")?;
            cluster.nodes[0].kill();
            tokio::time::sleep(timing.outage).await;
            cluster.nodes[0].restart().await?;
            cluster.wait_ok().await;
        }
    }
    Ok(())
}

/// The results as a Markdown table.
pub fn table(outcomes: &[Outcome]) -> String {
    let mut s = String::from(
        "| fault | acknowledged | stored | lost | doubled | refused requests | recovery | healthy |\n|---|---:|---:|---:|---:|---:|---:|---|\n",
    );
    for o in outcomes {
        s.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} |\n",
            o.fault.name(),
            o.audit.acknowledged,
            o.audit.stored,
            o.audit.lost,
            o.audit.doubled,
            o.requests_failed,
            o.recovery
                .map_or("never".to_owned(), |d| format!("{:.1} s", d.as_secs_f64())),
            if o.healthy { "yes" } else { "NO" },
        ));
    }
    s
}
