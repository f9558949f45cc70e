//! Each test's own database, cloned in milliseconds from the migrated template, and the
//! connection settings of the test server.
//!
//! Tests run in parallel processes (nextest), so each database has a name no other process can
//! pick and is dropped when its guard is.

use std::sync::atomic::{AtomicU32, Ordering};

use shared::config::{DbConfig, Env};
use tokio_postgres::{Client, NoTls};

use crate::template::ensure_template;

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

/// The password of the test server's `postgres` user: `SLUICE_TEST_PG_PASSWORD`, else
/// `postgres`.
pub fn admin_password() -> String {
    std::env::var("SLUICE_TEST_PG_PASSWORD").unwrap_or_else(|_| "postgres".into())
}

/// The environment variables that point a daemon at database `db` of the test server, as
/// `postgres` with the test server's password.
pub fn db_env(db: &str) -> Vec<(String, String)> {
    let (host, port) = admin_env();
    [
        ("DB_HOST", host),
        ("DB_PORT", port.to_string()),
        ("DB_NAME", db.to_owned()),
        ("DB_USER", "postgres".into()),
        ("DB_PASSWORD", admin_password()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

/// Connects to database `db` of the test server as `postgres`.
pub async fn connect(db: &str) -> Client {
    let (host, port) = admin_env();
    let (client, conn) = tokio_postgres::Config::new()
        .host(&host)
        .port(port)
        .user("postgres")
        .password(admin_password())
        .dbname(db)
        .connect(NoTls)
        .await
        .unwrap_or_else(|e| panic!("connect to test database {db} on {host}:{port}: {e}"));
    tokio::spawn(async move {
        let _ = conn.await;
    });
    client
}

/// Drops database `name` (with FORCE) of the server `admin` is connected to, if it exists, and
/// creates it empty: a benchmark's or a fault run's database, made anew.
pub async fn recreate_database(admin: &Client, name: &str) -> Result<(), tokio_postgres::Error> {
    admin
        .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .await?;
    admin
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
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

    /// The daemons' database settings pointing at this database, with small pools: the same
    /// variables as [`TestDb::env_vars`].
    pub fn config(&self) -> DbConfig {
        DbConfig::from_env(&Env::from_pairs(self.env_vars())).expect("test config parses")
    }

    /// The environment variables that point a daemon at this database (the test server's
    /// password included), with small pools.
    pub fn env_vars(&self) -> Vec<(String, String)> {
        let pools = [
            ("DB_POOL_MAX", "4"),
            ("DB_POOL_MIN", "1"),
            ("DB_READ_POOL_MAX", "4"),
            ("DB_READ_POOL_MIN", "1"),
        ];
        let mut env = db_env(&self.name);
        env.extend(pools.map(|(k, v)| (k.to_owned(), v.to_owned())));
        env
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn daemons_get_the_test_servers_password_and_each_variable_once() {
        let env = db_env("some_db");
        let keys: Vec<&str> = env.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            keys,
            ["DB_HOST", "DB_PORT", "DB_NAME", "DB_USER", "DB_PASSWORD"]
        );
        let password = env.iter().find(|(k, _)| k == "DB_PASSWORD").map(|(_, v)| v);
        assert_eq!(password, Some(&admin_password()));
    }
}
