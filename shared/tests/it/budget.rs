//! The connection budget of the deployments this repository ships: what their daemons may open
//! at most, by `shared::budget`'s formula under the variables the files set and the most
//! replicas they run (KEDA's `maxReplicaCount` for the writers), fits the PostgreSQL
//! `max_connections` they configure (`docs/operations.md`, "Connection budget").

use std::collections::HashMap;

use shared::budget::{self, Deployment};
use shared::config::Env;

fn read(path: &str) -> String {
    let full = format!("{}/../{path}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("{full}: {e}"))
}

fn indent(line: &str) -> usize {
    line.len() - line.trim_start().len()
}

fn unquote(v: &str) -> String {
    v.trim().trim_matches('"').to_owned()
}

/// `KEY: value` of an environment variable, if the line holds one.
fn variable(line: &str) -> Option<(String, String)> {
    let (k, v) = line.trim().split_once(':')?;
    let is_var = k.chars().next().is_some_and(|c| c.is_ascii_uppercase())
        && k.chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_');
    is_var.then(|| (k.to_owned(), unquote(v)))
}

/// The lines of the block that starts at the line `header` (indentation included), up to the
/// next line indented as much or less.
fn block<'a>(text: &'a str, header: &str) -> Vec<&'a str> {
    let mut lines = text.lines().skip_while(|l| l.trim_end() != header);
    let Some(first) = lines.next() else {
        return Vec::new();
    };
    let depth = indent(first);
    lines
        .take_while(|l| l.trim().is_empty() || indent(l) > depth)
        .collect()
}

fn env_of(shared: &HashMap<String, String>, own: &[(String, String)]) -> Env {
    let mut vars = shared.clone();
    vars.extend(own.iter().cloned());
    Env::from_pairs(vars)
}

fn number_after(text: &str, key: &str) -> Option<usize> {
    let at = text.find(key)? + key.len();
    let digits: String = text[at..]
        .trim_start_matches([' ', ':', '=', '"'])
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

/// compose/compose.yml: its services' variables and replicas, and the server's max_connections.
fn compose() -> (Deployment, usize) {
    let text = read("compose/compose.yml");
    let shared: HashMap<String, String> = block(&text, "x-sluice-env: &sluice-env")
        .into_iter()
        .filter_map(variable)
        .collect();
    let service = |name: &str| {
        let lines = block(&text, &format!("  {name}:"));
        let own: Vec<_> = lines.iter().filter_map(|l| variable(l)).collect();
        let replicas = number_after(&lines.join("\n"), "replicas").unwrap_or(1);
        (replicas, env_of(&shared, &own))
    };
    let max = number_after(&text, "max_connections=").expect("compose sets max_connections");
    let d = Deployment {
        gateways: service("ingest-gateway"),
        writers: service("batch-writer"),
        maintenance: service("maintenance-worker"),
    };
    (d, max)
}

/// docs/k8s: the Deployments' replicas (the writers' at KEDA's maximum) and variables, and the
/// max_connections the ConfigMap's annotation says the servers have.
fn kubernetes() -> (Deployment, usize, usize) {
    let text = read("docs/k8s/sluice.yaml");
    let docs: Vec<&str> = text.split("\n---\n").collect();
    let config_map = docs
        .iter()
        .find(|d| d.contains("kind: ConfigMap"))
        .expect("ConfigMap");
    let shared: HashMap<String, String> = block(config_map, "data:")
        .into_iter()
        .filter_map(variable)
        .collect();
    let max = number_after(config_map, "sluice.example/postgres-max-connections")
        .expect("the ConfigMap names the servers' max_connections");
    let deployment = |name: &str| {
        let doc = docs
            .iter()
            .find(|d| d.contains("kind: Deployment") && d.contains(&format!("name: {name}\n")))
            .unwrap_or_else(|| panic!("Deployment {name}"));
        let own: Vec<(String, String)> = doc
            .lines()
            .filter_map(|l| {
                let item = l.trim().strip_prefix("- {name: ")?;
                let (k, rest) = item.split_once(", value: ")?;
                Some((k.to_owned(), unquote(rest.trim_end_matches('}'))))
            })
            .collect();
        let replicas = number_after(doc, "\n  replicas").expect("replicas");
        (replicas, env_of(&shared, &own))
    };
    let keda = read("docs/k8s/keda.yaml");
    assert!(
        keda.contains("name: batch-writer"),
        "KEDA scales the writers"
    );
    let keda_max = number_after(&keda, "maxReplicaCount").expect("maxReplicaCount");
    let mut writers = deployment("batch-writer");
    writers.0 = writers.0.max(keda_max);
    let d = Deployment {
        gateways: deployment("ingest-gateway"),
        writers,
        maintenance: deployment("maintenance-worker"),
    };
    (d, keda_max, max)
}

#[test]
fn compose_fits_its_postgres_max_connections() {
    let (d, max) = compose();
    assert_eq!(d.writers.0, 2, "compose's writer replicas");
    let need = d.max_connections_needed().expect("budget");
    assert!(need <= max, "compose needs {need}, PostgreSQL allows {max}");
}

#[test]
fn kubernetes_fits_at_the_keda_maximum_on_primary_and_replica() {
    let (d, keda_max, max) = kubernetes();
    assert_eq!(d.writers.0, keda_max);
    let need = d.max_connections_needed().expect("budget");
    assert!(need <= max, "the primary needs {need}, allows {max}");
    // The gateways' reads go to the replica (DB_READ_HOST), which needs its own budget.
    let env = &d.gateways.1;
    assert!(
        env.get("DB_READ_HOST").is_some(),
        "the manifests use a replica"
    );
    let vars = budget::PoolVars::from_env(env).expect("vars");
    let (read_max, _) = budget::GATEWAY_READ.size(vars.read_max, vars.read_min);
    let replica = d.gateways.0 * read_max + budget::SUPERUSER_RESERVED + budget::OPERATOR_HEADROOM;
    assert!(replica <= max, "the replica needs {replica}, allows {max}");
}

#[test]
fn the_parsers_see_the_files() {
    let (c, _) = compose();
    assert!(
        c.writers.1.get("REDIS_URL").is_some(),
        "compose's shared variables"
    );
    assert_eq!(c.writers.1.get("WRITER_CONCURRENCY"), Some("2"));
    let (k, _, max) = kubernetes();
    assert_eq!((k.gateways.0, k.maintenance.0, max), (2, 2, 100));
    assert_eq!(k.writers.1.get("METRICS_ADDR"), Some("0.0.0.0:9101"));
}
