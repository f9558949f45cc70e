//! docs/configuration.md names exactly the variables the three daemons read.

use std::collections::BTreeSet;

use shared::config::Env;

/// Every variable the daemons ask for: once with nothing set, once with the variables that
/// switch other ones on (a replica, a separate cache Redis, a Redis URL) set.
fn asked() -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for pairs in [
        vec![],
        vec![
            ("DB_READ_HOST", "replica"),
            ("CACHE_REDIS_URL", "redis://cache:6379/"),
            ("REDIS_URL", "redis://queue:6379/"),
            ("DB_PASSWORD", "pw"),
            ("REDIS_PASSWORD", "pw"),
        ],
    ] {
        let env = Env::from_pairs(pairs);
        ingest_gateway::config::GatewayConfig::from_env(&env).expect("gateway config");
        batch_writer::config::WriterConfig::from_env(&env).expect("writer config");
        maintenance_worker::config::MaintenanceConfig::from_env(&env).expect("maintenance config");
        shared::budget::PoolVars::from_env(&env).expect("pool variables");
        names.extend(env.asked());
    }
    names
}

/// The variables of docs/configuration.md: the first cell of each table row, in backticks.
fn documented() -> BTreeSet<String> {
    let doc = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../docs/configuration.md"
    ))
    .expect("docs/configuration.md");
    doc.lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split_once('`'))
        .map(|(name, _)| name.to_owned())
        .filter(|n| n.chars().all(|c| c.is_ascii_uppercase() || c == '_'))
        .collect()
}

#[test]
fn the_configuration_reference_names_every_variable_read_and_no_other() {
    let (asked, documented) = (asked(), documented());
    let missing: Vec<_> = asked.difference(&documented).collect();
    let stale: Vec<_> = documented.difference(&asked).collect();
    assert!(
        missing.is_empty() && stale.is_empty(),
        "read but not documented: {missing:?}; documented but never read: {stale:?}"
    );
}
