//! PostgreSQL servers of a test's own and the tools that make them: a streaming replica of the
//! test server (pg_basebackup), a cluster on a spare port (initdb) that a fault can restart or
//! stop without touching anything else. Each is stopped and its directory removed when dropped.
//! Needs root (the PostgreSQL tools run as `postgres`) and Debian's layout of PostgreSQL.

use std::time::Duration;

use anyhow::Context;
use tokio_postgres::{Client, NoTls};

use crate::db::{admin_env, connect};
use crate::http::free_port;

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

/// [`as_postgres`] with its error as an `anyhow::Error`.
pub(crate) fn run_as_postgres(cmd: &str) -> anyhow::Result<()> {
    as_postgres(cmd).map_err(anyhow::Error::msg)
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

/// A PostgreSQL cluster of a test's (or the fault suite's) own, on a spare port. Backups,
/// WAL streaming and restores of one are in [`crate::backup`].
pub struct OwnPostgres {
    pub port: u16,
    pub(crate) dir: String,
}

impl OwnPostgres {
    /// A server with room to spare (`max_connections` 200) for the fault runs.
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_with(200).await
    }

    /// A server with `max_connections` slots (a stock PostgreSQL has 100, 3 of them kept for
    /// superusers).
    pub async fn start_with(max_connections: usize) -> anyhow::Result<Self> {
        Self::start_configured(max_connections, "").await
    }

    /// As [`OwnPostgres::start_with`], with `settings` (lines of `postgresql.conf`) added.
    pub async fn start_configured(max_connections: usize, settings: &str) -> anyhow::Result<Self> {
        let port = free_port();
        let dir = format!("/var/lib/postgresql/sluice-faults-{port}");
        let bin = pg_bin();
        let _ = std::fs::remove_dir_all(&dir);
        run_as_postgres(&format!(
            "{bin}/initdb -D {dir} -A trust -U postgres --no-sync >/dev/null"
        ))?;
        run_as_postgres(&format!(
            "printf \"port = {port}\\nlisten_addresses = '127.0.0.1'\\nunix_socket_directories = '/tmp'\\nmax_connections = {max_connections}\\nshared_buffers = 128MB\\n{settings}\" >> {dir}/postgresql.conf"
        ))?;
        let me = Self { port, dir };
        me.start_server()?;
        Ok(me)
    }

    pub(crate) fn start_server(&self) -> anyhow::Result<()> {
        run_as_postgres(&format!(
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
        let _ = std::fs::remove_dir_all(crate::backup::restore_wal_dir(&self.dir));
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
