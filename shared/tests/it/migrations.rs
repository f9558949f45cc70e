use chrono::Utc;
use shared::schema::{self, partitions, PartitionWindow, SchemaError};
use testkit::TestDb;

fn window() -> PartitionWindow {
    PartitionWindow {
        now: Utc::now(),
        retention_months: 12,
        premake_months: 6,
    }
}

#[tokio::test]
async fn migrations_apply_on_an_empty_database_then_reapply_as_a_no_op() {
    let db = TestDb::empty().await;
    let client = db.client().await;
    assert!(matches!(
        schema::check_version(&client).await,
        Err(SchemaError::TooOld { found: 0, .. })
    ));
    let first = schema::migrate(&client, window()).await.expect("first run");
    assert_eq!(first.applied, vec![1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
    assert_eq!(first.partitions_created, 19, "12 back, this month, 6 ahead");
    schema::check_version(&client).await.expect("up to date");

    let second = schema::migrate(&client, window())
        .await
        .expect("second run");
    assert_eq!(second, schema::MigrateReport::default());

    let months = partitions::existing(&client).await.expect("list");
    assert_eq!(months.len(), 19);
    let default_parts: i64 = client
        .query_one(
            "SELECT count(*) FROM pg_partitioned_table pt JOIN pg_class c ON c.oid = pt.partrelid \
             WHERE c.relname = 'analytics_events' AND pt.partdefid <> 0",
            &[],
        )
        .await
        .expect("query")
        .get(0);
    assert_eq!(default_parts, 0, "there must be no DEFAULT partition");
}

#[tokio::test]
async fn two_concurrent_migrate_runs_do_not_conflict() {
    let db = TestDb::empty().await;
    let (a, b) = (db.client().await, db.client().await);
    let (ra, rb) = tokio::join!(schema::migrate(&a, window()), schema::migrate(&b, window()));
    let (ra, rb) = (ra.expect("run a"), rb.expect("run b"));
    let mut applied = [ra.applied, rb.applied].concat();
    applied.sort();
    assert_eq!(
        applied,
        vec![1, 2, 3, 4, 5, 6, 7, 8, 9, 10],
        "each migration is applied by exactly one run"
    );
    assert_eq!(ra.partitions_created + rb.partitions_created, 19);
    let n: i64 = a
        .query_one("SELECT count(*) FROM sluice_schema_migrations", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(n, shared::schema::MIGRATIONS.len() as i64);
}

#[tokio::test]
async fn an_edited_migration_is_refused() {
    let db = TestDb::migrated().await;
    let client = db.client().await;
    client
        .execute(
            "UPDATE sluice_schema_migrations SET checksum = 'feed' WHERE version = 1",
            &[],
        )
        .await
        .expect("tamper");
    let err = schema::migrate(&client, window())
        .await
        .expect_err("mismatch");
    assert!(
        matches!(err, SchemaError::ChecksumMismatch { version: 1, .. }),
        "{err}"
    );
}

#[tokio::test]
async fn a_schema_newer_than_the_binary_is_refused() {
    let db = TestDb::migrated().await;
    let client = db.client().await;
    client
        .execute(
            "INSERT INTO sluice_schema_migrations (version, name, checksum) VALUES (999, 'x', 'y')",
            &[],
        )
        .await
        .expect("insert");
    let err = schema::check_version(&client).await.expect_err("too new");
    assert!(
        matches!(err, SchemaError::TooNew { found: 999, .. }),
        "{err}"
    );
}

#[tokio::test]
async fn events_route_to_their_month_and_a_missing_month_fails_without_a_default() {
    let db = TestDb::migrated().await;
    let client = db.client().await;
    let insert =
        "INSERT INTO analytics_events (event_id, app_id, event_name, occurred_at, received_at) \
                  VALUES (gen_random_uuid(), 'a', 'e', $1, now())";
    client
        .execute(insert, &[&Utc::now()])
        .await
        .expect("current month has a partition");
    let far = Utc::now() + chrono::Duration::days(365 * 3);
    let err = client
        .execute(insert, &[&far])
        .await
        .expect_err("no partition");
    assert_eq!(err.code().map(|c| c.code()), Some("23514"), "{err}");
    let summary: i64 = client
        .query_one("SELECT count(*) FROM daily_analytics_summary", &[])
        .await
        .expect("the summary exists")
        .get(0);
    assert_eq!(summary, 0, "not folded yet");
    let pending: i64 = client
        .query_one("SELECT sum(events)::bigint FROM summary_pending", &[])
        .await
        .expect("pending")
        .get(0);
    assert_eq!(pending, 1, "the insert left its pending summary row");
}

/// Migration 10 on an installation with rows: app ids and event names become "C" in every table
/// whose keys they are, each index on them is rebuilt valid (the per-partition hot-data index
/// included), nothing stored changes, the order of names is the one C.UTF-8 gave, and an app's
/// prefix search can use the composite index.
#[tokio::test]
async fn the_c_collation_upgrade_keeps_rows_and_rebuilds_their_indexes() {
    let db = TestDb::empty().await;
    let c = db.client().await;
    schema::migrate_to(&c, window(), 9).await.expect("up to 9");
    let now = Utc::now();
    c.execute(
        "INSERT INTO analytics_events (event_id, app_id, event_name, occurred_at, received_at, user_id) \
         SELECT gen_random_uuid(), 'app_' || (i % 3), \
                (ARRAY['checkout_done', 'Checkout', 'checkpoint', 'émoji', 'page_view'])[1 + i % 5], \
                $1::timestamptz - (i % 40) * interval '1 day', now(), 'u' || (i % 7) \
           FROM generate_series(1, 2000) i",
        &[&now],
    )
    .await
    .expect("rows");
    let hot = partitions::Month::of(now).partition_name();
    c.batch_execute(&format!(
        "CREATE INDEX {hot}_hot_idx ON {hot} (app_id, occurred_at) INCLUDE (event_name, user_id)"
    ))
    .await
    .expect("hot index");
    let groups =
        "SELECT app_id, event_name, count(*) FROM analytics_events GROUP BY 1, 2 ORDER BY 1, 2";
    let read = |rows: Vec<tokio_postgres::Row>| -> Vec<(String, String, i64)> {
        rows.iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect()
    };
    let before = read(c.query(groups, &[]).await.expect("before"));

    let report = schema::migrate(&c, window()).await.expect("upgrade");
    assert_eq!(report.applied, vec![10]);
    let not_c: Vec<String> = c
        .query(
            "SELECT a.attrelid::regclass::text || '.' || a.attname FROM pg_attribute a \
               JOIN pg_class r ON r.oid = a.attrelid \
               LEFT JOIN pg_collation l ON l.oid = a.attcollation \
              WHERE r.relkind IN ('r', 'p') AND a.attname IN ('app_id', 'event_name') \
                AND (r.relname LIKE 'analytics\\_events%' OR r.relname LIKE 'summary\\_%' \
                     OR r.relname IN ('events_quarantine', 'daily_analytics_summary')) \
                AND l.collname IS DISTINCT FROM 'C'",
            &[],
        )
        .await
        .expect("collations")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(not_c.is_empty(), "not C: {not_c:?}");
    let invalid: i64 = c
        .query_one(
            "SELECT count(*) FROM pg_index WHERE NOT indisvalid OR NOT indisready",
            &[],
        )
        .await
        .expect("indexes")
        .get(0);
    assert_eq!(invalid, 0, "every index rebuilt valid");
    let hot_kept: i64 = c
        .query_one(
            "SELECT count(*) FROM pg_class WHERE relname = $1",
            &[&format!("{hot}_hot_idx")],
        )
        .await
        .expect("hot index")
        .get(0);
    assert_eq!(hot_kept, 1);
    assert_eq!(read(c.query(groups, &[]).await.expect("after")), before);

    c.batch_execute("SET enable_seqscan = off")
        .await
        .expect("set");
    let prefix =
        "SELECT count(*) FROM analytics_events WHERE app_id = 'app_1' AND event_name LIKE 'check%'";
    let plan: Vec<String> = c
        .query(&format!("EXPLAIN {prefix}"), &[])
        .await
        .expect("explain")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(
        plan.iter()
            .any(|l| l.contains("event_name >= 'check'::text")),
        "the name's range is an index condition of the composite index: {plan:#?}"
    );
    let n: i64 = c.query_one(prefix, &[]).await.expect("prefix").get(0);
    let want: i64 = before
        .iter()
        .filter(|(a, e, _)| a == "app_1" && e.starts_with("check"))
        .map(|g| g.2)
        .sum();
    assert_eq!(n, want);
    assert!(want > 0);
}
