//! One pipeline under test: the gateway, two batch writers and the maintenance worker (or another
//! [`Shape`]), as their own processes (the binaries beside the running executable), on a database of their own in the
//! suite's PostgreSQL and a stream prefix of their own in the suite's Redis (or Redis Cluster).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use testkit::{free_port, http_get, Daemon};

use crate::load::Sender;
use crate::servers::OwnPostgres;

pub const WRITERS: usize = 2;
pub const SHARDS: u16 = 6;

/// The directory of the daemon binaries: the running executable's (a test's lives one level down,
/// in `deps/`).
pub fn bin_dir() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let mut dir = exe.parent().context("exe dir")?.to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    for b in ["ingest-gateway", "batch-writer", "maintenance-worker"] {
        if !dir.join(b).exists() {
            bail!(
                "{} is missing: build the daemons first (cargo build --bins)",
                dir.join(b).display()
            );
        }
    }
    Ok(dir)
}

/// How many of each daemon a stack runs, and whether it gives them the suite's small pools or
/// lets each size its own (the daemons' defaults, as a new user runs them).
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    pub writers: usize,
    pub maintenance: usize,
    pub small_pools: bool,
}

impl Default for Shape {
    fn default() -> Self {
        Self {
            writers: WRITERS,
            maintenance: 1,
            small_pools: true,
        }
    }
}

pub struct Stack {
    pub db: String,
    pub prefix: String,
    pub pg_port: u16,
    pub redis_url: String,
    pub env: Vec<(String, String)>,
    pub gateway_addr: String,
    pub gateway: Option<Daemon>,
    pub writers: Vec<Option<Daemon>>,
    pub maintenance: Option<Daemon>,
    /// Maintenance replicas beyond the first.
    pub more_maintenance: Vec<Daemon>,
    pub sender: Sender,
    bins: PathBuf,
}

/// Runs dead-letter replays of one stack.
#[derive(Clone)]
pub struct Replayer {
    bin: String,
    env: Vec<(String, String)>,
}

impl Replayer {
    /// Runs `batch-writer dead-letter replay --all`; with `kill_after`, SIGKILLs it after that
    /// long (it may have pushed some dead letters and not deleted them). True when it ran to the
    /// end successfully.
    pub async fn replay(&self, kill_after: Option<Duration>) -> bool {
        let Ok(mut child) = tokio::process::Command::new(&self.bin)
            .args(["dead-letter", "replay", "--all"])
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
        else {
            return false;
        };
        match kill_after {
            Some(d) => match tokio::time::timeout(d, child.wait()).await {
                Ok(status) => status.is_ok_and(|s| s.success()),
                Err(_) => {
                    let _ = child.kill().await;
                    false
                }
            },
            None => child.wait().await.is_ok_and(|s| s.success()),
        }
    }
}

/// The poison switch: a row trigger that refuses events named `fault_poison` while
/// `fault_poison_on` holds a row. Its WHEN clause keeps it free for every other row.
const POISON_SQL: &str = "
CREATE TABLE fault_poison_on (on_ boolean PRIMARY KEY);
CREATE FUNCTION fault_poison() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF EXISTS (SELECT 1 FROM fault_poison_on) THEN
    RAISE EXCEPTION 'poison event refused' USING ERRCODE = 'check_violation';
  END IF;
  RETURN NEW;
END $$;
CREATE TRIGGER fault_poison BEFORE INSERT ON analytics_events
  FOR EACH ROW WHEN (NEW.event_name = 'fault_poison') EXECUTE FUNCTION fault_poison();
";

impl Stack {
    /// A new database (migrated by `maintenance-worker migrate`), an app, and the daemons.
    pub async fn start(
        pg: &OwnPostgres,
        redis_url: &str,
        name: &str,
        prefix: &str,
    ) -> anyhow::Result<Self> {
        Self::start_with(pg, redis_url, name, prefix, Shape::default()).await
    }

