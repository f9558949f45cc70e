//! What a phase cost: the CPU seconds of the server process and of Redis around it, and the
//! Redis memory its queued events took.

use bench::load;
use testkit::cpu_seconds;

/// What a phase cost the server and Redis, beside its load figures.
pub struct Metered {
    pub load: load::LoadResult,
    pub server_cpu: f64,
    pub redis_cpu: f64,
    pub redis_bytes: f64,
}

impl Metered {
    pub fn per_million(&self, cpu: f64) -> f64 {
        cpu / (self.load.events_accepted.max(1) as f64 / 1e6)
    }

    /// The server's and Redis's CPU seconds per million events accepted, together.
    pub fn total_per_million(&self) -> f64 {
        self.per_million(self.server_cpu + self.redis_cpu)
    }

    pub fn row(&self, name: &str) -> Vec<String> {
        let mut row = self.load.row(name);
        row.push(format!("{:.2}", self.per_million(self.server_cpu)));
        row.push(format!("{:.2}", self.per_million(self.redis_cpu)));
        row.push(format!(
            "{:.0}",
            self.redis_bytes / self.load.events_accepted.max(1) as f64
        ));
        row
    }

    pub fn summary(&self) -> serde_json::Value {
        let r = &self.load;
        serde_json::json!({
            "events_per_sec": r.events_per_sec(),
            "requests_per_sec": r.requests_per_sec(),
            "p50_ms": r.p(50.0).as_secs_f64() * 1000.0,
            "p99_ms": r.p(99.0).as_secs_f64() * 1000.0,
            "failures": r.failures,
            "server_cpu_s_per_million": self.per_million(self.server_cpu),
            "redis_cpu_s_per_million": self.per_million(self.redis_cpu),
            "redis_bytes_per_event": self.redis_bytes / r.events_accepted.max(1) as f64,
        })
    }
}

/// The run with the median events/s.
pub fn median(mut runs: Vec<Metered>) -> Metered {
    runs.sort_by(|a, b| a.load.events_per_sec().total_cmp(&b.load.events_per_sec()));
    runs.swap_remove(runs.len() / 2)
}

/// `min-max` of the runs' events/s.
pub fn spread(runs: &[Metered]) -> String {
    let rates: Vec<f64> = runs.iter().map(|m| m.load.events_per_sec()).collect();
    format!(
        "{:.0}-{:.0}",
        rates.iter().copied().fold(f64::INFINITY, f64::min),
        rates.iter().copied().fold(0.0, f64::max)
    )
}

pub struct Meter {
    pub redis: u32,
    pub prefix: String,
}

impl Meter {
    pub async fn new(prefix: &str) -> anyhow::Result<Self> {
        Ok(Self {
            redis: redis_pid().await?,
            prefix: prefix.to_owned(),
        })
    }

    /// Runs one phase against the server process `server`, reading its and Redis's CPU time and
    /// Redis's memory around it, then empties the queue so the next phase starts from the same
    /// Redis.
    pub async fn phase(
        &self,
        server: u32,
        run: impl std::future::Future<Output = load::LoadResult>,
    ) -> Metered {
        let (g0, r0, m0) = (
            cpu_seconds(server).unwrap_or(0.0),
            cpu_seconds(self.redis).unwrap_or(0.0),
            redis_used_memory().await,
        );
        let load = run.await;
        let (g1, r1, m1) = (
            cpu_seconds(server).unwrap_or(0.0),
            cpu_seconds(self.redis).unwrap_or(0.0),
            redis_used_memory().await,
        );
        self.clear().await;
        Metered {
            load,
            server_cpu: g1 - g0,
            redis_cpu: r1 - r0,
            redis_bytes: (m1 - m0).max(0.0),
        }
    }

    /// Deletes the queued events between phases, so Redis memory stays small.
    pub async fn clear(&self) {
        testkit::redis_cleanup("redis://127.0.0.1:6379/", &self.prefix).await
    }
}

async fn redis_info(field: &str) -> Option<String> {
    let client = redis::Client::open("redis://127.0.0.1:6379/").ok()?;
    let mut conn = client.get_multiplexed_async_connection().await.ok()?;
    let info: String = redis::cmd("INFO")
        .arg("ALL")
        .query_async(&mut conn)
        .await
        .ok()?;
    info.lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .map(|v| v.trim().to_owned())
}

async fn redis_pid() -> anyhow::Result<u32> {
    redis_info("process_id")
        .await
        .and_then(|p| p.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("cannot read Redis's process id from INFO"))
}

async fn redis_used_memory() -> f64 {
    redis_info("used_memory")
        .await
        .and_then(|m| m.parse().ok())
        .unwrap_or(0.0)
}
