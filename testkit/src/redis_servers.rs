//! Redis for tests: a redis-server and a three-node Redis Cluster of a test's own, on spare
//! ports, with AOF, so that restarting or stalling them touches nothing else on the machine (each
//! is stopped and its directory removed when dropped); and key clean-up on the shared one.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context};

use crate::http::free_port;
use crate::wait::wait_for;

/// Deletes every Redis key of a test (or benchmark) prefix: the shard keys `{prefix:N}:...` and
/// the plain `prefix:...` ones. Uses KEYS, which is fine for a test Redis and nowhere else.
pub async fn redis_cleanup(url: &str, prefix: &str) {
    let Ok(client) = redis::Client::open(url) else {
        return;
    };
    let Ok(mut conn) = client.get_multiplexed_async_connection().await else {
        return;
    };
    for pattern in [format!("{{{prefix}:*"), format!("{prefix}:*")] {
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(&pattern)
            .query_async(&mut conn)
            .await
            .unwrap_or_default();
        if !keys.is_empty() {
            let _: redis::RedisResult<()> =
                redis::cmd("DEL").arg(&keys).query_async(&mut conn).await;
        }
    }
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

/// One redis-server of a test's own, with AOF (`appendfsync everysec`).
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
