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
    assert_eq!(first.applied, vec![1, 2, 3, 4, 5, 6, 7, 8, 9]);
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
        vec![1, 2, 3, 4, 5, 6, 7, 8, 9],
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
