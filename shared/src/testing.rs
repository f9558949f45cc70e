//! For tests only: each test gets its own database, cloned in milliseconds from a template that
//! is migrated once per schema version (and per month, since partitions follow the clock).
//!
//! Tests run in parallel processes (nextest), so the template is built under an advisory lock
//! and published by renaming it, and each test database is dropped when its guard is.

use std::sync::atomic::{AtomicU32, Ordering};

use tokio_postgres::{Client, NoTls};

use crate::config::{DbConfig, Env};
use crate::schema::{self, PartitionWindow, MIGRATIONS};

/// The PostgreSQL server tests use: `SLUICE_TEST_PG_HOST`/`SLUICE_TEST_PG_PORT`, else the local
/// server on 127.0.0.1:5432 as `postgres`.
pub fn admin_env() -> (String, u16) {
    let host = std::env::var("SLUICE_TEST_PG_HOST").unwrap_or_else(|_| "127.0.0.1".to_owned());
    let port = std::env::var("SLUICE_TEST_PG_PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(5432);
    (host, port)
}

/// Connects to database `db` of the test server as `postgres`.
pub async fn connect(db: &str) -> Client {
    let (host, port) = admin_env();
    let (client, conn) = tokio_postgres::Config::new()
        .host(&host)
        .port(port)
        .user("postgres")
        .password(std::env::var("SLUICE_TEST_PG_PASSWORD").unwrap_or_else(|_| "postgres".into()))
        .dbname(db)
        .connect(NoTls)
        .await
        .unwrap_or_else(|e| panic!("connect to test database {db} on {host}:{port}: {e}"));
    tokio::spawn(async move {
        let _ = conn.await;
    });
    client
}

/// A database of its own for one test; dropped (with FORCE) when this guard is dropped.
pub struct TestDb {
    pub name: String,
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

impl TestDb {
    /// A migrated database with the partitions of the default windows around now.
    pub async fn migrated() -> Self {
        let template = ensure_template().await;
        Self::create(Some(&template)).await
    }

    /// An empty database (no schema at all).
    pub async fn empty() -> Self {
        Self::create(None).await
    }

    async fn create(template: Option<&str>) -> Self {
        let name = format!(
            "sluice_test_{}_{}_{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed),
            rand::random::<u32>()
        );
        let admin = connect("postgres").await;
        let sql = match template {
            Some(t) => format!("CREATE DATABASE {name} TEMPLATE {t}"),
            None => format!("CREATE DATABASE {name}"),
        };
        // A template being read by another CREATE DATABASE at the same instant is refused;
        // retry briefly.
        for attempt in 0..50 {
            match admin.batch_execute(&sql).await {
                Ok(()) => break,
                Err(e) if attempt < 49 && e.to_string().contains("being accessed") => {
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
                Err(e) => panic!("create test database {name}: {e}"),
            }
        }
        Self { name }
    }

    /// The daemons' database settings pointing at this database, with small pools.
    pub fn config(&self) -> DbConfig {
        let (host, port) = admin_env();
        let port = port.to_string();
        DbConfig::from_env(&Env::from_pairs([
            ("DB_HOST", host.as_str()),
            ("DB_PORT", port.as_str()),
            ("DB_NAME", self.name.as_str()),
            ("DB_USER", "postgres"),
            ("DB_POOL_MAX", "4"),
            ("DB_POOL_MIN", "1"),
            ("DB_READ_POOL_MAX", "4"),
            ("DB_READ_POOL_MIN", "1"),
        ]))
        .expect("test config parses")
    }

    /// The environment variables that point a daemon at this database.
    pub fn env_vars(&self) -> Vec<(String, String)> {
        let (host, port) = admin_env();
        vec![
            ("DB_HOST".into(), host),
            ("DB_PORT".into(), port.to_string()),
            ("DB_NAME".into(), self.name.clone()),
            ("DB_USER".into(), "postgres".into()),
            ("DB_POOL_MAX".into(), "4".into()),
            ("DB_POOL_MIN".into(), "1".into()),
            ("DB_READ_POOL_MAX".into(), "4".into()),
            ("DB_READ_POOL_MIN".into(), "1".into()),
        ]
    }

    pub async fn client(&self) -> Client {
        connect(&self.name).await
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let name = self.name.clone();
        // Drop may run inside or outside a runtime; a thread with its own runtime works in both.
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async {
                let admin = connect("postgres").await;
                let _ = admin
                    .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .await;
            });
        })
        .join();
    }
}

