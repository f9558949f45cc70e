//! Backups and restores of an [`OwnPostgres`], as `docs/operations.md` ("Backups and restores")
//! tells an operator to make them: a base backup (`pg_basebackup`), the WAL streamed by
//! `pg_receivewal` through a replication slot as a synchronous standby (every commit waits until
//! the receiver has flushed its WAL), a hard loss of the server (its data directory gone), and a
//! restore into the same directory on the same port, so running daemons reconnect by themselves.
//! The tools run as `postgres`; directories live beside the server's and are removed when their
//! owner is dropped.

use std::os::unix::process::CommandExt;
use std::time::Duration;

use anyhow::{bail, Context};

use crate::http::free_port;
use crate::postgres::{pg_bin, pg_client, run_as_postgres, OwnPostgres};
use crate::wait::wait_for;

/// The application name (and slot name) of the WAL receiver, which `synchronous_standby_names`
/// names.
pub const WAL_RECEIVER: &str = "sluice_wal";

/// Settings of a server whose commits wait for [`WAL_RECEIVER`]'s flush (PostgreSQL 15 has
/// `wal_level = replica` and these numbers by default; they are written out as an operator
/// would). Start its receiver ([`OwnPostgres::receive_wal`]) before anything commits.
pub const SYNCHRONOUS_WAL: &str = "wal_level = replica
max_wal_senders = 10
max_replication_slots = 10
synchronous_standby_names = 'sluice_wal'
";

/// Where a restore copies the WAL it replays (beside the data directory `data_dir`).
pub(crate) fn restore_wal_dir(data_dir: &str) -> String {
    format!("{data_dir}-restore-wal")
}

/// The `postgres` user's uid and gid.
fn postgres_ids() -> anyhow::Result<(u32, u32)> {
    let id = |flag: &str| -> anyhow::Result<u32> {
        let out = std::process::Command::new("id")
            .args([flag, "postgres"])
            .output()?;
        Ok(String::from_utf8_lossy(&out.stdout).trim().parse()?)
    };
    Ok((id("-u")?, id("-g")?))
}

