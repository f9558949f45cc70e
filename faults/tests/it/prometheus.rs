//! A real Prometheus (Debian's package; `scripts/check-prometheus` installs it) scraping the three
//! real daemons under a little load, with the Compose stack's alert rules loaded: every target is
//! up, every metric the contract names is there and the event counters increase, no label carries
//! an unbounded value, no alert fires on a healthy pipeline, and every expression of the Grafana
//! dashboard evaluates and names only metrics the daemons export.

use std::collections::BTreeSet;
use std::time::Duration;

use faults::load::Load;
use faults::stack::{Shape, Stack};
use testkit::{free_port, http_get, redis_cleanup, wait_for, OwnPostgres};

const REDIS: &str = "redis://127.0.0.1:6379/";

/// The metric names the contract lists.
const CONTRACT: &[&str] = &[
    "sluice_events_accepted_total",
    "sluice_events_rejected_total",
    "sluice_events_written_total",
    "sluice_dead_letter_total",
    "sluice_queue_lag_events",
    "sluice_batch_size_bucket",
    "sluice_copy_duration_seconds_bucket",
    "sluice_maintenance_runs_total",
    "sluice_db_pool_connections",
    "sluice_cache_hits_total",
    "sluice_cache_misses_total",
    "sluice_events_suppressed_total",
];

/// Label names whose values come from small fixed sets (or are Prometheus's own).
const BOUNDED_LABELS: &[&str] = &[
    "__name__",
    "instance",
    "job",
    "reason",
    "api",
    "pool",
    "state",
    "outcome",
    "le",
    "quantile",
    "daemon",
    "version",
    "task",
    "sqlstate",
    "route",
    "place",
    "status",
    "alertname",
    "alertstate",
];

