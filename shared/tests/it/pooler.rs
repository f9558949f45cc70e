//! The pools behind PgBouncer in transaction pooling mode with two server connections for many
//! clients: every helper and transaction works concurrently, no prepared statement is left on a
//! server connection (where another client's statement of the same name would collide), and
//! each connection keeps UTC although the database's own default is far from it, and the
//! statement timeout.

use std::time::Duration;

use shared::config::{DbConfig, Env};
use shared::db::Db;
use shared::metrics::PoolName;
use testkit::stack::set;
use testkit::{PgBouncer, TestDb};

/// A pool of `max` connections to `db` through `bouncer`, as `DB_POOLER=transaction` builds it.
fn pooled(db: &TestDb, bouncer: &PgBouncer, max: usize) -> Db {
    let mut vars = db.env_vars();
    set(&mut vars, "DB_PORT", bouncer.port.to_string());
    set(&mut vars, "DB_POOLER", "transaction".into());
    set(&mut vars, "DB_DIRECT_HOST", "127.0.0.1".into());
    set(&mut vars, "DB_POOL_MAX", max.to_string());
    set(&mut vars, "DB_POOL_MIN", "0".into());
    let config = DbConfig::from_env(&Env::from_pairs(vars)).expect("config");
    assert!(config.primary.pooled);
    Db::new(&config.primary, &config, PoolName::Write).expect("pool")
}

/// One client's round of every kind of statement.
async fn round(db: &Db, i: i64) {
    let n: i64 = db
        .query_one("one", "SELECT $1::bigint + 1", &[&i])
        .await
        .expect("query_one")
        .get(0);
    assert_eq!(n, i + 1);
    db.execute("insert", "INSERT INTO pooled_probe VALUES ($1)", &[&i])
        .await
        .expect("execute");
    let rows = db
        .query("rows", "SELECT v FROM pooled_probe WHERE v = $1", &[&i])
        .await
        .expect("query");
    assert_eq!(rows.len(), 1);
    db.transaction("tx", |tx| {
        Box::pin(async move {
            tx.execute("UPDATE pooled_probe SET v = -v WHERE v = $1", &[&i])
                .await
                .map_err(shared::db::DbError::query("update"))?;
            let r = tx
                .query_one("SELECT count(*) FROM pooled_probe WHERE v = $1", &[&-i])
                .await
                .map_err(shared::db::DbError::query("count"))?;
            Ok(r.get::<_, i64>(0))
        })
    })
    .await
    .expect("transaction");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pooled_helpers_work_through_pgbouncer_and_leave_no_statement_behind() {
    let db = TestDb::migrated().await;
    let direct = db.client().await;
    direct
        .batch_execute(&format!(
            "CREATE TABLE pooled_probe (v bigint); \
             ALTER DATABASE {} SET timezone = 'Pacific/Kiritimati'",
            db.name
        ))
        .await
        .expect("setup");
    let bouncer = PgBouncer::start(testkit::admin_env().1, 2, "")
        .await
        .expect("pgbouncer");
    // Twelve clients on two server connections.
    let pool = pooled(&db, &bouncer, 12);
    let rounds = (1..=240).map(|i| {
        let pool = pool.clone();
        async move { round(&pool, i).await }
    });
    let all = futures::future::join_all(rounds);
    tokio::time::timeout(Duration::from_secs(60), all)
        .await
        .expect("in time");
    let moved: i64 = direct
        .query_one("SELECT count(*) FROM pooled_probe WHERE v < 0", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(moved, 240);
    // Each of the pooler's server connections, seen from inside a transaction (so the two
    // statements share one): no prepared statement kept, UTC, the statement timeout.
    for _ in 0..20 {
        let row = pool
            .query_one(
                "leftovers",
                "SELECT (SELECT count(*) FROM pg_prepared_statements WHERE NOT from_sql), \
                 current_setting('TimeZone'), current_setting('statement_timeout')",
                &[],
            )
            .await
            .expect("leftovers");
        // The helpers prepare nothing (their statements go unnamed).
        assert_eq!(row.get::<_, i64>(0), 0, "a statement was left behind");
        assert_eq!(row.get::<_, String>(1), "UTC");
        // The startup option is gone; each transaction sets it.
        assert_eq!(row.get::<_, String>(2), "30s");
    }
}

/// A statement closed after its transaction (rows kept past the commit) sends its `Close`
/// pipelined with the connection's next transaction, and PgBouncer 1.18 drops the answer to the
/// next one's first message: the client would wait for ever. One connection, rows dropped just
/// before the next query, many times: each query answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_kept_past_the_commit_do_not_stall_the_next_query() {
    let db = TestDb::migrated().await;
    let bouncer = PgBouncer::start(testkit::admin_env().1, 1, "")
        .await
        .expect("pgbouncer");
    let pool = pooled(&db, &bouncer, 1);
    let rounds = async {
        for i in 0..200i64 {
            let rows = pool
                .query("kept", "SELECT $1::bigint", &[&i])
                .await
                .expect("query");
            drop(rows);
            pool.query_one("next", "SELECT 1", &[]).await.expect("next");
        }
    };
    tokio::time::timeout(Duration::from_secs(60), rounds)
        .await
        .expect("every query answered");
}
