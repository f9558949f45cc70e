//! The connection budget on a real server: with every pool variable at its default, a stock
//! PostgreSQL (`max_connections` 100) serves a gateway, eight writers and two maintenance
//! replicas; and a writer the server refuses waits, not ready, saying why, while the others
//! work, and starts once a connection frees up.

use std::time::Duration;

use faults::load::{audit, Load};
use faults::stack::{Shape, Stack};
use shared::budget::Deployment;
use shared::config::Env;
use testkit::{http_get, pg_client, redis_cleanup, wait_for, OwnPostgres};

const REDIS: &str = "redis://127.0.0.1:6379/";

/// Sends `events` more events through the gateway, waits until every acknowledged event is
/// stored and the queue is empty, and checks each is stored exactly once; `db` is a connection
/// of the test's own (the server may have no slot for a new one).
async fn load_and_audit(stack: &Stack, db: &tokio_postgres::Client, events: usize) {
    let target = stack.sender.books.acked().len() + events;
    let load = Load::start(&stack.sender, 4, 20, Duration::from_millis(10), false);
    let sent = wait_for(Duration::from_secs(120), || async {
        (stack.sender.books.acked().len() >= target).then_some(())
    })
    .await;
    load.stop().await;
    assert!(sent.is_some(), "the gateway took too few events");
    let acked = stack.sender.books.acked();
    let stored = wait_for(Duration::from_secs(120), || async {
        let books = audit(db, &acked).await.ok()?;
        let depth = stack.queue_depth().await.ok()?;
        (books.lost == 0 && depth == 0).then_some(())
    })
    .await;
    assert!(
        stored.is_some(),
        "not all stored:\n{}",
        stack.daemons.logs()
    );
    let books = audit(db, &acked).await.expect("audit");
    assert_eq!((books.lost, books.doubled), (0, 0), "{books:?}");
}

/// Connections the daemons hold to the stack's database now.
async fn connections(db: &tokio_postgres::Client, name: &str) -> i64 {
    db.query_one(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
        &[&name],
    )
    .await
    .expect("count")
    .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn defaults_serve_a_gateway_eight_writers_and_two_maintenance_replicas_on_a_stock_server() {
    let pg = OwnPostgres::start_with(100).await.expect("postgres");
    let prefix = format!("budget-stock-{}", std::process::id());
    let shape = Shape {
        writers: 8,
        maintenance: 2,
        small_pools: false,
    };
    let stack = Stack::start_with(&pg, REDIS, "budget_stock", &prefix, shape)
        .await
        .expect("stack");
    let ready = stack.daemons.ready_within(Duration::from_secs(60)).await;
    assert!(ready, "not all ready:\n{}", stack.daemons.logs());
    let db = stack.db().await.expect("db");
    load_and_audit(&stack, &db, 5_000).await;

    // What the formula promises holds on the server: never more than the daemons' maximum, and
    // room to spare under a stock server's 97 ordinary slots.
    let none = Env::default();
    let budget = Deployment {
        gateways: (1, none.clone()),
        writers: (8, none.clone()),
        maintenance: (2, none),
    };
    let at_most = budget.daemons().expect("budget").at_most;
    let held = connections(&db, &stack.db).await;
    assert!(
        held as usize <= at_most,
        "{held} connections, budget {at_most}"
    );
    assert!(budget.max_connections_needed().expect("budget") <= 100);
    assert!(stack.daemons.all_ready().await, "{}", stack.daemons.logs());
    redis_cleanup(REDIS, &prefix).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_the_server_refuses_waits_not_ready_and_starts_when_a_connection_frees_up() {
    let pg = OwnPostgres::start_with(40).await.expect("postgres");
    let prefix = format!("budget-full-{}", std::process::id());
    let shape = Shape {
        writers: 2,
        maintenance: 0,
        small_pools: false,
    };
    let mut stack = Stack::start_with(&pg, REDIS, "budget_full", &prefix, shape)
        .await
        .expect("stack");
    let ready = stack.daemons.ready_within(Duration::from_secs(60)).await;
    assert!(ready, "not all ready:\n{}", stack.daemons.logs());

    // Take every slot left, as other clients of a busy server would; the first is kept for
    // the test's own queries.
    let mut fillers = vec![stack.db().await.expect("db")];
    let refusal = loop {
        match pg_client(pg.port, "postgres").await {
            Ok(c) => fillers.push(c),
            Err(e) => break format!("{e:#}"),
        }
        assert!(fillers.len() < 40, "the server never refused");
    };
    assert!(refusal.contains("too many clients"), "{refusal}");

    let last = stack.daemons.add_writer().await;
    let writer = stack.daemons.writers[last].as_ref().expect("writer");
    let waiting = wait_for(Duration::from_secs(30), || async {
        let logs = writer.logs();
        (logs.contains("sorry, too many clients already") && logs.contains("53300")).then_some(())
    })
    .await;
    assert!(waiting.is_some(), "{}", writer.logs());
    let (status, body) = http_get(&writer.ops_addr, "/readyz").await.expect("readyz");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("too many clients"), "{body}");
    let (_, metrics) = http_get(&writer.ops_addr, "/metrics")
        .await
        .expect("metrics");
    let refused = metrics
        .lines()
        .find(|l| l.starts_with(r#"sluice_db_connect_errors_total{pool="write",sqlstate="53300"}"#))
        .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok());
    assert!(refused.is_some_and(|n| n >= 1.0), "{metrics}");

    // The others keep working meanwhile.
    load_and_audit(&stack, &fillers[0], 1_000).await;
    let (status, _) = http_get(&writer.ops_addr, "/readyz").await.expect("readyz");
    assert_eq!(status, 503, "still waiting while the server is full");

    // Free connections, two at a time (the writer warms one per COPY stream), until it starts.
    let mut started = false;
    while fillers.len() > 1 && !started {
        fillers.truncate(fillers.len().saturating_sub(2).max(1));
        started = writer.wait_ready(Duration::from_secs(15)).await;
    }
    assert!(started, "{}", writer.logs());
    fillers.truncate(1);
    load_and_audit(&stack, &fillers[0], 2_000).await;
    redis_cleanup(REDIS, &prefix).await;
}
