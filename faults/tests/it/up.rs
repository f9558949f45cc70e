//! `scripts/up` stops its daemons however it is stopped: Ctrl-C while its output goes through a
//! pipe (`scripts/up 2>&1 | tee up.log`, the pipe gone with the Ctrl-C), SIGTERM, and a closed
//! terminal (SIGHUP). The script runs on the debug binaries, its own database, stream prefix
//! and ports.

use std::time::Duration;

use testkit::{free_port, http_get, wait_for};

/// The script's process group leader, killed and reaped however the test ends.
struct Job(std::process::Child);

impl Drop for Job {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn alive(pid: u32) -> bool {
    std::process::Command::new("kill")
        .args(["-0", &pid.to_string()])
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

async fn up_then(signal: &str) {
    let bins = testkit::bin_dir().expect("daemons built");
    let root = format!("{}/..", env!("CARGO_MANIFEST_DIR"));
    let tag = uuid::Uuid::new_v4().simple().to_string();
    let run_dir = std::env::temp_dir().join(format!("sluice-up-{tag}"));
    let db = format!("up_test_{tag}");
    let ports = [free_port(), free_port(), free_port()];
    let gateway = free_port();
    // The pipeline's shell, the script and `tee` share a process group of their own, as a
    // terminal's foreground job does: Ctrl-C reaches all three, and `tee` dies with it.
    let mut job = Job(std::process::Command::new("setsid")
        .args([
            "bash",
            "-c",
            "scripts/up 2>&1 | tee \"$SLUICE_RUN_DIR.log\" > /dev/null",
        ])
        .current_dir(&root)
        .env("SLUICE_BIN_DIR", &bins)
        .env("SLUICE_RUN_DIR", &run_dir)
        .env(
            "SLUICE_METRICS_PORTS",
            ports.map(|p| p.to_string()).join(" "),
        )
        .env("GATEWAY_ADDR", format!("127.0.0.1:{gateway}"))
        .env("DB_NAME", &db)
        .env("STREAM_PREFIX", format!("up-{tag}"))
        .spawn()
        .expect("scripts/up"));
    let ready = wait_for(Duration::from_secs(120), || async {
        for p in ports {
            let (status, _) = http_get(&format!("127.0.0.1:{p}"), "/readyz").await?;
            if status != 200 {
                return None;
            }
        }
        Some(())
    })
    .await;
    let log = || std::fs::read_to_string(run_dir.with_extension("log")).unwrap_or_default();
    assert!(ready.is_some(), "the daemons came up\n{}", log());
    let pids: Vec<u32> = std::fs::read_to_string(run_dir.join("pids"))
        .expect("pids")
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect();
    assert_eq!(pids.len(), 3);
    let group = format!("-{}", job.0.id());
    let sent = std::process::Command::new("kill")
        .args([signal, "--", &group])
        .status()
        .expect("kill");
    assert!(sent.success());
    let deadline = std::time::Instant::now() + Duration::from_secs(40);
    let mut ended = false;
    while std::time::Instant::now() < deadline {
        if job.0.try_wait().ok().flatten().is_some() {
            ended = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(ended, "scripts/up ended after {signal}\n{}", log());
    let gone = wait_for(Duration::from_secs(10), || async {
        pids.iter().all(|p| !alive(*p)).then_some(())
    })
    .await;
    let left: Vec<&u32> = pids.iter().filter(|p| alive(**p)).collect();
    for p in &left {
        let _ = std::process::Command::new("kill")
            .args(["-KILL", &p.to_string()])
            .status();
    }
    assert!(
        gone.is_some(),
        "daemons left running after {signal}: {left:?}\n{}",
        log()
    );
    let admin = testkit::connect("postgres").await;
    let _ = admin
        .batch_execute(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"))
        .await;
    testkit::redis_cleanup("redis://127.0.0.1:6379/", &format!("up-{tag}")).await;
    let _ = std::fs::remove_dir_all(&run_dir);
    let _ = std::fs::remove_file(run_dir.with_extension("log"));
}

#[tokio::test]
async fn scripts_up_stops_its_daemons_on_ctrl_c_through_a_pipe() {
    up_then("-INT").await;
}

#[tokio::test]
async fn scripts_up_stops_its_daemons_on_sigterm_and_on_a_closed_terminal() {
    up_then("-TERM").await;
    up_then("-HUP").await;
}
