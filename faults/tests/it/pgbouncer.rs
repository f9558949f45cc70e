//! PostgreSQL behind PgBouncer in transaction pooling mode (Debian's 1.18, a handful of server
//! connections shared by every client): the pipeline under load through it stores every
//! acknowledged event exactly once across a writer's SIGKILL, the read API answers through it,
//! the maintenance worker's replicas (whose sessions go direct) keep one leader that hands over;
//! and a daemon pointed at the pooler as if it were PostgreSQL stops with an error that names
//! the fix instead of misbehaving.

use std::time::Duration;

use faults::load::{audit, Load};
use faults::stack::{Shape, Stack};
use testkit::stack::set;
use testkit::{free_port, http_get, wait_for, OwnPostgres, PgBouncer, TestDb};

const REDIS: &str = "redis://127.0.0.1:6379/";

/// The replica's leadership as its `/readyz` reports it.
async fn is_leader(addr: &str) -> Option<bool> {
    let (_, body) = http_get(addr, "/readyz").await?;
    let v: serde_json::Value = serde_json::from_str(&body).ok()?;
    v["detail"]["leader"].as_bool()
}

/// Sends until `events` more are acknowledged, SIGKILLing and restarting writer 0 halfway.
async fn load_across_a_writer_kill(stack: &mut Stack, events: usize) {
    let target = stack.sender.books.acked().len() + events;
    let load = Load::start(&stack.sender, 4, 20, Duration::from_millis(10), false);
    let acked = |n: usize| {
        let books = stack.sender.books.clone();
        wait_for(Duration::from_secs(120), move || {
            let books = books.clone();
            async move { (books.acked().len() >= n).then_some(()) }
        })
    };
    assert!(
        acked(target - events / 2).await.is_some(),
        "too few events taken"
    );
    if let Some(w) = stack.daemons.writers[0].as_mut() {
        let _ = w.child.kill();
        let _ = w.child.wait();
    }
    stack.daemons.start_writer(0).await;
    assert!(acked(target).await.is_some(), "too few events taken");
    load.stop().await;
}

/// Waits until every acknowledged event is stored and the queue is empty; lost and doubled.
async fn settle(stack: &Stack, db: &tokio_postgres::Client) -> (u64, u64) {
    let acked = stack.sender.books.acked();
    wait_for(Duration::from_secs(120), || async {
        let books = audit(db, &acked).await.ok()?;
        (books.lost == 0 && stack.queue_depth().await.ok()? == 0).then_some(())
    })
    .await;
    let books = audit(db, &acked).await.expect("audit");
    (books.lost, books.doubled)
}

/// What each of the server's sessions of the stack's database is doing, for a failure report.
async fn sessions(db: &tokio_postgres::Client) -> String {
    let sql = "SELECT format('%s %s %s/%s %s %s', pid, state, wait_event_type, wait_event, \
                      now() - xact_start, left(query, 80)) \
                 FROM pg_stat_activity \
                WHERE datname = current_database() AND pid <> pg_backend_pid()";
    match db.query(sql, &[]).await {
        Ok(rows) => rows
            .iter()
            .map(|r| r.get::<_, String>(0))
            .collect::<Vec<_>>()
            .join("\n"),
        Err(e) => e.to_string(),
    }
}

