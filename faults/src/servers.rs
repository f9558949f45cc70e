//! Servers of the suite's own, on spare ports, so that restarting or stalling them touches nothing
//! else on the machine: a PostgreSQL cluster (initdb), a Redis with AOF, a three-node Redis
//! Cluster. Each is stopped and its directory removed when dropped. Needs root (PostgreSQL runs as
//! `postgres`) and Debian's layout of PostgreSQL.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context};
use testkit::{free_port, pg_bin, wait_for};
use tokio_postgres::{Client, NoTls};

fn as_postgres(cmd: &str) -> anyhow::Result<()> {
    testkit::as_postgres(cmd).map_err(anyhow::Error::msg)
}

/// A PostgreSQL cluster of the suite's own.
pub struct OwnPostgres {
    pub port: u16,
    dir: String,
}

impl OwnPostgres {
    /// A server with room to spare (`max_connections` 200) for the fault runs.
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_with(200).await
    }

    /// A server with `max_connections` slots (a stock PostgreSQL has 100, 3 of them kept for
    /// superusers).
    pub async fn start_with(max_connections: usize) -> anyhow::Result<Self> {
        let port = free_port();
        let dir = format!("/var/lib/postgresql/sluice-faults-{port}");
        let bin = pg_bin();
        let _ = std::fs::remove_dir_all(&dir);
        as_postgres(&format!(
            "{bin}/initdb -D {dir} -A trust -U postgres --no-sync >/dev/null"
        ))?;
        as_postgres(&format!(
            "printf \"port = {port}\\nlisten_addresses = '127.0.0.1'\\nunix_socket_directories = '/tmp'\\nmax_connections = {max_connections}\\nshared_buffers = 128MB\\n\" >> {dir}/postgresql.conf"
        ))?;
        let me = Self { port, dir };
        me.start_server()?;
        Ok(me)
    }

    fn start_server(&self) -> anyhow::Result<()> {
        as_postgres(&format!(
            "{}/pg_ctl -D {} -l {}/log -w -t 60 start >/dev/null",
            pg_bin(),
            self.dir,
            self.dir
        ))
    }

    /// A crash-like stop (no checkpoint: the restart replays the WAL), then a start.
    pub fn restart_immediate(&self) -> anyhow::Result<()> {
        self.stop();
        self.start_server()
    }

    pub fn stop(&self) {
        let _ = as_postgres(&format!(
            "{}/pg_ctl -D {} -w stop -m immediate >/dev/null",
            pg_bin(),
            self.dir
        ));
    }

    pub async fn client(&self, db: &str) -> anyhow::Result<Client> {
        pg_client(self.port, db).await
    }
}

