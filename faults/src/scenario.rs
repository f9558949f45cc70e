//! The faults, and one run of each: load (with poison events, client retries and dead-letter
//! replays running throughout), inject, clear, measure recovery, more load; then the poison is
//! lifted, the dead letters replayed (one replay killed midway, two at once), the queue drained,
//! every daemon stopped, and only then the audit, event by event.

use std::time::{Duration, Instant};

use std::sync::atomic::Ordering::Relaxed;

use anyhow::Context;

use crate::load::{audit, recovery, Audit, Load};
use crate::stack::{Stack, SHARDS};
use testkit::{OwnCluster, OwnPostgres, OwnRedis};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Fault {
    /// SIGKILL of one batch writer (restarted a second later, as a supervisor would).
    WriterKill,
    /// One batch writer stalled (SIGSTOP) past `CLAIM_IDLE_MS`, so the other claims its entries
    /// (and splits batches with poison in them), then resumed (SIGCONT) with its batches in hand.
    WriterStall,
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
    pub const ALL: [Fault; 10] = [
        Fault::WriterKill,
        Fault::WriterStall,
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
            Fault::WriterStall => "batch-writer stalled past CLAIM_IDLE_MS (SIGSTOP)",
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
    /// Every daemon answered `/readyz` 200 at the end, with no restart by hand, and stopped
    /// cleanly on SIGTERM.
    pub healthy: bool,
    pub requests_failed: u64,
    /// Client retries sent (events), poison requests sent, dead-letter replays run.
    pub retries: u64,
    pub poison: u64,
    pub replays: u64,
    /// Dead letters left after the final replays (must be none).
    pub dead_letters_left: i64,
}

impl Outcome {
    pub fn passed(&self) -> bool {
        self.audit.lost == 0
            && self.audit.doubled == 0
            && self.dead_letters_left == 0
            && self.recovery.is_some()
            && self.healthy
    }
}

/// How a run ended.
pub struct End {
    pub audit: Audit,
    pub replays: u64,
    pub dead_letters_left: i64,
    /// Drained, every daemon ready, then every daemon stopped cleanly on SIGTERM.
    pub healthy: bool,
    /// The daemons' logs, taken before they stopped.
    pub logs: String,
}

/// The end of a run, after the load has stopped: the operator lifts the poison and replays the
/// dead letters the hard way (one replay killed midway, then two at once, then until nothing is
/// left, as entries may reach `MAX_DELIVERIES` meanwhile); the queue drains; every daemon must be
/// ready, then is stopped; only then the audit reads the finished database.
pub async fn finish(stack: &mut Stack) -> anyhow::Result<End> {
    stack.poison(false).await?;
    stack.replay(Some(Duration::from_millis(15))).await;
    tokio::join!(stack.replay(None), stack.replay(None));
    let mut replays = 3;
    let mut drained = stack.drain(Duration::from_secs(90)).await;
    for _ in 0..5 {
        if stack.dead_letters().await.unwrap_or(1) == 0 {
            break;
        }
        stack.replay(None).await;
        replays += 1;
        drained = stack.drain(Duration::from_secs(60)).await;
    }
    let dead_letters_left = stack.dead_letters().await.unwrap_or(-1);
    // What is still queued when the drain gives up is not lost, and must not read as lost.
    let still_queued = stack.queue_depth().await.unwrap_or(-1);
    let ready = drained && stack.daemons.ready_within(Duration::from_secs(30)).await;
    let logs = stack.daemons.logs();
    let stopped = stack.daemons.stop_all(Duration::from_secs(30));
    let audit = audit(&stack.db().await?, &stack.sender.books.acked()).await?;
    if still_queued != 0 {
        eprintln!("the drain gave up with {still_queued} events still queued (not written, not lost): the audit below counts them as missing");
    }
    Ok(End {
        audit,
        replays,
        dead_letters_left,
        healthy: ready && stopped,
        logs,
    })
}

/// Dead-letter replays while the load runs: every `every`, one replay killed after a few
/// milliseconds and two at once. Returns the number run.
pub fn spawn_replays(
    stack: &Stack,
    every: Duration,
    stop: tokio_util::sync::CancellationToken,
) -> tokio::task::JoinHandle<u64> {
    let stack = stack.replayer();
    tokio::spawn(async move {
        let mut runs = 0u64;
        let mut i = 0u64;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = stop.cancelled() => return runs,
            }
            i += 1;
            stack
                .replay(Some(Duration::from_millis(5 + (i * 7) % 40)))
                .await;
            tokio::join!(stack.replay(None), stack.replay(None));
            runs += 3;
        }
    })
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
    stack.poison(true).await?;
    let load = Load::start(&stack.sender, CONNECTIONS, BATCH, PAUSE, true);
    let stop_replays = tokio_util::sync::CancellationToken::new();
    let replays = spawn_replays(&stack, Duration::from_millis(1500), stop_replays.clone());
    tokio::time::sleep(timing.before).await;

    inject(servers, &mut stack, fault, timing).await?;
    let cleared = Instant::now();
    let recovered = recovery(&stack.sender, || stack.db(), Duration::from_secs(90)).await;
    let recovery_time = recovered.map(|_| cleared.elapsed());
    tokio::time::sleep(timing.after).await;
    load.stop().await;
    stop_replays.cancel();
    let mut replays_run = replays.await.unwrap_or(0);

    let end = finish(&mut stack).await?;
    replays_run += end.replays;
    let books = &stack.sender.books;
    let outcome = Outcome {
        fault,
        recovery: recovery_time,
        healthy: end.healthy,
        requests_failed: books.requests_failed.load(Relaxed),
        retries: books.retries_sent.load(Relaxed),
        poison: books.poison_sent.load(Relaxed),
        replays: replays_run,
        dead_letters_left: end.dead_letters_left,
        audit: end.audit,
    };
    if !outcome.passed() {
        eprintln!(
            "--- {} failed: {outcome:?}; daemon logs:\n{}",
            fault.name(),
            end.logs
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
    let kill = |d: &mut Option<testkit::Daemon>| {
        if let Some(mut d) = d.take() {
            let _ = d.child.kill();
            let _ = d.child.wait();
        }
    };
    match fault {
        Fault::WriterKill => {
            kill(&mut stack.daemons.writers[0]);
            tokio::time::sleep(Duration::from_secs(1)).await;
            stack.daemons.start_writer(0).await;
        }
        Fault::WriterStall => {
            if let Some(w) = &stack.daemons.writers[0] {
                signal(w, "-STOP");
                // Past CLAIM_IDLE_MS (2 s): the other writer claims what this one holds.
                tokio::time::sleep(Duration::from_secs(5)).await;
                signal(w, "-CONT");
            }
        }
        Fault::GatewayKill => {
            kill(&mut stack.daemons.gateway);
            tokio::time::sleep(Duration::from_secs(1)).await;
            stack.daemons.start_gateway().await;
        }
        Fault::MaintenanceKill => {
            kill(&mut stack.daemons.maintenance);
            tokio::time::sleep(Duration::from_secs(1)).await;
            stack.daemons.start_maintenance().await;
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
            kill(&mut stack.daemons.writers[0]);
            kill(&mut stack.daemons.gateway);
            servers.redis.kill();
            servers.pg.stop();
            tokio::time::sleep(timing.outage).await;
            servers.pg.restart_immediate()?;
            servers.redis.restart().await?;
            stack.daemons.start_gateway().await;
            stack.daemons.start_writer(0).await;
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

fn signal(d: &testkit::Daemon, sig: &str) {
    let _ = std::process::Command::new("kill")
        .args([sig, &d.child.id().to_string()])
        .status();
}

/// The results as a Markdown table.
pub fn table(outcomes: &[Outcome]) -> String {
    let mut s = String::from(
        "| fault | acknowledged | stored | lost | doubled | refused requests | client retries | poison requests | replays | recovery | healthy |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|\n",
    );
    for o in outcomes {
        s.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
            o.fault.name(),
            o.audit.acknowledged,
            o.audit.stored,
            o.audit.lost,
            o.audit.doubled,
            o.requests_failed,
            o.retries,
            o.poison,
            o.replays,
            o.recovery
                .map_or("never".to_owned(), |d| format!("{:.1} s", d.as_secs_f64())),
            if o.healthy { "yes" } else { "NO" },
        ));
    }
    s
}
