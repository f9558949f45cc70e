//! docs/configuration.md names exactly the variables the three daemons read.

use std::collections::BTreeSet;

use shared::config::Env;

/// Every variable the daemons ask for: once with nothing set, once with the variables that
/// switch other ones on (a replica, a direct endpoint, a separate cache Redis, a Redis URL) set.
fn asked() -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for pairs in [
        vec![],
        vec![
            ("DB_READ_HOST", "replica"),
            ("DB_DIRECT_HOST", "postgres"),
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

/// Variables the Kubernetes manifests set for KEDA's redis-streams scaler, not for the daemons.
const FOR_KEDA: [&str; 2] = ["REDIS_ADDRESS", "REDIS_PASSWORD"];

/// A variable name: upper case, digits and underscores, starting with a letter.
fn variable(s: &str) -> Option<&str> {
    let ok = s.starts_with(|c: char| c.is_ascii_uppercase())
        && s.chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_');
    ok.then_some(s)
}

/// The variables the Compose file gives Sluice's containers: the `x-sluice-env` block and the
/// `environment:` of the services built from this repository (`build:` or the `sluice` image).
fn compose_variables(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    // (section, its lines) per top-level key or service.
    let mut blocks: Vec<(String, Vec<&str>)> = Vec::new();
    let mut in_services = false;
    for line in text.lines() {
        let indent = line.len() - line.trim_start().len();
        let key = !line.trim().is_empty() && !line.trim_start().starts_with('#');
        if key && indent == 0 {
            in_services = line.starts_with("services:");
            blocks.push((line.to_owned(), Vec::new()));
        } else if key && indent == 2 && in_services {
            blocks.push((line.to_owned(), Vec::new()));
        } else if let Some(b) = blocks.last_mut() {
            b.1.push(line);
        }
    }
    for (head, lines) in &blocks {
        let ours = head.starts_with("x-sluice-env")
            || lines.iter().any(|l| {
                let l = l.trim_start();
                l.starts_with("build:") || l.starts_with("image: sluice")
            });
        if !ours {
            continue;
        }
        for l in lines {
            if let Some((key, _)) = l.trim_start().split_once(':') {
                if let Some(name) = variable(key) {
                    names.insert(name.to_owned());
                }
            }
        }
    }
    names
}

/// The variables of the Kubernetes manifest: the ConfigMap's and the Secret's keys, and the
/// containers' `env` entries.
fn kubernetes_variables(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in text.lines().map(str::trim_start) {
        let key = match line.strip_prefix("- name: ") {
            Some(name) => Some(name.trim()),
            None => line.split_once(':').map(|(k, _)| k),
        };
        if let Some(name) = key.and_then(variable) {
            names.insert(name.to_owned());
        }
    }
    names
}

#[test]
fn the_compose_and_kubernetes_manifests_set_only_variables_the_daemons_read() {
    let asked = asked();
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let compose = std::fs::read_to_string(format!("{root}/compose/compose.yml")).expect("compose");
    let k8s = std::fs::read_to_string(format!("{root}/docs/k8s/sluice.yaml")).expect("k8s");
    let in_compose = compose_variables(&compose);
    let in_k8s = kubernetes_variables(&k8s);
    // The checks see what the daemons need: a database, a queue, a format.
    for must in ["DB_HOST", "REDIS_URL", "STREAM_SHARDS"] {
        assert!(in_compose.contains(must), "{in_compose:?}");
        assert!(in_k8s.contains(must), "{in_k8s:?}");
    }
    // Neither the database's own container nor Grafana's variables count as Sluice's.
    assert!(!in_compose.contains("POSTGRES_DB"), "{in_compose:?}");
    let unknown = |set: &BTreeSet<String>| -> Vec<String> {
        set.iter()
            .filter(|n| !asked.contains(*n) && !FOR_KEDA.contains(&n.as_str()))
            .cloned()
            .collect()
    };
    assert_eq!(
        unknown(&in_compose),
        Vec::<String>::new(),
        "compose/compose.yml"
    );
    assert_eq!(
        unknown(&in_k8s),
        Vec::<String>::new(),
        "docs/k8s/sluice.yaml"
    );
}

#[test]
fn a_misspelt_variable_in_a_manifest_is_caught() {
    let compose = "x-sluice-env: &e\n  DB_HOST: db\n  DB_HOTS: typo\nservices:\n  postgres:\n    environment:\n      POSTGRES_DB: x\n  writer:\n    build: .\n    environment:\n      WRITER_CONCURENCY: \"2\"\n";
    assert_eq!(
        compose_variables(compose),
        BTreeSet::from(["DB_HOST", "DB_HOTS", "WRITER_CONCURENCY"].map(String::from))
    );
    let k8s = "data:\n  DB_HOST: x\nenv:\n  - name: WRITER_CONSUMER_NAME\n    valueFrom: {}\n";
    assert_eq!(
        kubernetes_variables(k8s),
        BTreeSet::from(["DB_HOST", "WRITER_CONSUMER_NAME"].map(String::from))
    );
    let asked = asked();
    assert!(!asked.contains("DB_HOTS") && !asked.contains("WRITER_CONCURENCY"));
}