impl Drop for OwnPostgres {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A connection, as `postgres`, to database `db` of the server on 127.0.0.1:`port`.
pub async fn pg_client(port: u16, db: &str) -> anyhow::Result<Client> {
    let (client, conn) = tokio_postgres::Config::new()
        .host("127.0.0.1")
        .port(port)
        .user("postgres")
        .dbname(db)
        .connect_timeout(Duration::from_secs(5))
        .connect(NoTls)
        .await
        .with_context(|| format!("connect to {db} on port {port}"))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

fn redis_server(port: u16, dir: &str, extra: &[&str]) -> anyhow::Result<Child> {
    std::fs::create_dir_all(dir)?;
    let mut args: Vec<String> = [
        "--port",
        &port.to_string(),
        "--bind",
        "127.0.0.1",
        "--dir",
        dir,
        "--save",
        "",
        "--appendonly",
        "yes",
        "--appendfsync",
        "everysec",
        "--maxmemory-policy",
        "noeviction",
        "--logfile",
        "redis.log",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(extra.iter().map(|s| s.to_string()));
    Command::new("redis-server")
        .args(&args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("spawn redis-server")
}

async fn wait_ping(port: u16) -> bool {
    let url = format!("redis://127.0.0.1:{port}/");
    wait_for(Duration::from_secs(30), || {
        let url = url.clone();
        async move {
            let client = redis::Client::open(url).ok()?;
            let mut c = client.get_multiplexed_async_connection().await.ok()?;
            let pong: String = redis::cmd("PING").query_async(&mut c).await.ok()?;
            (pong == "PONG").then_some(())
        }
    })
    .await
    .is_some()
}

/// One redis-server of the suite's own, with AOF (`appendfsync everysec`).
pub struct OwnRedis {
    pub port: u16,
    dir: String,
    extra: Vec<&'static str>,
    child: Option<Child>,
}

impl OwnRedis {
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_with(Vec::new()).await
    }

    async fn start_with(extra: Vec<&'static str>) -> anyhow::Result<Self> {
        let port = free_port();
        let dir = std::env::temp_dir()
            .join(format!("sluice-faults-redis-{port}"))
            .to_string_lossy()
            .into_owned();
        let _ = std::fs::remove_dir_all(&dir);
        let mut me = Self {
            port,
            dir,
            extra,
            child: None,
        };
        me.spawn().await?;
        Ok(me)
    }

    async fn spawn(&mut self) -> anyhow::Result<()> {
        self.child = Some(redis_server(self.port, &self.dir, &self.extra)?);
        if !wait_ping(self.port).await {
            bail!("redis-server on port {} did not answer", self.port);
        }
        Ok(())
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// SIGKILL (what a crash does: the AOF holds every write Redis answered).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port and directory: it loads its AOF.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.kill();
        self.spawn().await
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A Redis Cluster of three masters (no replicas), each with AOF, made with
/// `redis-cli --cluster create`. `cluster-require-full-coverage no`: the slots of the live nodes
/// keep serving while one node is down.
pub struct OwnCluster {
    pub nodes: Vec<OwnRedis>,
}

impl OwnCluster {
    pub async fn start() -> anyhow::Result<Self> {
        let mut nodes = Vec::new();
        for _ in 0..3 {
            nodes.push(
                OwnRedis::start_with(vec![
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-node-timeout",
                    "2000",
                    "--cluster-require-full-coverage",
                    "no",
                ])
                .await?,
            );
        }
        let mut create = Command::new("redis-cli");
        create.arg("--cluster").arg("create");
        for n in &nodes {
            create.arg(format!("127.0.0.1:{}", n.port));
        }
        let out = create
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .context("redis-cli --cluster create")?;
        if !out.status.success() {
            bail!(
                "redis-cli --cluster create: {}",
                String::from_utf8_lossy(&out.stdout)
            );
        }
        let me = Self { nodes };
        if !me.wait_ok().await {
            bail!("the cluster did not reach cluster_state:ok");
        }
        Ok(me)
    }

    /// Waits until every node reports `cluster_state:ok`.
    pub async fn wait_ok(&self) -> bool {
        for n in &self.nodes {
            let url = n.url();
            let ok = wait_for(Duration::from_secs(60), || {
                let url = url.clone();
                async move {
                    let client = redis::Client::open(url).ok()?;
                    let mut c = client.get_multiplexed_async_connection().await.ok()?;
                    let info: String = redis::cmd("CLUSTER")
                        .arg("INFO")
                        .query_async(&mut c)
                        .await
                        .ok()?;
                    info.contains("cluster_state:ok").then_some(())
                }
            })
            .await;
            if ok.is_none() {
                return false;
            }
        }
        true
    }

    /// The node (0, 1 or 2) owning each of `keys`, as `redis-cli --cluster create` splits the slots
    /// (0-5460, 5461-10922, 10923-16383).
    pub async fn owners(&self, keys: &[String]) -> anyhow::Result<Vec<usize>> {
        let client = redis::Client::open(self.nodes[0].url())?;
        let mut c = client.get_multiplexed_async_connection().await?;
        let mut out = Vec::new();
        for k in keys {
            let slot: u16 = redis::cmd("CLUSTER")
                .arg("KEYSLOT")
                .arg(k)
                .query_async(&mut c)
                .await?;
            out.push(usize::from(slot >= 5461) + usize::from(slot >= 10923));
        }
        Ok(out)
    }

    /// A stream prefix whose `shards` shards land on every node, so a fault of any node hits the
    /// pipeline.
    pub async fn spread_prefix(&self, name: &str, shards: u16) -> anyhow::Result<String> {
        for _ in 0..100 {
            let prefix = format!("faults-{name}-{}", uuid::Uuid::new_v4().simple());
            let keys = shared::queue::Keys::new(&prefix, shards).all_streams();
            let owners = self.owners(&keys).await?;
            if (0..3).all(|n| owners.contains(&n)) {
                return Ok(prefix);
            }
        }
        bail!("no prefix spreads {shards} shards over 3 nodes")
    }

    /// The seed URL list (what `REDIS_URL` holds for a cluster).
    pub fn url(&self) -> String {
        self.nodes
            .iter()
            .map(OwnRedis::url)
            .collect::<Vec<_>>()
            .join(",")
    }
}
