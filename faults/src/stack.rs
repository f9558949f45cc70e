//! One pipeline under test: the gateway, two batch writers and the maintenance worker (or another
//! [`Shape`]), as their own processes ([`testkit::Stack`]), on a database of their own in the
//! suite's PostgreSQL and a stream prefix of their own in the suite's Redis (or Redis Cluster);
//! the poison switch and dead-letter replays.

use std::time::Duration;

use anyhow::Context;
use testkit::{OwnPostgres, StackBuilder};

use crate::load::Sender;

pub const WRITERS: usize = 2;
pub const SHARDS: u16 = 6;

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
    /// The app's read key (for the read API).
    pub read_key: String,
    /// The daemons, their variables and the gateway's address.
    pub daemons: testkit::Stack,
    pub sender: Sender,
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
        Self::start_on(pg, &direct(pg.port), redis_url, name, prefix, shape).await
    }

    /// As [`Stack::start_with`], with the daemons' pools through the transaction pooler on
    /// `pooler_port` (`DB_POOLER=transaction`) and their sessions direct to `pg`.
    pub async fn start_pooled(
        pg: &OwnPostgres,
        pooler_port: u16,
        redis_url: &str,
        name: &str,
        prefix: &str,
        shape: Shape,
    ) -> anyhow::Result<Self> {
        let mut route = direct(pooler_port);
        route.push(("DB_POOLER".into(), "transaction".into()));
        route.push(("DB_DIRECT_HOST".into(), "127.0.0.1".into()));
        route.push(("DB_DIRECT_PORT".into(), pg.port.to_string()));
        Self::start_on(pg, &route, redis_url, name, prefix, shape).await
    }

    /// A new database on `pg`, migrated, an app, and the daemons, reaching PostgreSQL by the
    /// `route` variables.
    async fn start_on(
        pg: &OwnPostgres,
        route: &[(String, String)],
        redis_url: &str,
        name: &str,
        prefix: &str,
        shape: Shape,
    ) -> anyhow::Result<Self> {
        let db = format!("faults_{name}_{}", std::process::id()).replace('-', "_");
        let mut daemons = builder(route, &db, redis_url, prefix, shape).build()?;
        testkit::recreate_database(&pg.client("postgres").await?, &db).await?;
        daemons.command("maintenance-worker", &["migrate"])?;
        pg.client(&db).await?.batch_execute(POISON_SQL).await?;
        let app = daemons.command("ingest-gateway", &["apps", "create", "--name", name])?;
        let app: serde_json::Value = serde_json::from_str(&app)?;
        let key = app["ingest_key"].as_str().context("ingest_key")?.to_owned();
        let read_key = app["read_key"].as_str().context("read_key")?.to_owned();
        daemons.start_all().await;
        Ok(Self {
            db,
            prefix: prefix.to_owned(),
            pg_port: pg.port,
            redis_url: redis_url.to_owned(),
            read_key,
            sender: Sender::new(&daemons.gateway_addr, &key),
            daemons,
        })
    }

    /// A database connection opened now.
    pub async fn db(&self) -> anyhow::Result<tokio_postgres::Client> {
        testkit::pg_client(self.pg_port, &self.db).await
    }

    /// The stream keys of this pipeline.
    pub fn keys(&self) -> shared::queue::Keys {
        shared::queue::Keys::new(&self.prefix, SHARDS)
    }

    /// Events queued and not yet written, per the depth counters.
    pub async fn queue_depth(&self) -> anyhow::Result<i64> {
        let mut conn = shared::redis_conn::connect(
            &shared::secret::Secret::new(self.redis_url.clone()),
            Duration::from_secs(2),
        )
        .await?;
        Ok(testkit::queued_events(&mut conn, &self.keys()).await?)
    }

    /// What [`Stack::replay`] needs, detached from the daemons (for a task of its own).
    pub fn replayer(&self) -> Replayer {
        Replayer {
            bin: self.daemons.bin("batch-writer"),
            env: self.daemons.env.clone(),
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
}

/// The variables that point the daemons at a server on `port` of this host.
fn direct(port: u16) -> Vec<(String, String)> {
    vec![
        ("DB_HOST".into(), "127.0.0.1".into()),
        ("DB_PORT".into(), port.to_string()),
    ]
}

/// The daemons' stack on database `db`, reached by the `route` variables.
fn builder(
    route: &[(String, String)],
    db: &str,
    redis_url: &str,
    prefix: &str,
    shape: Shape,
) -> StackBuilder {
    let mut db_env = route.to_vec();
    db_env.push(("DB_NAME".into(), db.to_owned()));
    db_env.push(("DB_USER".into(), "postgres".into()));
    let b = StackBuilder::new(db_env, redis_url, prefix)
        .var("STREAM_SHARDS", SHARDS.to_string())
        .var("QUEUE_HIGH_WATER", "10000000")
        .var("CLAIM_IDLE_MS", "2000")
        .var("MAX_DELIVERIES", "3")
        .var("BATCH_LINGER_MS", "100")
        .var("CACHE_STATS_INTERVAL_MS", "1000")
        .writers(shape.writers, "w")
        .maintenance(shape.maintenance);
    if shape.small_pools {
        b.pools(6, 1, 2, 1)
    } else {
        b
    }
}
