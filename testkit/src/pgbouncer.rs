//! A PgBouncer of a test's own (Debian's package, 1.18) in front of a PostgreSQL, in transaction
//! pooling mode with few server connections, so that every trap of that mode shows: statements
//! and sessions of different clients interleave on the same server connections. Stopped and its
//! directory removed when dropped.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::Context;
use tokio_postgres::NoTls;

use crate::http::free_port;
use crate::wait::wait_for;

pub struct PgBouncer {
    pub port: u16,
    dir: String,
    child: Child,
}

/// The pgbouncer binary: on the PATH or where Debian puts it.
fn binary() -> String {
    let on_path = Command::new("pgbouncer")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok();
    match on_path {
        true => "pgbouncer".to_owned(),
        false => "/usr/sbin/pgbouncer".to_owned(),
    }
}

impl PgBouncer {
    /// A pooler on a spare port for every database of the PostgreSQL on `pg_port`, with
    /// `pool_size` server connections per database; `extra` lines go into its `[pgbouncer]`
    /// section (such as `ignore_startup_parameters = options`).
    pub async fn start(pg_port: u16, pool_size: usize, extra: &str) -> anyhow::Result<Self> {
        let port = free_port();
        let dir = format!("/tmp/sluice-pgbouncer-{port}");
        std::fs::create_dir_all(&dir)?;
        // Written by pgbouncer once it runs as `postgres`.
        std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o777))?;
        std::fs::write(format!("{dir}/users.txt"), "\"postgres\" \"\"\n")?;
        std::fs::write(
            format!("{dir}/pgbouncer.ini"),
            config(&dir, port, pg_port, pool_size, extra),
        )?;
        // It refuses to run as root: `-u` drops to `postgres` once the port is bound.
        let child = Command::new(binary())
            .args(["-u", "postgres", &format!("{dir}/pgbouncer.ini")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("start pgbouncer (apt-get install pgbouncer)")?;
        let me = Self { port, dir, child };
        me.wait_up().await?;
        Ok(me)
    }

    async fn wait_up(&self) -> anyhow::Result<()> {
        let port = self.port;
        let up = wait_for(Duration::from_secs(20), || async move {
            let (client, conn) = tokio_postgres::Config::new()
                .host("127.0.0.1")
                .port(port)
                .user("postgres")
                .dbname("postgres")
                .connect(NoTls)
                .await
                .ok()?;
            tokio::spawn(conn);
            client.simple_query("SELECT 1").await.ok().map(|_| ())
        })
        .await;
        up.with_context(|| format!("pgbouncer did not come up:\n{}", self.log()))
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(format!("{}/log", self.dir)).unwrap_or_default()
    }
}

fn config(dir: &str, port: u16, pg_port: u16, pool_size: usize, extra: &str) -> String {
    format!(
        "[databases]\n\
         * = host=127.0.0.1 port={pg_port}\n\
         [pgbouncer]\n\
         listen_addr = 127.0.0.1\n\
         listen_port = {port}\n\
         unix_socket_dir =\n\
         auth_type = trust\n\
         auth_file = {dir}/users.txt\n\
         pool_mode = transaction\n\
         default_pool_size = {pool_size}\n\
         max_client_conn = 1000\n\
         logfile = {dir}/log\n\
         {extra}\n"
    )
}

impl Drop for PgBouncer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
