//! The daemon stack as processes: the gateway alone, or the gateway, N batch writers and
//! maintenance workers, on one database, Redis and stream prefix, with the binaries found one way
//! ([`bin_dir`]). Tests, benchmarks and the fault suite start their daemons with it.
//!
//! [`StackBuilder`] says what runs and with which variables; [`Stack`] holds the daemons, each
//! an `Option` so a fault can kill one (drop it) and start it again.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::bail;

use crate::daemon::{bin_dir, Daemon};
use crate::http::{free_port, http_get};
use crate::wait::wait_for;

/// The pool variables [`StackBuilder::pools`] sets and [`StackBuilder::own_pools`] removes.
const POOL_VARS: [&str; 4] = [
    "DB_POOL_MAX",
    "DB_POOL_MIN",
    "DB_READ_POOL_MAX",
    "DB_READ_POOL_MIN",
];

/// What a [`Stack`] runs and with which variables.
pub struct StackBuilder {
    env: Vec<(String, String)>,
    gateway_addr: String,
    writers: usize,
    writer_name: String,
    maintenance: usize,
    maintenance_env: Vec<(String, String)>,
}

/// Sets `key` to `value` in `env`, in place of any value it had.
pub fn set(env: &mut Vec<(String, String)>, key: &str, value: String) {
    env.retain(|(k, _)| k != key);
    env.push((key.to_owned(), value));
}

impl StackBuilder {
    /// The gateway alone, on a spare port, with `db_env` (the `DB_*` variables), Redis
    /// `redis_url` and stream prefix `prefix`, logging warnings only.
    pub fn new(db_env: Vec<(String, String)>, redis_url: &str, prefix: &str) -> Self {
        let gateway_addr = format!("127.0.0.1:{}", free_port());
        Self {
            env: db_env,
            gateway_addr: gateway_addr.clone(),
            writers: 0,
            writer_name: "w".into(),
            maintenance: 0,
            maintenance_env: Vec::new(),
        }
        .var("GATEWAY_ADDR", gateway_addr)
        .var("REDIS_URL", redis_url)
        .var("STREAM_PREFIX", prefix)
        .var("LOG_LEVEL", "warn")
    }

    /// Sets a variable of every daemon.
    pub fn var(mut self, key: &str, value: impl Into<String>) -> Self {
        set(&mut self.env, key, value.into());
        self
    }

    /// Sets a variable of the maintenance workers only (over the one every daemon has).
    pub fn maintenance_var(mut self, key: &str, value: impl Into<String>) -> Self {
        set(&mut self.maintenance_env, key, value.into());
        self
    }

    /// The pools of every daemon: write pool `max`/`min`, read pool `read_max`/`read_min`.
    pub fn pools(self, max: u32, min: u32, read_max: u32, read_min: u32) -> Self {
        let values = [max, min, read_max, read_min];
        POOL_VARS
            .into_iter()
            .zip(values)
            .fold(self, |b, (k, v)| b.var(k, v.to_string()))
    }

    /// No pool variables: each daemon sizes its pools itself, as a new user runs them.
    pub fn own_pools(mut self) -> Self {
        self.env.retain(|(k, _)| !POOL_VARS.contains(&k.as_str()));
        self
    }

    /// `n` batch writers, consumers `{name}0`, `{name}1`, ...
    pub fn writers(mut self, n: usize, name: &str) -> Self {
        self.writers = n;
        self.writer_name = name.to_owned();
        self
    }

    /// `n` maintenance workers.
    pub fn maintenance(mut self, n: usize) -> Self {
        self.maintenance = n;
        self
    }

    /// Where the gateway will listen.
    pub fn gateway_addr(&self) -> &str {
        &self.gateway_addr
    }

    /// The stack with nothing started yet (its binaries found), for commands that must run
    /// first ([`Stack::command`]) and [`Stack::start_all`].
    pub fn build(self) -> anyhow::Result<Stack> {
        Ok(Stack {
            env: self.env,
            gateway_addr: self.gateway_addr,
            gateway: None,
            writers: (0..self.writers).map(|_| None).collect(),
            maintenance: None,
            more_maintenance: Vec::new(),
            maintenance_count: self.maintenance,
            writer_name: self.writer_name,
            maintenance_env: self.maintenance_env,
            bins: bin_dir()?,
        })
    }

    /// The stack, every daemon started (each answering `/healthz`, not necessarily ready).
    pub async fn start(self) -> anyhow::Result<Stack> {
        let mut stack = self.build()?;
        stack.start_all().await;
        Ok(stack)
    }
}

/// The daemons of one pipeline, as processes; each is killed when dropped.
pub struct Stack {
    /// The variables every daemon gets.
    pub env: Vec<(String, String)>,
    pub gateway_addr: String,
    pub gateway: Option<Daemon>,
    pub writers: Vec<Option<Daemon>>,
    pub maintenance: Option<Daemon>,
    /// Maintenance workers beyond the first.
    pub more_maintenance: Vec<Daemon>,
    maintenance_count: usize,
    writer_name: String,
    maintenance_env: Vec<(String, String)>,
    bins: PathBuf,
}

impl Stack {
    /// Starts the gateway, the writers and the maintenance workers, in that order.
    pub async fn start_all(&mut self) {
        self.start_gateway().await;
        for i in 0..self.writers.len() {
            self.start_writer(i).await;
        }
        if self.maintenance_count > 0 {
            self.start_maintenance().await;
        }
        for _ in 1..self.maintenance_count {
            let d = Daemon::start(&self.bin("maintenance-worker"), &self.maintenance_vars()).await;
            self.more_maintenance.push(d);
        }
    }

    /// The path of daemon binary `name`.
    pub fn bin(&self, name: &str) -> String {
        self.bins.join(name).to_string_lossy().into_owned()
    }

