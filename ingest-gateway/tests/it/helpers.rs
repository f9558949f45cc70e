//! Starting a gateway in-process against a test database and a test-only Redis prefix, and a
//! small HTTP client.

use std::net::SocketAddr;

use bytes::Bytes;
use http::{HeaderMap, Method, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use ingest_gateway::apps::{self, CreatedApp};
use ingest_gateway::GatewayConfig;
use shared::config::Env;
use shared::db::Pools;
use shared::queue::{self, Keys, QueuedEvent};
use testkit::TestDb;
use tokio_util::sync::CancellationToken;

/// An entry as XRANGE returns it: id and field/value pairs.
type StreamEntry = (String, Vec<(String, Vec<u8>)>);

pub const REDIS: &str = "redis://127.0.0.1:6379/";

pub struct Gateway {
    pub addr: SocketAddr,
    pub ops: SocketAddr,
    pub db: TestDb,
    pub app: CreatedApp,
    pub prefix: String,
    pub config: GatewayConfig,
    pub shutdown: CancellationToken,
    pub task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

pub struct Reply {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: serde_json::Value,
}

impl Gateway {
    /// A gateway with `extra` environment variables on top of the test defaults.
    pub async fn start(extra: &[(&str, &str)]) -> Self {
        let db = TestDb::migrated().await;
        Self::start_on(db, extra).await.expect("gateway starts")
    }

    pub async fn start_on(db: TestDb, extra: &[(&str, &str)]) -> anyhow::Result<Self> {
        let prefix = format!("test-{}", uuid::Uuid::new_v4().simple());
        let mut vars: Vec<(String, String)> = db.env_vars();
        vars.push(("REDIS_URL".into(), REDIS.into()));
        vars.push(("STREAM_PREFIX".into(), prefix.clone()));
        vars.push(("STREAM_SHARDS".into(), "2".into()));
        vars.push(("REDIS_TIMEOUT_MS".into(), "1000".into()));
        for (k, v) in extra {
            vars.push(((*k).into(), (*v).into()));
        }
        let config = GatewayConfig::from_env(&Env::from_pairs(vars))?;
        let pools = Pools::new(&config.db)?;
        let app = apps::create_app(&pools.write, "test app").await?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let ops_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let (addr, ops) = (listener.local_addr()?, ops_listener.local_addr()?);
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(ingest_gateway::run(
            config.clone(),
            listener,
            ops_listener,
            shutdown.clone(),
        ));
        let mut task = task;
        let up = testkit::wait_for(std::time::Duration::from_secs(10), || async {
            testkit::http_get(&addr.to_string(), "/healthz").await
        });
        tokio::select! {
            up = up => if up.is_none() { anyhow::bail!("gateway did not come up") },
            ended = &mut task => {
                cleanup(&prefix).await;
                return Err(ended?.err().unwrap_or_else(|| anyhow::anyhow!("gateway exited")));
            }
        }
        Ok(Self {
            addr,
            ops,
            db,
            app,
            prefix,
            config,
            shutdown,
            task,
        })
    }

    pub fn keys(&self) -> Keys {
        Keys::new(&self.prefix, self.config.stream_shards)
    }

    pub async fn request(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> Reply {
        request_at(&self.addr.to_string(), method, path, headers, body).await
    }

    /// POST /v1/events as JSON with the app's ingest key.
    pub async fn post(&self, body: impl Into<Bytes>) -> Reply {
        post_at(&self.addr.to_string(), &self.app.ingest_key, body).await
    }

    /// Every event queued on any shard so far.
    pub async fn queued(&self) -> Vec<QueuedEvent> {
        let mut conn = redis_conn().await;
        let mut out = Vec::new();
        for stream in self.keys().all_streams() {
            let entries: Vec<StreamEntry> = redis::cmd("XRANGE")
                .arg(&stream)
                .arg("-")
                .arg("+")
                .query_async(&mut conn)
                .await
                .expect("xrange");
            for (_, fields) in entries {
                let d = fields
                    .iter()
                    .find(|(k, _)| k == "d")
                    .expect("payload field");
                out.extend(queue::decode(&d.1).expect("decode"));
            }
        }
        out
    }

    pub async fn stop(self) {
        self.shutdown.cancel();
        let _ = self.task.await;
        cleanup(&self.prefix).await;
    }
}

/// POST /v1/events as JSON to the gateway at `addr` with `key`.
pub async fn post_at(addr: &str, key: &str, body: impl Into<Bytes>) -> Reply {
    let auth = format!("Bearer {key}");
    request_at(
        addr,
        Method::POST,
        "/v1/events",
        &[
            ("authorization", &auth),
            ("content-type", "application/json"),
        ],
        body,
    )
    .await
}

/// One request to the gateway at `addr`.
pub async fn request_at(
    addr: &str,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> Reply {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let mut req = Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = client
        .request(req.body(Full::new(body.into())).expect("request"))
        .await
        .expect("response");
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let bytes = resp.into_body().collect().await.expect("body").to_bytes();
    let body = if bytes.is_empty() {
        serde_json::Value::Null
    } else {
        serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| panic!("not JSON ({status}): {}", String::from_utf8_lossy(&bytes)))
    };
    Reply {
        status,
        headers,
        body,
    }
}

/// A second gateway on `first`'s database and streams: its address and its stop token.
pub async fn second_gateway(first: &Gateway) -> (String, CancellationToken) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let ops = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let stop = CancellationToken::new();
    tokio::spawn(ingest_gateway::run(
        first.config.clone(),
        listener,
        ops,
        stop.clone(),
    ));
    let up = testkit::wait_for(std::time::Duration::from_secs(10), || {
        testkit::http_get(&addr, "/healthz")
    })
    .await;
    assert!(up.is_some(), "second gateway up");
    (addr, stop)
}

pub async fn redis_conn() -> redis::aio::MultiplexedConnection {
    redis::Client::open(REDIS)
        .expect("url")
        .get_multiplexed_async_connection()
        .await
        .expect("redis")
}

/// Deletes every key of a test prefix.
pub async fn cleanup(prefix: &str) {
    testkit::redis_cleanup(REDIS, prefix).await
}

/// A redis-server of the test's own on `port`, with `policy` as its eviction policy.
pub fn spawn_redis(port: u16, policy: &str) -> std::process::Child {
    std::process::Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--maxmemory",
            "64mb",
            "--maxmemory-policy",
            policy,
        ])
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("start redis-server")
}

/// A batch writer in this process draining `gw`'s streams into its database; cancel to stop.
pub async fn writer(gw: &Gateway) -> tokio_util::sync::CancellationToken {
    writer_task(gw).await.0
}

/// As [`writer`], with the task, to wait for the writer to have stopped.
pub async fn writer_task(
    gw: &Gateway,
) -> (
    tokio_util::sync::CancellationToken,
    tokio::task::JoinHandle<anyhow::Result<()>>,
) {
    let mut vars = gw.db.env_vars();
    vars.extend(
        [
            ("REDIS_URL", REDIS),
            ("STREAM_PREFIX", gw.prefix.as_str()),
            ("STREAM_SHARDS", "2"),
            ("BATCH_LINGER_MS", "20"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string())),
    );
    let config = batch_writer::WriterConfig::from_env(&Env::from_pairs(vars)).expect("config");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let stop = tokio_util::sync::CancellationToken::new();
    let task = tokio::spawn(batch_writer::run(config, listener, stop.clone()));
    (stop, task)
}