/// The one leader among the maintenance replicas: its index (0 is `maintenance`).
async fn the_leader(stack: &Stack) -> Option<usize> {
    let mut addrs = vec![stack.daemons.maintenance.as_ref()?.ops_addr.clone()];
    addrs.extend(
        stack
            .daemons
            .more_maintenance
            .iter()
            .map(|d| d.ops_addr.clone()),
    );
    let mut leaders = Vec::new();
    for (i, a) in addrs.iter().enumerate() {
        if is_leader(a).await? {
            leaders.push(i);
        }
    }
    (leaders.len() == 1).then(|| leaders[0])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pipeline_through_pgbouncer_in_transaction_mode_stores_every_event_exactly_once() {
    let pg = OwnPostgres::start().await.expect("postgres");
    // Far from UTC: a connection that lost its time zone would put days in the wrong place.
    let admin = pg.client("postgres").await.expect("admin");
    for sql in [
        "ALTER SYSTEM SET timezone = 'Pacific/Kiritimati'",
        "SELECT pg_reload_conf()",
    ] {
        admin.batch_execute(sql).await.expect("timezone");
    }
    let bouncer = PgBouncer::start(pg.port, 4, "").await.expect("pgbouncer");
    let prefix = format!("pgbouncer-{}", std::process::id());
    let shape = Shape {
        writers: 2,
        maintenance: 2,
        small_pools: true,
    };
    let mut stack = Stack::start_pooled(&pg, bouncer.port, REDIS, "pgbouncer", &prefix, shape)
        .await
        .expect("stack");
    let ready = stack.daemons.ready_within(Duration::from_secs(60)).await;
    assert!(
        ready,
        "not all ready:\n{}\n{}",
        stack.daemons.logs(),
        bouncer.log()
    );
    let db = stack.db().await.expect("db");

    load_across_a_writer_kill(&mut stack, 6_000).await;
    let (lost, doubled) = settle(&stack, &db).await;
    if (lost, doubled) != (0, 0) {
        panic!(
            "lost {lost}, doubled {doubled}; queued {:?}; the server's sessions:\n{}\n{}\n{}",
            stack.queue_depth().await.ok(),
            sessions(&db).await,
            stack.daemons.logs(),
            bouncer.log()
        );
    }
    // No answer went astray in the pooler (see `Db::finish`).
    assert!(
        !bouncer.log().contains("when not linked"),
        "{}",
        bouncer.log()
    );
    let logs = stack.daemons.logs();
    assert!(!logs.contains("prepared statement"), "{logs}");

    // The read API through the pooler: today's (UTC) count is every event stored for today.
    let today = chrono::Utc::now().date_naive();
    let stored: i64 = db
        .query_one(
            "SELECT count(*) FROM analytics_events \
             WHERE (occurred_at AT TIME ZONE 'UTC')::date = $1::text::date",
            &[&today.to_string()],
        )
        .await
        .expect("count")
        .get(0);
    let path = format!(
        "/v1/stats/daily?from={today}&to={today}&api_key={}",
        stack.read_key
    );
    let counted = wait_for(Duration::from_secs(30), || async {
        let (status, body) = http_get(&stack.daemons.gateway_addr, &path).await?;
        let v: serde_json::Value = serde_json::from_str(&body).ok()?;
        let total: i64 = v["days"]
            .as_array()?
            .iter()
            .filter_map(|d| d["events"].as_i64())
            .sum();
        (status == 200 && total == stored).then_some(())
    })
    .await;
    assert!(counted.is_some(), "daily stats through the pooler");

    // One leader among the two maintenance replicas; it hands over when stopped.
    let first = wait_for(Duration::from_secs(30), || the_leader(&stack)).await;
    let first = first.expect("exactly one leader");
    let gone = match first {
        0 => stack.daemons.maintenance.as_mut(),
        i => stack.daemons.more_maintenance.get_mut(i - 1),
    };
    gone.expect("leader").terminate(Duration::from_secs(20));
    let next_addr = match first {
        0 => stack.daemons.more_maintenance[0].ops_addr.clone(),
        _ => stack.daemons.running_maintenance().ops_addr.clone(),
    };
    let took = wait_for(Duration::from_secs(30), || async {
        is_leader(&next_addr).await.filter(|l| *l)
    })
    .await;
    assert_eq!(took, Some(true), "the other replica takes over");
}

/// Runs `bin` (the daemon, no arguments) with `env` until it exits, at most 60 s: its exit
/// status and standard error.
async fn run_to_exit(bin: &str, env: &[(String, String)]) -> (Option<i32>, String) {
    use tokio::io::AsyncReadExt;
    let spawned = tokio::process::Command::new(bin)
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .env("METRICS_ADDR", format!("127.0.0.1:{}", free_port()))
        .env("REDIS_URL", REDIS)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn();
    let mut child = match spawned {
        Ok(c) => c,
        Err(e) => return (None, e.to_string()),
    };
    let mut pipe = child.stderr.take().expect("stderr piped");
    let reader = tokio::spawn(async move {
        let mut out = Vec::new();
        let _ = pipe.read_to_end(&mut out).await;
        String::from_utf8_lossy(&out).into_owned()
    });
    let code = match tokio::time::timeout(Duration::from_secs(60), child.wait()).await {
        Ok(Ok(status)) => status.code(),
        Ok(Err(e)) => return (None, e.to_string()),
        Err(_) => {
            // Still running: stop it and show what it said meanwhile.
            let _ = child.kill().await;
            let said = reader.await.unwrap_or_default();
            return (None, format!("still running after 60 s; it said:\n{said}"));
        }
    };
    (code, reader.await.unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemons_pointed_at_pgbouncer_as_if_it_were_postgresql_stop_and_name_the_fix() {
    let db = TestDb::migrated().await;
    let (_, pg_port) = testkit::admin_env();
    // PgBouncer's default refuses the startup options; this one drops them silently.
    let refusing = PgBouncer::start(pg_port, 4, "").await.expect("pgbouncer");
    let dropping = PgBouncer::start(pg_port, 4, "ignore_startup_parameters = options")
        .await
        .expect("pgbouncer");
    let bins = testkit::bin_dir().expect("binaries");
    let bin = |name: &str| bins.join(name).to_string_lossy().into_owned();
    let fix = "DB_POOLER=transaction";
    for (daemon, bouncer) in [
        ("maintenance-worker", &refusing),
        ("maintenance-worker", &dropping),
        ("batch-writer", &dropping),
    ] {
        let mut env = testkit::db_env(&db.name);
        set(&mut env, "DB_PORT", bouncer.port.to_string());
        let (code, stderr) = run_to_exit(&bin(daemon), &env).await;
        assert!(code.is_some_and(|c| c != 0), "{daemon}: {code:?} {stderr}");
        assert!(stderr.contains(fix), "{daemon}: {stderr}");
    }
    // Pooled, but the direct endpoint is the pooler too.
    let mut env = testkit::db_env(&db.name);
    set(&mut env, "DB_PORT", dropping.port.to_string());
    set(&mut env, "DB_POOLER", "transaction".into());
    set(&mut env, "DB_DIRECT_HOST", "127.0.0.1".into());
    set(&mut env, "DB_DIRECT_PORT", dropping.port.to_string());
    let (code, stderr) = run_to_exit(&bin("ingest-gateway"), &env).await;
    assert!(code.is_some_and(|c| c != 0), "gateway: {code:?} {stderr}");
    assert!(stderr.contains(fix), "gateway: {stderr}");
    // Pooled with no direct endpoint at all: a configuration error.
    set(&mut env, "DB_PORT", refusing.port.to_string());
    env.retain(|(k, _)| !k.starts_with("DB_DIRECT"));
    let (code, stderr) = run_to_exit(&bin("maintenance-worker"), &env).await;
    assert!(code.is_some_and(|c| c != 0), "{code:?} {stderr}");
    assert!(stderr.contains("DB_DIRECT_HOST"), "{stderr}");
}