/// The template's name changes with the migrations and the month, so a stale template is never
/// used; it is built once by whichever test gets there first.
async fn ensure_template() -> String {
    let sums: String = MIGRATIONS.iter().map(|m| m.checksum()).collect();
    let digest = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(sums.as_bytes()))
    };
    let now = chrono::Utc::now();
    let name = format!("sluice_tmpl_{}_{}", &digest[..12], now.format("%Y%m"));
    let admin = connect("postgres").await;
    admin
        .execute("SELECT pg_advisory_lock(7304863)", &[])
        .await
        .expect("template lock");
    let exists = admin
        .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&name])
        .await
        .expect("look up template")
        .is_some();
    if !exists {
        // Templates of older migrations or months are of no use any more.
        let stale: Vec<String> = admin
            .query(
                "SELECT datname::text FROM pg_database WHERE datname LIKE 'sluice\\_tmpl\\_%' AND datname <> $1",
                &[&name],
            )
            .await
            .map(|rows| rows.iter().map(|r| r.get(0)).collect())
            .unwrap_or_default();
        for old in stale {
            let _ = admin
                .batch_execute(&format!("DROP DATABASE IF EXISTS {old} WITH (FORCE)"))
                .await;
        }
        let building = format!("{name}_building");
        admin
            .batch_execute(&format!("DROP DATABASE IF EXISTS {building} WITH (FORCE)"))
            .await
            .expect("drop a half-built template");
        admin
            .batch_execute(&format!("CREATE DATABASE {building}"))
            .await
            .expect("create template database");
        {
            let client = connect(&building).await;
            schema::migrate(
                &client,
                PartitionWindow {
                    now,
                    retention_months: 12,
                    premake_months: 6,
                },
            )
            .await
            .expect("migrate template");
        }
        // Wait for the migration connection to be gone before renaming.
        for _ in 0..100 {
            let busy = admin
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = $1",
                    &[&building],
                )
                .await
                .map(|r| r.get::<_, i64>(0))
                .unwrap_or(0);
            if busy == 0 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        admin
            .batch_execute(&format!("ALTER DATABASE {building} RENAME TO {name}"))
            .await
            .expect("publish template");
    }
    let _ = admin
        .execute("SELECT pg_advisory_unlock(7304863)", &[])
        .await;
    name
}

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind an ephemeral port")
}

/// A minimal HTTP/1.0 GET for tests: the status code and the body, or `None` when nothing
/// answers.
pub async fn http_get(addr: &str, path: &str) -> Option<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: test\r\n\r\n").as_bytes())
        .await
        .ok()?;
    let mut buf = Vec::new();
    tokio::time::timeout(std::time::Duration::from_secs(10), s.read_to_end(&mut buf))
        .await
        .ok()?
        .ok()?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned())?;
    Some((status, body))
}

/// One HTTP client for every load that tests and benchmarks send: POSTs a JSON body to one
/// URL with one `Authorization` header over a pool of keep-alive connections (Nagle off), and
/// returns the status and the body, or `None` when no answer came within `timeout`.
#[derive(Clone)]
pub struct HttpSender {
    pub url: String,
    auth: String,
    timeout: std::time::Duration,
    client: hyper_util::client::legacy::Client<
        hyper_util::client::legacy::connect::HttpConnector,
        http_body_util::Full<bytes::Bytes>,
    >,
}

impl HttpSender {
    pub fn new(url: String, authorization: String, connections: usize) -> Self {
        let mut connector = hyper_util::client::legacy::connect::HttpConnector::new();
        connector.set_nodelay(true);
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .pool_max_idle_per_host(connections)
                .pool_idle_timeout(std::time::Duration::from_secs(5))
                .build(connector);
        Self {
            url,
            auth: authorization,
            timeout: std::time::Duration::from_secs(10),
            client,
        }
    }

    /// Posts `body`; the status and the whole answer.
    pub async fn post(&self, body: bytes::Bytes) -> Option<(u16, bytes::Bytes)> {
        use http_body_util::BodyExt;
        let req = http::Request::post(&self.url)
            .header("authorization", &self.auth)
            .header("content-type", "application/json")
            .body(http_body_util::Full::new(body))
            .ok()?;
        tokio::time::timeout(self.timeout, async {
            let resp = self.client.request(req).await.ok()?;
            let status = resp.status().as_u16();
            let body = resp.into_body().collect().await.ok()?.to_bytes();
            Some((status, body))
        })
        .await
        .ok()?
    }
}

/// Polls `f` every 50 ms until it returns `Some`, for at most `timeout`.
pub async fn wait_for<T, F, Fut>(timeout: std::time::Duration, mut f: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return Some(v);
        }
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// A daemon binary started by a test; killed when dropped. Its stderr goes to a file (a pipe
/// nobody reads would fill up and stall the daemon's logging).
pub struct Daemon {
    pub child: std::process::Child,
    pub ops_addr: String,
    log_path: std::path::PathBuf,
}

