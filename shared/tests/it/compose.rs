//! Every environment variable compose/compose.yml gives the Sluice services is one the binaries
//! read (a misspelt variable would be silently ignored).

fn read(path: &str) -> String {
    let full = format!("{}/../{path}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("{full}: {e}"))
}

#[test]
fn compose_sets_only_variables_the_binaries_read() {
    let compose = read("compose/compose.yml");
    let sources: String = [
        "shared/src/config.rs",
        "shared/src/budget.rs",
        "shared/src/telemetry.rs",
        "ingest-gateway/src/config.rs",
        "batch-writer/src/config.rs",
        "maintenance-worker/src/config.rs",
    ]
    .iter()
    .map(|p| read(p))
    .collect();
    // Variables of the third-party images, not of Sluice.
    let foreign = [
        "POSTGRES_PASSWORD",
        "POSTGRES_DB",
        "GF_AUTH_ANONYMOUS_ENABLED",
    ];
    let mut checked = 0;
    for line in compose.lines() {
        let t = line.trim_start();
        let Some((key, _)) = t.split_once(':') else {
            continue;
        };
        let is_var = !key.is_empty()
            && key
                .chars()
                .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
            && key.chars().next().is_some_and(|c| c.is_ascii_uppercase());
        if !is_var || foreign.contains(&key) {
            continue;
        }
        checked += 1;
        assert!(
            sources.contains(&format!("\"{key}\"")),
            "compose sets {key}, which no Sluice binary reads"
        );
    }
    assert!(
        checked >= 15,
        "only {checked} variables found: the parser lost track of the file"
    );
}