struct Prometheus {
    child: std::process::Child,
    addr: String,
    dir: std::path::PathBuf,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Prometheus {
    fn start(targets: &[(&str, String)]) -> Self {
        let dir =
            std::env::temp_dir().join(format!("sluice-prom-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).expect("dir");
        let rules = format!(
            "{}/../compose/prometheus/alerts.yml",
            env!("CARGO_MANIFEST_DIR")
        );
        let mut config = format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {rules}\nscrape_configs:\n"
        );
        for (job, addr) in targets {
            // As compose/prometheus/prometheus.yml: the maintenance worker's own `job` label.
            let honor = *job == "maintenance-worker";
            config.push_str(&format!(
                "  - job_name: {job}\n    honor_labels: {honor}\n    static_configs:\n      - targets: ['{addr}']\n"
            ));
        }
        std::fs::write(dir.join("prometheus.yml"), config).expect("config");
        let addr = format!("127.0.0.1:{}", free_port());
        let child = std::process::Command::new("prometheus")
            .arg(format!(
                "--config.file={}",
                dir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("prometheus is installed (scripts/check-prometheus installs Debian's package)");
        Self { child, addr, dir }
    }

    /// `GET path` of the HTTP API; the `data` of a successful answer.
    async fn api(&self, path: &str) -> Option<serde_json::Value> {
        let (status, body) = http_get(&self.addr, path).await?;
        let v: serde_json::Value = serde_json::from_str(&body).ok()?;
        (status == 200 && v["status"] == "success").then(|| v["data"].clone())
    }

    async fn query(&self, expr: &str) -> Option<serde_json::Value> {
        let q: String = form_urlencoded::byte_serialize(expr.as_bytes()).collect();
        self.api(&format!("/api/v1/query?query={q}")).await
    }

    /// The sum of an instant query's values.
    async fn sum(&self, expr: &str) -> Option<f64> {
        let data = self.query(expr).await?;
        data["result"]
            .as_array()?
            .iter()
            .map(|r| r["value"][1].as_str()?.parse::<f64>().ok())
            .sum()
    }
}

/// The dashboard's PromQL expressions.
fn dashboard_expressions() -> Vec<String> {
    let path = format!(
        "{}/../compose/grafana/dashboards/sluice.json",
        env!("CARGO_MANIFEST_DIR")
    );
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).expect("dashboard")).expect("json");
    let mut out = Vec::new();
    fn walk(v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(m) => {
                if let Some(e) = m.get("expr").and_then(|e| e.as_str()) {
                    out.push(e.to_owned());
                }
                m.values().for_each(|v| walk(v, out));
            }
            serde_json::Value::Array(a) => a.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    walk(&json, &mut out);
    out
}

fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = expr;
    while let Some(at) = rest.find("sluice_") {
        let name: String = rest[at..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        rest = &rest[at + name.len()..];
        names.insert(name);
    }
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_prometheus_scrapes_every_daemon_and_the_dashboard_and_alerts_fit_what_they_export()
{
    let pg = OwnPostgres::start().await.expect("postgres");
    let prefix = format!("prom-{}", uuid::Uuid::new_v4().simple());
    let shape = Shape {
        writers: 1,
        maintenance: 1,
        small_pools: true,
    };
    let stack = Stack::start_with(&pg, REDIS, "prometheus", &prefix, shape)
        .await
        .expect("stack");
    let ready = stack.daemons.ready_within(Duration::from_secs(60)).await;
    assert!(ready, "{}", stack.daemons.logs());
    let ops = |d: &Option<testkit::Daemon>| d.as_ref().expect("daemon").ops_addr.clone();
    let targets = [
        ("ingest-gateway", ops(&stack.daemons.gateway)),
        ("batch-writer", ops(&stack.daemons.writers[0])),
        ("maintenance-worker", ops(&stack.daemons.maintenance)),
    ];
    let prom = Prometheus::start(&targets);
    let load = Load::start(&stack.sender, 2, 20, Duration::from_millis(20), false);
    // Read traffic too, so the cache's counters and hit ratio have something to say.
    let app = stack
        .daemons
        .command("ingest-gateway", &["apps", "create", "--name", "reader"])
        .expect("apps create");
    let app: serde_json::Value = serde_json::from_str(&app).expect("app");
    let read_key = app["read_key"].as_str().expect("read key").to_owned();
    let today = chrono::Utc::now().date_naive();
    let path = format!("/v1/stats/top-events?from={today}&to={today}&api_key={read_key}");
    for _ in 0..3 {
        let (status, body) = http_get(&stack.daemons.gateway_addr, &path)
            .await
            .expect("stats");
        assert_eq!(status, 200, "{body}");
    }

    let up = wait_for(Duration::from_secs(60), || async {
        (prom.sum("sum(up)").await? == 3.0).then_some(())
    })
    .await;
    assert!(
        up.is_some(),
        "every target up: {:?}",
        prom.api("/api/v1/targets").await
    );

    // The counters increase while the load runs.
    let first = wait_for(Duration::from_secs(30), || async {
        let a = prom.sum("sum(sluice_events_accepted_total)").await?;
        let w = prom.sum("sum(sluice_events_written_total)").await?;
        (a > 0.0 && w > 0.0).then_some((a, w))
    })
    .await
    .expect("events counted");
    let grew = wait_for(Duration::from_secs(30), || async {
        let a = prom.sum("sum(sluice_events_accepted_total)").await?;
        let w = prom.sum("sum(sluice_events_written_total)").await?;
        (a > first.0 && w > first.1).then_some(())
    })
    .await;
    assert!(grew.is_some(), "accepted and written increase");
    load.stop().await;

    // Every name the contract lists, and the cache's hit ratio (set once reads happened), may
    // take a scrape or two to appear.
    let fetch = || async {
        let v = prom.api("/api/v1/label/__name__/values").await?;
        Some(
            v.as_array()?
                .iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect::<BTreeSet<String>>(),
        )
    };
    let complete = wait_for(Duration::from_secs(30), || async {
        let names = fetch().await?;
        let all = CONTRACT
            .iter()
            .chain(&["sluice_cache_hit_ratio"])
            .all(|m| names.contains(*m));
        all.then_some(names)
    })
    .await;
    let names = match complete {
        Some(n) => n,
        None => fetch().await.expect("names"),
    };
    for m in CONTRACT {
        assert!(names.contains(*m), "{m} is exported");
    }

    // Every label is from a bounded set: no app id, no event name, no key, nowhere.
    let labels = prom.api("/api/v1/labels").await.expect("labels");
    for label in labels.as_array().expect("array") {
        let label = label.as_str().expect("str");
        assert!(
            BOUNDED_LABELS.contains(&label),
            "label {label} is not a bounded one"
        );
        let values = prom
            .api(&format!("/api/v1/label/{label}/values"))
            .await
            .expect("values");
        let values = values.as_array().expect("array");
        if label != "__name__" {
            assert!(
                values.len() <= 40,
                "label {label} has {} values",
                values.len()
            );
        }
        for v in values {
            let v = v.as_str().unwrap_or_default();
            assert!(
                !v.starts_with("app_") && !v.contains("fault_probe"),
                "{label}={v}"
            );
        }
    }

    // The dashboard: every expression evaluates, and names only exported metrics.
    let exprs = dashboard_expressions();
    assert!(exprs.len() >= 10, "{} expressions", exprs.len());
    for e in &exprs {
        assert!(
            prom.query(e).await.is_some(),
            "the dashboard's {e} evaluates"
        );
        for m in metric_names(e) {
            assert!(
                names.contains(&m),
                "the dashboard's {e} names {m}, which nothing exports"
            );
        }
    }

    // The alert rules are loaded, and none fires on a healthy pipeline.
    let rules = prom.api("/api/v1/rules").await.expect("rules");
    let loaded: usize = rules["groups"]
        .as_array()
        .expect("groups")
        .iter()
        .map(|g| g["rules"].as_array().map_or(0, Vec::len))
        .sum();
    assert!(loaded >= 11, "{loaded} rules loaded");
    for r in rules["groups"][0]["rules"].as_array().expect("rules") {
        assert_eq!(
            r["health"], "ok",
            "rule {} evaluates: {}",
            r["name"], r["lastError"]
        );
        for m in metric_names(r["query"].as_str().unwrap_or_default()) {
            assert!(
                names.contains(&m),
                "alert {} names {m}, which nothing exports",
                r["name"]
            );
        }
    }
    let firing = prom.api("/api/v1/alerts").await.expect("alerts");
    let firing: Vec<&serde_json::Value> = firing["alerts"]
        .as_array()
        .expect("alerts")
        .iter()
        .filter(|a| {
            a["state"] == "firing"
                || (a["state"] == "pending" && a["labels"]["alertname"] != "SluicePoolSaturated")
        })
        .collect();
    // Pending counts too: most rules wait minutes (`for:`) before they fire, longer than this
    // test runs. Except a pool's momentary wait, which a busy test machine gives: only five
    // minutes of it make that alert.
    assert!(
        firing.is_empty(),
        "alerts pending or firing on a healthy pipeline: {firing:?}"
    );
    drop(prom);
    drop(stack);
    redis_cleanup(REDIS, &prefix).await;
}
