//! The test server's tools and neighbours: a streaming replica made with pg_basebackup, running
//! PostgreSQL's tools as `postgres`, and Redis key clean-up.

use crate::db::{admin_env, connect};

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
