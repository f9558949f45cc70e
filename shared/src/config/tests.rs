use super::*;

fn env(pairs: &[(&str, &str)]) -> Env {
    Env::from_pairs(pairs.iter().copied())
}

#[test]
fn defaults_follow_the_contract() {
    let db = DbConfig::from_env(&Env::default()).expect("defaults parse");
    assert_eq!(db.primary.host, "localhost");
    assert_eq!(db.primary.port, 5432);
    assert_eq!(db.primary.dbname, "analytics_db");
    assert_eq!(db.primary.user, "postgres");
    assert_eq!(db.primary.password.expose(), "postgres");
    assert_eq!((db.primary.pool_max, db.primary.pool_min), (50, 10));
    assert_eq!((db.read_pool_max, db.read_pool_min), (100, 20));
    assert!(db.replica.is_none());
    assert_eq!(db.slow_query, Duration::from_millis(1000));
    assert_eq!(db.statement_timeout, Duration::from_secs(30));
    assert_eq!(db.max_lifetime, Duration::from_secs(3600));
    let redis = RedisConfig::from_env(&Env::default()).expect("defaults parse");
    assert_eq!(redis.url.expose(), "redis://localhost:6379/");
    assert_eq!(redis.cache_url.expose(), redis.url.expose());
}

#[test]
fn read_pool_falls_back_to_primary() {
    let db = DbConfig::from_env(&env(&[("DB_HOST", "primary.example")])).expect("parse");
    let r = db.read_endpoint();
    assert_eq!(r.host, "primary.example");
    assert_eq!((r.pool_max, r.pool_min), (100, 20));
    let db = DbConfig::from_env(&env(&[
        ("DB_HOST", "primary.example"),
        ("DB_READ_HOST", "replica.example"),
        ("DB_READ_PORT", "6543"),
    ]))
    .expect("parse");
    let r = db.read_endpoint();
    assert_eq!((r.host.as_str(), r.port), ("replica.example", 6543));
}

#[test]
fn the_read_pool_size_is_kept_once_whichever_server_it_points_at() {
    let mut db = DbConfig::from_env(&env(&[
        ("DB_READ_HOST", "replica.example"),
        ("DB_READ_POOL_MAX", "7"),
        ("DB_READ_POOL_MIN", "3"),
    ]))
    .expect("parse");
    let r = db.read_endpoint();
    assert_eq!(
        (r.host.as_str(), r.pool_max, r.pool_min),
        ("replica.example", 7, 3)
    );
    (db.read_pool_max, db.read_pool_min) = (4, 1);
    let r = db.read_endpoint();
    assert_eq!((r.pool_max, r.pool_min), (4, 1));
    db.replica = None;
    let r = db.read_endpoint();
    assert_eq!(
        (r.host.as_str(), r.pool_max, r.pool_min),
        ("localhost", 4, 1)
    );
}

#[test]
fn every_bad_value_names_its_variable() {
    let cases: &[(&str, &str)] = &[
        ("DB_PORT", "not-a-port"),
        ("DB_PORT", "70000"),
        ("DB_POOL_MAX", "0"),
        ("DB_POOL_MAX", "lots"),
        ("DB_POOL_MIN", "-1"),
        ("DB_READ_PORT", "x"),
        ("DB_READ_POOL_MAX", "0"),
        ("DB_READ_POOL_MIN", "many"),
        ("SLOW_QUERY_MS", "soon"),
    ];
    for (var, value) in cases {
        let mut pairs = vec![(*var, *value)];
        if var.starts_with("DB_READ_PORT") {
            pairs.push(("DB_READ_HOST", "replica"));
        }
        let err = DbConfig::from_env(&env(&pairs)).expect_err(var);
        assert_eq!(err.var, *var, "{var}={value}: {err}");
        assert!(err.to_string().contains(var), "{err}");
    }
    let err = DbConfig::from_env(&env(&[("DB_POOL_MIN", "60"), ("DB_POOL_MAX", "50")]))
        .expect_err("min>max");
    assert_eq!(err.var, "DB_POOL_MIN");
    let err = DbConfig::from_env(&env(&[
        ("DB_READ_POOL_MIN", "101"),
        ("DB_READ_POOL_MAX", "100"),
    ]))
    .expect_err("min>max");
    assert_eq!(err.var, "DB_READ_POOL_MIN");
    for (var, value) in [
        ("REDIS_PORT", "port"),
        ("REDIS_URL", "http://x"),
        ("CACHE_REDIS_URL", "nope"),
        ("REDIS_URL", "redis://a:7000,http://b:7001"),
        ("REDIS_URL", " , "),
    ] {
        let err = RedisConfig::from_env(&env(&[(var, value)])).expect_err(var);
        assert_eq!(err.var, var);
    }
    let err = LogConfig::from_env(&env(&[("LOG_FORMAT", "xml")])).expect_err("format");
    assert_eq!(err.var, "LOG_FORMAT");
    let err = retention_months(&env(&[("RETENTION_MONTHS", "0")])).expect_err("zero");
    assert_eq!(err.var, "RETENTION_MONTHS");
    let err = premake_months(&env(&[("PARTITION_PREMAKE_MONTHS", "x")])).expect_err("x");
    assert_eq!(err.var, "PARTITION_PREMAKE_MONTHS");
    let err = DbConfig::from_env(&env(&[("DB_SSLMODE", "allow")])).expect_err("sslmode");
    assert_eq!(err.var, "DB_SSLMODE");
    let err = DbConfig::from_env(&env(&[("DB_SSLROOTCERT", "/nonexistent/ca.pem")]))
        .expect_err("root cert");
    assert_eq!(err.var, "DB_SSLROOTCERT");
    let err = stream_shards(&env(&[("STREAM_SHARDS", "0")])).expect_err("zero");
    assert_eq!(err.var, "STREAM_SHARDS");
}

#[test]
fn redis_url_is_built_from_parts_and_wins_when_set() {
    let r = RedisConfig::from_env(&env(&[
        ("REDIS_HOST", "q"),
        ("REDIS_PORT", "7000"),
        ("REDIS_PASSWORD", "p@ss word"),
    ]))
    .expect("parse");
    assert_eq!(r.url.expose(), "redis://:p%40ss%20word@q:7000/");
    let r = RedisConfig::from_env(&env(&[
        ("REDIS_URL", "redis://u:7001/"),
        ("REDIS_HOST", "ignored"),
        ("CACHE_REDIS_URL", "redis://cache:6379/"),
    ]))
    .expect("parse");
    assert_eq!(r.url.expose(), "redis://u:7001/");
    assert_eq!(r.cache_url.expose(), "redis://cache:6379/");
    let cluster = "redis://a:7000,redis://b:7001,rediss://c:7002";
    let r = RedisConfig::from_env(&env(&[("REDIS_URL", cluster)])).expect("cluster list");
    assert_eq!(r.url.expose(), cluster);
    assert_eq!(r.cache_url.expose(), cluster);
}

#[test]
fn secrets_stay_out_of_debug() {
    let db = DbConfig::from_env(&env(&[("DB_PASSWORD", "hunter2")])).expect("parse");
    let redis = RedisConfig::from_env(&env(&[("REDIS_PASSWORD", "hunter3")])).expect("parse");
    let shown = format!("{db:?} {redis:?}");
    assert!(
        !shown.contains("hunter2") && !shown.contains("hunter3"),
        "{shown}"
    );
}
