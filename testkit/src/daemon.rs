//! A daemon binary run as a process by a test or a benchmark: found, started, waited for,
//! signalled, its log kept in a file, killed when dropped.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{bail, Context};

use crate::http::{free_port, http_get};
use crate::wait::wait_for;

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// The daemons' binaries, which `cargo build --bins` puts beside each other.
pub const DAEMONS: [&str; 3] = ["ingest-gateway", "batch-writer", "maintenance-worker"];

/// The directory of the daemon binaries: the running executable's (a benchmark's or the fault
/// suite's; a test's lives one level down, in `deps/`). An error names the first one missing.
pub fn bin_dir() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let mut dir = exe.parent().context("exe dir")?.to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    for b in DAEMONS {
        if !dir.join(b).exists() {
            bail!(
                "{} is missing: build the daemons first (cargo build --bins)",
                dir.join(b).display()
            );
        }
    }
    Ok(dir)
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
