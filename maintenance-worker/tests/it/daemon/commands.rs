//! The binary's commands: `migrate` (once, and pipeline zero for an upgraded installation),
//! each `run-once` flag, and `stats`.

use testkit::TestDb;

use super::BIN;

#[tokio::test]
async fn migrate_applies_once_then_is_a_no_op() {
    let db = TestDb::empty().await;
    let run = || {
        std::process::Command::new(BIN)
            .arg("migrate")
            .envs(db.env_vars())
            .output()
            .expect("run migrate")
    };
    let first = run();
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let out = String::from_utf8_lossy(&first.stdout);
    assert!(
        out.contains("migrations applied: [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]"),
        "{out}"
    );
    let second = run();
    assert!(second.status.success());
    let out = String::from_utf8_lossy(&second.stdout);
    assert!(
        out.contains("migrations applied: []; partitions created: 0"),
        "{out}"
    );
}

fn run_once(db: &TestDb, args: &[&str], extra: &[(&str, &str)]) -> (bool, String, String) {
    let out = std::process::Command::new(BIN)
        .arg("run-once")
        .args(args)
        .envs(db.env_vars())
        .envs(extra.iter().copied())
        .output()
        .expect("run-once");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn jobs_run(stdout: &str) -> Vec<String> {
    stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .map(|v| v["job"].as_str().unwrap_or("").to_owned())
        .collect()
}

#[tokio::test]
async fn each_run_once_flag_does_what_it_says() {
    let db = TestDb::migrated().await;
    let client = db.client().await;
    let future = shared::schema::partitions::Month::of(chrono::Utc::now()).plus(6);
    let exists = |name: String| {
        let c = &client;
        async move {
            c.query_one("SELECT count(*) FROM pg_class WHERE relname = $1", &[&name])
                .await
                .expect("q")
                .get::<_, i64>(0)
                == 1
        }
    };
    client
        .batch_execute(&format!("DROP TABLE {}", future.partition_name()))
        .await
        .expect("drop");

    let (ok, out, err) = run_once(
        &db,
        &[
            "--no-create-partitions",
            "--no-refresh-views",
            "--no-analyze",
        ],
        &[],
    );
    assert!(ok, "{err}");
    assert!(jobs_run(&out).is_empty(), "{out}");
    assert!(
        !exists(future.partition_name()).await,
        "--no-create-partitions"
    );

    let (ok, out, err) = run_once(&db, &["--no-refresh-views", "--no-analyze"], &[]);
    assert!(ok, "{err}");
    assert_eq!(jobs_run(&out), vec!["partitions"]);
    assert!(exists(future.partition_name()).await);

    let (ok, out, err) = run_once(&db, &["--no-create-partitions", "--no-analyze"], &[]);
    assert!(ok, "{err}");
    assert_eq!(jobs_run(&out), vec!["views"]);

    let (ok, out, err) = run_once(&db, &["--no-create-partitions", "--no-refresh-views"], &[]);
    assert!(ok, "{err}");
    assert_eq!(jobs_run(&out), vec!["analyze"]);

    let (ok, out, _) = run_once(&db, &[], &[]);
    assert!(ok);
    assert_eq!(
        jobs_run(&out),
        vec!["partitions", "views", "analyze"],
        "the defaults"
    );

    let oldest = shared::schema::partitions::existing(&client)
        .await
        .expect("list")[0];
    let (ok, out, err) = run_once(
        &db,
        &["--drop-old-partitions"],
        &[("RETENTION_MONTHS", "1")],
    );
    assert!(ok, "{err}");
    assert_eq!(
        jobs_run(&out),
        vec!["partitions", "retention", "dedupe", "views", "analyze"]
    );
    assert!(
        !exists(oldest.partition_name()).await,
        "--drop-old-partitions dropped {oldest:?}"
    );

    let (ok, out, err) = run_once(
        &db,
        &[
            "--vacuum",
            "--no-create-partitions",
            "--no-refresh-views",
            "--no-analyze",
        ],
        &[],
    );
    assert!(ok, "{err}");
    assert_eq!(jobs_run(&out), vec!["vacuum"]);
}

#[tokio::test]
async fn stats_prints_a_readable_report() {
    let db = TestDb::migrated().await;
    let out = std::process::Command::new(BIN)
        .arg("stats")
        .envs(db.env_vars())
        .output()
        .expect("stats");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "Tables and partitions",
        "dead tuples",
        "Largest indexes",
        "Rows in quarantine: 0",
        "Buffer cache hit ratio",
        "analytics_events_p",
    ] {
        assert!(text.contains(needle), "{needle} missing:\n{text}");
    }
}

/// An installation upgraded past migration 4 keeps its entries recognised: `migrate` registers
/// its `STREAM_PREFIX` as pipeline 0 (whose ledger keys are the old ones) before any writer of
/// another prefix can take that number.
#[tokio::test]
async fn migrate_gives_an_upgraded_installation_pipeline_zero() {
    let db = TestDb::migrated().await;
    let client = db.client().await;
    let old_key = shared::queue::entry_ledger_key(0, 1, "1700000000000-0").expect("key");
    client
        .execute(
            "INSERT INTO entry_ledger (entry_key) VALUES ($1)",
            &[&old_key],
        )
        .await
        .expect("a ledger row from before the upgrade");
    let out = std::process::Command::new(BIN)
        .arg("migrate")
        .envs(db.env_vars())
        .env("STREAM_PREFIX", "legacy")
        .output()
        .expect("run migrate");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let writer = batch_writer::bookkeeping::register(
        &shared::db::Pools::new(&db.config()).expect("pools").write,
        "newcomer",
    )
    .await
    .expect("register");
    assert_eq!(writer, 1, "another prefix gets a new number");
    let rows: Vec<(i16, String)> = client
        .query(
            "SELECT pipeline_id, stream_prefix FROM stream_pipelines ORDER BY 1",
            &[],
        )
        .await
        .expect("pipelines")
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(
        rows,
        vec![(0, "legacy".to_owned()), (1, "newcomer".to_owned())]
    );
}