    /// As [`Stack::start`], with `shape`'s daemons.
    pub async fn start_with(
        pg: &OwnPostgres,
        redis_url: &str,
        name: &str,
        prefix: &str,
        shape: Shape,
    ) -> anyhow::Result<Self> {
        let bins = bin_dir()?;
        let db = format!("faults_{name}_{}", std::process::id()).replace('-', "_");
        let admin = pg.client("postgres").await?;
        admin
            .batch_execute(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"))
            .await?;
        admin
            .batch_execute(&format!("CREATE DATABASE {db}"))
            .await?;
        let gateway_addr = format!("127.0.0.1:{}", free_port());
        let pools = [
            ("DB_POOL_MAX", "6"),
            ("DB_POOL_MIN", "1"),
            ("DB_READ_POOL_MAX", "2"),
            ("DB_READ_POOL_MIN", "1"),
        ];
        let pools = pools
            .into_iter()
            .filter(|_| shape.small_pools)
            .map(|(k, v)| (k, v.to_owned()));
        let env: Vec<(String, String)> = [
            ("DB_HOST", "127.0.0.1".to_owned()),
            ("DB_PORT", pg.port.to_string()),
            ("DB_NAME", db.clone()),
            ("DB_USER", "postgres".into()),
            ("REDIS_URL", redis_url.to_owned()),
            ("STREAM_PREFIX", prefix.to_owned()),
            ("STREAM_SHARDS", SHARDS.to_string()),
            ("GATEWAY_ADDR", gateway_addr.clone()),
            ("QUEUE_HIGH_WATER", "10000000".into()),
            ("CLAIM_IDLE_MS", "2000".into()),
            ("MAX_DELIVERIES", "3".into()),
            ("BATCH_LINGER_MS", "100".into()),
            ("LOG_LEVEL", "warn".into()),
            ("CACHE_STATS_INTERVAL_MS", "1000".into()),
        ]
        .into_iter()
        .chain(pools)
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        let run = |bin: &str, args: &[&str]| -> anyhow::Result<String> {
            let out = std::process::Command::new(bins.join(bin))
                .args(args)
                .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
                .output()?;
            if !out.status.success() {
                bail!("{bin} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
            }
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        };
        run("maintenance-worker", &["migrate"])?;
        pg.client(&db).await?.batch_execute(POISON_SQL).await?;
        let app: serde_json::Value =
            serde_json::from_str(&run("ingest-gateway", &["apps", "create", "--name", name])?)?;
        let key = app["ingest_key"].as_str().context("ingest_key")?.to_owned();
        let mut me = Self {
            db,
            prefix: prefix.to_owned(),
            pg_port: pg.port,
            redis_url: redis_url.to_owned(),
            sender: Sender::new(&gateway_addr, &key),
            env,
            gateway_addr,
            gateway: None,
            writers: (0..shape.writers).map(|_| None).collect(),
            maintenance: None,
            more_maintenance: Vec::new(),
            bins,
        };
        me.start_gateway().await;
        for i in 0..shape.writers {
            me.start_writer(i).await;
        }
        if shape.maintenance > 0 {
            me.start_maintenance().await;
        }
        for _ in 1..shape.maintenance {
            let d = Daemon::start(&me.bin("maintenance-worker"), &me.env).await;
            me.more_maintenance.push(d);
        }
        Ok(me)
    }

    /// Starts one more writer (not waiting for it to be ready); its index.
    pub async fn add_writer(&mut self) -> usize {
        self.writers.push(None);
        let i = self.writers.len() - 1;
        self.start_writer(i).await;
        i
    }

    fn bin(&self, name: &str) -> String {
        self.bins.join(name).to_string_lossy().into_owned()
    }

    pub async fn start_gateway(&mut self) {
        self.gateway = Some(Daemon::start(&self.bin("ingest-gateway"), &self.env).await);
    }

    pub async fn start_writer(&mut self, i: usize) {
        let mut env = self.env.clone();
        env.push(("WRITER_CONSUMER_NAME".into(), format!("w{i}")));
        self.writers[i] = Some(Daemon::start(&self.bin("batch-writer"), &env).await);
    }

    pub async fn start_maintenance(&mut self) {
        self.maintenance = Some(Daemon::start(&self.bin("maintenance-worker"), &self.env).await);
    }

    /// A database connection opened now.
    pub async fn db(&self) -> anyhow::Result<tokio_postgres::Client> {
        crate::servers::pg_client(self.pg_port, &self.db).await
    }

    /// The stream keys of this pipeline.
    pub fn keys(&self) -> shared::queue::Keys {
        shared::queue::Keys::new(&self.prefix, SHARDS)
    }

    fn daemons(&self) -> impl Iterator<Item = &Daemon> {
        self.gateway
            .iter()
            .chain(self.writers.iter().flatten())
            .chain(self.maintenance.iter())
            .chain(self.more_maintenance.iter())
    }

    /// Every daemon answers `/readyz` with 200.
    pub async fn all_ready(&self) -> bool {
        for d in self.daemons() {
            if !matches!(http_get(&d.ops_addr, "/readyz").await, Some((200, _))) {
                return false;
            }
        }
        true
    }

    /// Waits until every daemon is ready, up to `limit`; false if one is not by then.
    pub async fn ready_within(&self, limit: Duration) -> bool {
        testkit::wait_for(limit, || async { self.all_ready().await.then_some(()) })
            .await
            .is_some()
    }

    /// Events queued and not yet written, per the depth counters.
    pub async fn queue_depth(&self) -> anyhow::Result<i64> {
        let mut conn = shared::redis_conn::connect(
            &shared::secret::Secret::new(self.redis_url.clone()),
            Duration::from_secs(2),
        )
        .await?;
        let v: Vec<Option<i64>> = redis::cmd("MGET")
            .arg(self.keys().all_depths())
            .query_async(&mut conn)
            .await?;
        Ok(v.into_iter().flatten().sum())
    }

    /// What [`Stack::replay`] needs, detached from the daemons (for a task of its own).
    pub fn replayer(&self) -> Replayer {
        Replayer {
            bin: self.bin("batch-writer"),
            env: self.env.clone(),
        }
    }

    /// Turns the poison switch on or off: while on, PostgreSQL refuses events named
    /// [`crate::load::POISON`] (a check violation, as a bad row would).
    pub async fn poison(&self, on: bool) -> anyhow::Result<()> {
        let sql = if on {
            "INSERT INTO fault_poison_on VALUES (true) ON CONFLICT DO NOTHING"
        } else {
            "DELETE FROM fault_poison_on"
        };
        self.db().await?.batch_execute(sql).await?;
        Ok(())
    }

    /// See [`Replayer::replay`].
    pub async fn replay(&self, kill_after: Option<Duration>) -> bool {
        self.replayer().replay(kill_after).await
    }

    /// Rows in `dead_letters`.
    pub async fn dead_letters(&self) -> anyhow::Result<i64> {
        Ok(self
            .db()
            .await?
            .query_one("SELECT count(*) FROM dead_letters", &[])
            .await?
            .get(0))
    }

    /// Stops every daemon with SIGTERM and waits for each to exit (SIGKILL past `limit`), so
    /// nothing can write after the audit starts. False when one had to be killed.
    pub fn stop_all(&mut self, limit: Duration) -> bool {
        let mut clean = true;
        let all = self
            .gateway
            .take()
            .into_iter()
            .chain(self.writers.iter_mut().filter_map(Option::take))
            .chain(self.maintenance.take());
        for mut d in all {
            clean &= d.terminate(limit).is_some();
        }
        clean
    }

    /// Waits until the queue is empty and the stored count has stopped moving, as long as the
    /// queue keeps shrinking (at most `limit` without progress).
    /// `limit` counts from the last progress: a large backlog that keeps shrinking is waited for.
    pub async fn drain(&self, limit: Duration) -> bool {
        let mut start = std::time::Instant::now();
        let mut last = -1i64;
        let mut lowest = i64::MAX;
        while start.elapsed() < limit {
            let depth = self.queue_depth().await.unwrap_or(-1);
            let rows = match self.db().await {
                Ok(c) => c
                    .query_one("SELECT count(*) FROM analytics_events", &[])
                    .await
                    .map(|r| r.get::<_, i64>(0))
                    .unwrap_or(-1),
                Err(_) => -1,
            };
            if depth == 0 && rows >= 0 && rows == last {
                return true;
            }
            if depth >= 0 && depth < lowest {
                lowest = depth;
                start = std::time::Instant::now();
            }
            last = rows;
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        false
    }

    /// The logs of every daemon still running, for a failure report.
    pub fn logs(&self) -> String {
        self.daemons()
            .map(|d| d.logs())
            .collect::<Vec<_>>()
            .join("\n")
    }
}
