use testkit::TestDb;

const BIN: &str = env!("CARGO_BIN_EXE_ingest-gateway");

fn cli(db: &TestDb, args: &[&str]) -> std::process::Output {
    std::process::Command::new(BIN)
        .args(args)
        .envs(db.env_vars())
        .output()
        .expect("run ingest-gateway")
}

#[tokio::test]
async fn apps_create_prints_keys_once_and_stores_only_their_hashes() {
    let db = TestDb::migrated().await;
    let out = cli(&db, &["apps", "create", "--name", "demo"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let app: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    assert_eq!(app["name"], "demo");
    let app_id = app["app_id"].as_str().expect("app_id");
    let ingest = app["ingest_key"].as_str().expect("ingest_key");
    let read = app["read_key"].as_str().expect("read_key");
    assert!(ingest.starts_with("sk_ingest_") && read.starts_with("sk_read_"));

    let client = db.client().await;
    let rows = client
        .query(
            "SELECT key_hash, kind, app_id FROM api_keys ORDER BY kind",
            &[],
        )
        .await
        .expect("keys");
    assert_eq!(rows.len(), 2);
    for row in &rows {
        let hash: Vec<u8> = row.get(0);
        let kind: String = row.get(1);
        let clear = if kind == "ingest" { ingest } else { read };
        assert_eq!(hash, ingest_gateway::apps::hash_key(clear).to_vec());
        assert_eq!(row.get::<_, String>(2), app_id);
    }
    let dump: String = client
        .query_one("SELECT string_agg(t::text, ' ') FROM api_keys t", &[])
        .await
        .expect("dump")
        .get(0);
    assert!(
        !dump.contains(&ingest[10..]) && !dump.contains(&read[8..]),
        "a clear key is stored"
    );
}

#[tokio::test]
async fn keys_revoke_revokes_once_and_refuses_unknown_keys() {
    let db = TestDb::migrated().await;
    let out = cli(&db, &["apps", "create", "--name", "demo"]);
    let app: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let key = app["ingest_key"].as_str().expect("key");
    let out = cli(&db, &["keys", "revoke", key]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let revoked: i64 = db
        .client()
        .await
        .query_one(
            "SELECT count(*) FROM api_keys WHERE revoked_at IS NOT NULL",
            &[],
        )
        .await
        .expect("count")
        .get(0);
    assert_eq!(revoked, 1);
    let again = cli(&db, &["keys", "revoke", key]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("no such key"));
    let unknown = cli(&db, &["keys", "revoke", "sk_ingest_nope"]);
    assert!(!unknown.status.success());
}

#[tokio::test]
async fn apps_create_refuses_a_bad_name() {
    let db = TestDb::migrated().await;
    let long = "x".repeat(201);
    for name in ["", long.as_str()] {
        let out = cli(&db, &["apps", "create", "--name", name]);
        assert!(!out.status.success());
        assert!(String::from_utf8_lossy(&out.stderr).contains("app name"));
    }
    let ok = cli(&db, &["apps", "create", "--name", &"x".repeat(200)]);
    assert!(ok.status.success());
}