impl Daemon {
    /// Starts `bin` with `env` (plus `METRICS_ADDR` on a free port) and waits until `/healthz`
    /// answers.
    pub async fn start(bin: &str, env: &[(String, String)]) -> Self {
        let ops_addr = format!("127.0.0.1:{}", free_port());
        let log_path = std::env::temp_dir().join(format!(
            "sluice-daemon-{}-{}.log",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let log = std::fs::File::create(&log_path).expect("daemon log file");
        let child = std::process::Command::new(bin)
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env("METRICS_ADDR", &ops_addr)
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn daemon");
        let d = Self {
            child,
            ops_addr,
            log_path,
        };
        // A loaded test machine can take a while to start a debug binary.
        let up = wait_for(std::time::Duration::from_secs(60), || async {
            http_get(&d.ops_addr, "/healthz")
                .await
                .filter(|(s, _)| *s == 200)
        })
        .await;
        if up.is_none() {
            let mut d = d;
            let exited = d.child.try_wait().ok().flatten();
            let health = http_get(&d.ops_addr, "/healthz").await;
            panic!(
                "{bin} did not come up on {} (exited: {exited:?}, /healthz: {health:?}); its log:\n{}",
                d.ops_addr,
                d.logs()
            );
        }
        d
    }

    /// Waits until `/readyz` answers 200 (a daemon serves its ops endpoint before its database
    /// accepts it), at most `timeout`.
    pub async fn wait_ready(&self, timeout: std::time::Duration) -> bool {
        wait_for(timeout, || async {
            http_get(&self.ops_addr, "/readyz")
                .await
                .filter(|(s, _)| *s == 200)
        })
        .await
        .is_some()
    }

    /// Everything the daemon has logged so far.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Sends SIGTERM and waits for the exit status, at most `timeout`.
    pub fn terminate(&mut self, timeout: std::time::Duration) -> Option<std::process::ExitStatus> {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = std::time::Instant::now() + timeout;
        while std::time::Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.log_path);
    }
}

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

/// A streaming replica of the test server, made with pg_basebackup into a directory of its own
/// and started on `port`; stopped (and removed) when dropped. Needs root (it runs the PostgreSQL
/// tools as `postgres`) and the Debian layout of PostgreSQL 15.
pub struct Replica {
    pub port: u16,
    dir: String,
}

/// Runs a shell command as the `postgres` user (the PostgreSQL tools refuse root).
pub fn as_postgres(cmd: &str) -> Result<(), String> {
    let out = std::process::Command::new("runuser")
        .args(["-u", "postgres", "--", "sh", "-c", cmd])
        .output()
        .map_err(|e| format!("runuser: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("{cmd}: {}", String::from_utf8_lossy(&out.stderr)))
    }
}

/// The directory of the newest installed PostgreSQL's binaries (Debian layout).
pub fn pg_bin() -> String {
    let version = std::fs::read_dir("/usr/lib/postgresql")
        .ok()
        .and_then(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .max()
        })
        .unwrap_or_else(|| "15".into());
    format!("/usr/lib/postgresql/{version}/bin")
}

impl Replica {
    /// Makes and starts a replica; the primary is given a `replication` line in pg_hba.conf
    /// (trust from 127.0.0.1) when it has none.
    pub async fn start(port: u16) -> Result<Self, String> {
        let admin = connect("postgres").await;
        let hba: String = admin
            .query_one("SHOW hba_file", &[])
            .await
            .map_err(|e| e.to_string())?
            .get(0);
        let text = std::fs::read_to_string(&hba).map_err(|e| format!("{hba}: {e}"))?;
        if !text
            .lines()
            .any(|l| l.split_whitespace().nth(1) == Some("replication"))
        {
            let line = "\n# Added by Sluice's test set-up for its streaming replica.\nhost replication all 127.0.0.1/32 trust\nlocal replication all trust\n";
            std::fs::write(&hba, format!("{text}{line}")).map_err(|e| format!("{hba}: {e}"))?;
            admin
                .batch_execute("SELECT pg_reload_conf()")
                .await
                .map_err(|e| e.to_string())?;
        }
        let dir = format!("/var/lib/postgresql/sluice-replica-{port}");
        let bin = pg_bin();
        let _ = as_postgres(&format!("{bin}/pg_ctl -D {dir} stop -m immediate"));
        let _ = std::fs::remove_dir_all(&dir);
        as_postgres(&format!(
            "{bin}/pg_basebackup -h 127.0.0.1 -p {} -U postgres -D {dir} -R -X stream -c fast",
            admin_env().1
        ))?;
        // Debian keeps the configuration outside the data directory: give the replica its own.
        as_postgres(&format!(
            "printf \"port = {port}\\nlisten_addresses = '127.0.0.1'\\nunix_socket_directories = '/tmp'\\nhot_standby = on\\n\" > {dir}/postgresql.conf && \
             printf 'local all all trust\\nhost all all 127.0.0.1/32 trust\\n' > {dir}/pg_hba.conf && : > {dir}/pg_ident.conf"
        ))?;
        as_postgres(&format!("{bin}/pg_ctl -D {dir} -l {dir}/log -w start"))?;
        Ok(Self { port, dir })
    }

    /// Stops the replica (a crash-like immediate stop).
    pub fn stop(&self) {
        let _ = as_postgres(&format!(
            "{}/pg_ctl -D {} stop -m immediate",
            pg_bin(),
            self.dir
        ));
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A field of `/proc/PID/status` in KiB (`VmRSS:`, `VmHWM:`), for tests and benchmarks.
pub fn proc_status_kib(pid: u32, field: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}