/// A shell command run as `postgres` without blocking the runtime (a base backup under load
/// takes seconds).
async fn shell_as_postgres(cmd: &str) -> anyhow::Result<()> {
    let (uid, gid) = postgres_ids()?;
    let out = tokio::process::Command::new("sh")
        .args(["-c", cmd])
        .uid(uid)
        .gid(gid)
        .current_dir("/tmp")
        .output()
        .await?;
    if !out.status.success() {
        bail!("{cmd}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

/// `pg_receivewal` writing a server's WAL into a directory of its own as it is committed; killed
/// when dropped, its directory removed.
pub struct WalReceiver {
    child: Option<std::process::Child>,
    /// The received segments (the one in progress ends in `.partial`).
    pub dir: String,
    log: std::path::PathBuf,
}

impl WalReceiver {
    /// Stops the receiver (the segment in progress stays as `.partial`); its files are kept.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// What the receiver logged, for a failure report.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for WalReceiver {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
        let _ = std::fs::remove_file(&self.log);
    }
}

/// A base backup in a directory of its own (`pg_basebackup -X stream`: it holds the WAL it
/// needs to start by itself); removed when dropped.
pub struct BaseBackup {
    pub dir: String,
}

impl Drop for BaseBackup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl OwnPostgres {
    /// A server set up for [`SYNCHRONOUS_WAL`], its WAL receiver already the synchronous
    /// standby, so nothing commits before its WAL is received.
    pub async fn start_synchronous_wal() -> anyhow::Result<(Self, WalReceiver)> {
        let pg = Self::start_configured(200, SYNCHRONOUS_WAL).await?;
        let receiver = pg.receive_wal("wal").await?;
        Ok((pg, receiver))
    }

    /// `host=... port=... user=postgres application_name=sluice_wal`.
    fn conninfo(&self) -> String {
        format!(
            "host=127.0.0.1 port={} user=postgres application_name={WAL_RECEIVER}",
            self.port
        )
    }

    /// Creates the slot [`WAL_RECEIVER`] when missing, starts `pg_receivewal --synchronous` into
    /// a new directory (named with `name`) and waits until the server counts it as its
    /// synchronous standby.
    pub async fn receive_wal(&self, name: &str) -> anyhow::Result<WalReceiver> {
        let dir = format!("{}-{name}", self.dir);
        let bin = pg_bin();
        let conn = self.conninfo();
        run_as_postgres(&format!("rm -rf {dir} && mkdir -p {dir}"))?;
        run_as_postgres(&format!(
            "{bin}/pg_receivewal -d '{conn}' -S {WAL_RECEIVER} --create-slot --if-not-exists"
        ))?;
        let log = std::env::temp_dir().join(format!("sluice-receivewal-{}-{name}.log", self.port));
        let (uid, gid) = postgres_ids()?;
        let child = std::process::Command::new(format!("{bin}/pg_receivewal"))
            .args(["-d", &conn, "-D", &dir, "-S", WAL_RECEIVER, "--synchronous"])
            .args(["--no-loop", "--status-interval", "1"])
            .uid(uid)
            .gid(gid)
            .current_dir("/tmp")
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .context("pg_receivewal")?;
        let receiver = WalReceiver {
            child: Some(child),
            dir,
            log,
        };
        self.wait_synchronous(&receiver).await?;
        Ok(receiver)
    }

    /// Waits until [`WAL_RECEIVER`] streams as the synchronous standby.
    async fn wait_synchronous(&self, receiver: &WalReceiver) -> anyhow::Result<()> {
        let sql =
            "SELECT 1 FROM pg_stat_replication WHERE application_name = $1 AND sync_state = 'sync'";
        let found = wait_for(Duration::from_secs(30), || async {
            let c = pg_client(self.port, "postgres").await.ok()?;
            c.query_opt(sql, &[&WAL_RECEIVER]).await.ok()?.map(|_| ())
        })
        .await;
        found.with_context(|| format!("no synchronous WAL receiver: {}", receiver.logs()))
    }

    /// A base backup taken now (a fast checkpoint first), with the WAL it needs streamed
    /// alongside; the server keeps serving meanwhile.
    pub async fn base_backup(&self, name: &str) -> anyhow::Result<BaseBackup> {
        let backup = BaseBackup {
            dir: format!("{}-{name}", self.dir),
        };
        shell_as_postgres(&format!(
            "rm -rf {d} && {}/pg_basebackup -h 127.0.0.1 -p {} -U postgres -D {d} -X stream -c fast",
            pg_bin(),
            self.port,
            d = backup.dir
        ))
        .await?;
        Ok(backup)
    }

    /// The server lost for good: stopped as a crash would (no checkpoint) and its data
    /// directory removed.
    pub fn lose(&self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }

    /// Restores the lost server into its own data directory and port from `backup` and, when
    /// given, the WAL archived since (a receiver's directory, the receiver stopped: its
    /// `.partial` segment is used under its final name), replays all of it and waits until the
    /// server accepts writes.
    pub async fn restore(&self, backup: &BaseBackup, wal: Option<&str>) -> anyhow::Result<()> {
        restore_files(&self.dir, backup, wal).await?;
        self.start_server()?;
        self.wait_writable().await
    }

    /// A copy of `backup` started on a spare port of its own (no WAL after it, no synchronous
    /// standby), to read what the backup holds; removed when dropped.
    pub async fn from_backup(backup: &BaseBackup) -> anyhow::Result<Self> {
        let port = free_port();
        let pg = Self {
            port,
            dir: format!("/var/lib/postgresql/sluice-faults-{port}"),
        };
        restore_files(&pg.dir, backup, None).await?;
        run_as_postgres(&format!(
            "printf \"port = {port}\\nsynchronous_standby_names = ''\\n\" >> {}/postgresql.conf",
            pg.dir
        ))?;
        pg.start_server()?;
        pg.wait_writable().await?;
        Ok(pg)
    }

    /// Waits until recovery has ended (`pg_is_in_recovery()` false).
    pub async fn wait_writable(&self) -> anyhow::Result<()> {
        let done = wait_for(Duration::from_secs(120), || async {
            let c = pg_client(self.port, "postgres").await.ok()?;
            let row = c.query_one("SELECT pg_is_in_recovery()", &[]).await.ok()?;
            (!row.get::<_, bool>(0)).then_some(())
        })
        .await;
        done.context("the restored server never left recovery")
    }
}

/// `backup` copied into `dir`; with `wal`, that WAL copied beside it (the `.partial` segment
/// renamed), `restore_command` reading it and `recovery.signal`: archive recovery to the end of
/// the WAL, then a new timeline.
async fn restore_files(dir: &str, backup: &BaseBackup, wal: Option<&str>) -> anyhow::Result<()> {
    shell_as_postgres(&format!("rm -rf {dir} && cp -a {} {dir}", backup.dir)).await?;
    let Some(wal) = wal else {
        return Ok(());
    };
    let archive = restore_wal_dir(dir);
    shell_as_postgres(&format!(
        "rm -rf {archive} && cp -a {wal} {archive} && \
         for f in {archive}/*.partial; do [ -e \"$f\" ] && mv \"$f\" \"${{f%.partial}}\"; done; \
         echo \"restore_command = 'cp {archive}/%f %p'\" >> {dir}/postgresql.conf && \
         touch {dir}/recovery.signal"
    ))
    .await
}
