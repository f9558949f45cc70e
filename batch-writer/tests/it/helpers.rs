//! Writer test helpers: pushing events the way the gateway does, starting writers in-process or
//! as processes, counting what PostgreSQL holds, and a TCP proxy that can cut PostgreSQL off.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use batch_writer::WriterConfig;
use shared::config::Env;
use shared::queue::{self, Keys, QueuedEvent};
use testkit::TestDb;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

pub const REDIS: &str = "redis://127.0.0.1:6379/";

pub fn prefix() -> String {
    format!("test-{}", Uuid::new_v4().simple())
}

pub fn event(app: &str, name: &str) -> QueuedEvent {
    let now = chrono::Utc::now().timestamp_micros();
    QueuedEvent {
        event_id: Uuid::now_v7(),
        app_id: app.into(),
        event_name: name.into(),
        occurred_at_us: now,
        received_at_us: now,
        user_id: Some("u1".into()),
        session_id: Some("s1".into()),
        metadata: Some(r#"{"plan":"pro","n":1}"#.into()),
        client_id: false,
    }
}

pub fn events(n: usize) -> Vec<QueuedEvent> {
    (0..n)
        .map(|i| event("app_t", &format!("e{}", i % 7)))
        .collect()
}

pub async fn redis() -> redis::aio::MultiplexedConnection {
    redis::Client::open(REDIS)
        .expect("url")
        .get_multiplexed_async_connection()
        .await
        .expect("redis")
}

/// Queues `events` as the gateway does, `per_entry` events an entry, spread over the shards.
pub async fn push(keys: &Keys, events: &[QueuedEvent], per_entry: usize) {
    let mut conn = redis().await;
    let script = redis::Script::new(queue::PUSH_SCRIPT);
    for (i, chunk) in events.chunks(per_entry).enumerate() {
        let shard = (i % keys.shards() as usize) as u16;
        let payload = queue::encode(chunk).expect("encode");
        let _: Vec<String> =
            queue::push_invocation(&script, keys, shard, None, [(chunk.len(), &payload[..])])
                .invoke_async(&mut conn)
                .await
                .expect("push");
    }
}

/// Environment of a writer on `db` and `prefix`, with `extra` on top.
pub fn env(db: &TestDb, prefix: &str, extra: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut vars = db.env_vars();
    vars.push(("REDIS_URL".into(), REDIS.into()));
    vars.push(("STREAM_PREFIX".into(), prefix.into()));
    vars.push(("STREAM_SHARDS".into(), "2".into()));
    vars.push(("BATCH_LINGER_MS".into(), "50".into()));
    for (k, v) in extra {
        vars.push(((*k).into(), (*v).into()));
    }
    vars
}

pub struct Writer {
    pub shutdown: CancellationToken,
    pub task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

/// A writer running in this process.
pub async fn start(vars: Vec<(String, String)>, consumer: &str) -> Writer {
    let mut vars = vars;
    vars.push(("WRITER_CONSUMER_NAME".into(), consumer.into()));
    let config = WriterConfig::from_env(&Env::from_pairs(vars)).expect("config");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(batch_writer::run(config, listener, shutdown.clone()));
    Writer { shutdown, task }
}

impl Writer {
    pub async fn stop(self) {
        self.shutdown.cancel();
        let r = tokio::time::timeout(Duration::from_secs(30), self.task).await;
        assert!(matches!(r, Ok(Ok(Ok(())))), "writer stopped cleanly: {r:?}");
    }
}

pub async fn count(db: &TestDb, sql: &str) -> i64 {
    db.client()
        .await
        .query_one(sql, &[])
        .await
        .expect(sql)
        .get(0)
}

/// Waits until `analytics_events` holds `n` rows; returns the last count seen.
pub async fn wait_rows(db: &TestDb, n: i64, timeout: Duration) -> i64 {
    let client = db.client().await;
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let c: i64 = client
            .query_one("SELECT count(*) FROM analytics_events", &[])
            .await
            .expect("count")
            .get(0);
        if c >= n || tokio::time::Instant::now() > deadline {
            return c;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Stream lengths and depth counters of every shard, summed.
pub async fn queue_state(keys: &Keys) -> (i64, i64) {
    let mut conn = redis().await;
    let len = testkit::stream_entries(&mut conn, keys).await.unwrap_or(0);
    let depth = testkit::queued_events(&mut conn, keys).await.unwrap_or(0);
    (len, depth)
}

pub async fn cleanup(prefix: &str) {
    testkit::redis_cleanup(REDIS, prefix).await
}

/// A TCP proxy to PostgreSQL that a test can switch off (closing every connection) and on.
pub struct Proxy {
    pub port: u16,
    on: Arc<AtomicBool>,
    cut: Arc<tokio::sync::Notify>,
}

impl Proxy {
    pub async fn start(target: u16) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let on = Arc::new(AtomicBool::new(true));
        let cut = Arc::new(tokio::sync::Notify::new());
        let (on2, cut2) = (on.clone(), cut.clone());
        tokio::spawn(async move {
            loop {
                let Ok((mut client, _)) = listener.accept().await else {
                    return;
                };
                if !on2.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                let cut = cut2.clone();
                tokio::spawn(async move {
                    let Ok(mut server) =
                        tokio::net::TcpStream::connect(("127.0.0.1", target)).await
                    else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = cut.notified() => {}
                    }
                });
            }
        });
        Self { port, on, cut }
    }

    pub fn off(&self) {
        self.on.store(false, Ordering::SeqCst);
        self.cut.notify_waiters();
    }

    pub fn on(&self) {
        self.on.store(true, Ordering::SeqCst);
    }
}