    /// Runs a command of daemon binary `bin` (`migrate`, `apps create`, ...) with the stack's
    /// variables; its standard output.
    pub fn command(&self, bin: &str, args: &[&str]) -> anyhow::Result<String> {
        let out = std::process::Command::new(self.bin(bin))
            .args(args)
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .output()?;
        if !out.status.success() {
            bail!("{bin} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    pub async fn start_gateway(&mut self) {
        self.gateway = Some(Daemon::start(&self.bin("ingest-gateway"), &self.env).await);
    }

    pub async fn start_writer(&mut self, i: usize) {
        let mut env = self.env.clone();
        env.push((
            "WRITER_CONSUMER_NAME".into(),
            format!("{}{i}", self.writer_name),
        ));
        self.writers[i] = Some(Daemon::start(&self.bin("batch-writer"), &env).await);
    }

    /// Starts one more writer (not waiting for it to be ready); its index.
    pub async fn add_writer(&mut self) -> usize {
        self.writers.push(None);
        let i = self.writers.len() - 1;
        self.start_writer(i).await;
        i
    }

    pub async fn start_maintenance(&mut self) {
        let env = self.maintenance_vars();
        self.maintenance = Some(Daemon::start(&self.bin("maintenance-worker"), &env).await);
    }

    fn maintenance_vars(&self) -> Vec<(String, String)> {
        let mut env = self.env.clone();
        for (k, v) in &self.maintenance_env {
            set(&mut env, k, v.clone());
        }
        env
    }

    /// The gateway; panics when it is not running.
    pub fn running_gateway(&self) -> &Daemon {
        self.gateway
            .as_ref()
            .expect("the stack's gateway is running")
    }

    /// The first maintenance worker; panics when it is not running.
    pub fn running_maintenance(&self) -> &Daemon {
        self.maintenance
            .as_ref()
            .expect("the stack's maintenance worker is running")
    }

    /// Every daemon running.
    pub fn daemons(&self) -> impl Iterator<Item = &Daemon> {
        self.gateway
            .iter()
            .chain(self.writers.iter().flatten())
            .chain(self.maintenance.iter())
            .chain(self.more_maintenance.iter())
    }

    /// The gateway, the writers and the first maintenance worker that are running, each with a
    /// name for a report (`ingest-gateway`, `batch-writer 0`, `maintenance-worker`).
    pub fn named(&self) -> Vec<(String, &Daemon)> {
        let writers = self.writers.iter().enumerate();
        self.gateway
            .iter()
            .map(|d| ("ingest-gateway".to_owned(), d))
            .chain(writers.filter_map(|(i, w)| Some((format!("batch-writer {i}"), w.as_ref()?))))
            .chain(
                self.maintenance
                    .iter()
                    .map(|d| ("maintenance-worker".into(), d)),
            )
            .collect()
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
        wait_for(limit, || async { self.all_ready().await.then_some(()) })
            .await
            .is_some()
    }

    /// Stops the gateway, the writers and the first maintenance worker with SIGTERM and waits
    /// for each to exit (SIGKILL past `limit`), so nothing can write after an audit starts. False
    /// when one had to be killed.
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

    /// The logs of every daemon still running, for a failure report.
    pub fn logs(&self) -> String {
        self.daemons()
            .map(|d| d.logs())
            .collect::<Vec<_>>()
            .join("\n")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value<'a>(env: &'a [(String, String)], key: &str) -> Vec<&'a str> {
        env.iter()
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    fn builder() -> StackBuilder {
        let db = vec![("DB_NAME".to_owned(), "d".to_owned())];
        StackBuilder::new(db, "redis://r/", "p")
    }

    #[test]
    fn a_variable_set_twice_is_there_once_with_the_last_value() {
        let b = builder()
            .var("LOG_LEVEL", "info")
            .var("QUEUE_HIGH_WATER", "9");
        assert_eq!(value(&b.env, "LOG_LEVEL"), ["info"]);
        assert_eq!(value(&b.env, "QUEUE_HIGH_WATER"), ["9"]);
        assert_eq!(value(&b.env, "REDIS_URL"), ["redis://r/"]);
        assert_eq!(value(&b.env, "STREAM_PREFIX"), ["p"]);
        assert_eq!(value(&b.env, "GATEWAY_ADDR"), [b.gateway_addr()]);
    }

    #[test]
    fn pools_are_set_together_and_own_pools_removes_them() {
        let b = builder().var("DB_POOL_MAX", "4").pools(8, 2, 4, 1);
        let sizes: Vec<Vec<&str>> = POOL_VARS.iter().map(|k| value(&b.env, k)).collect();
        assert_eq!(sizes, [["8"], ["2"], ["4"], ["1"]]);
        let b = b.own_pools();
        assert!(POOL_VARS.iter().all(|k| value(&b.env, k).is_empty()));
        assert_eq!(value(&b.env, "DB_NAME"), ["d"]);
    }

    #[test]
    fn maintenance_variables_override_only_the_maintenance_workers() {
        let b = builder()
            .maintenance(1)
            .maintenance_var("LOG_LEVEL", "info");
        let stack = Stack {
            env: b.env,
            gateway_addr: b.gateway_addr,
            gateway: None,
            writers: Vec::new(),
            maintenance: None,
            more_maintenance: Vec::new(),
            maintenance_count: b.maintenance,
            writer_name: b.writer_name,
            maintenance_env: b.maintenance_env,
            bins: PathBuf::new(),
        };
        assert_eq!(value(&stack.env, "LOG_LEVEL"), ["warn"]);
        assert_eq!(value(&stack.maintenance_vars(), "LOG_LEVEL"), ["info"]);
    }
}
