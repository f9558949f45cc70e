//! CPU time spent by PostgreSQL (every server process, exited ones included) and by this
//! process over a phase of a benchmark: what each way of storing the same rows costs the
//! machine, beside how long it took.

use std::future::Future;
use std::time::Duration;

/// What a phase took: wall time, PostgreSQL's CPU seconds, this process's CPU seconds.
#[derive(Debug, Clone, Copy)]
pub struct Spent {
    pub took: Duration,
    pub postgres_cpu: f64,
    pub own_cpu: f64,
}

impl Spent {
    /// Microseconds of PostgreSQL CPU per row, over `rows`.
    pub fn postgres_us_per_row(&self, rows: usize) -> f64 {
        self.postgres_cpu * 1e6 / rows.max(1) as f64
    }

    /// Microseconds of this process's CPU per row, over `rows`.
    pub fn own_us_per_row(&self, rows: usize) -> f64 {
        self.own_cpu * 1e6 / rows.max(1) as f64
    }
}

fn own_cpu() -> f64 {
    testkit::cpu_seconds(std::process::id()).unwrap_or(0.0)
}

/// Runs `phase`, which returns its own timing (the part it times, without its setup), and adds
/// the CPU PostgreSQL and this process spent over the whole of it, its setup (a fresh database
/// and connections, when the phase makes them) included.
pub async fn measure<F, E>(phase: F) -> Result<Spent, E>
where
    F: Future<Output = Result<Duration, E>>,
{
    let (pg, own) = (testkit::postgres_cpu_seconds(), own_cpu());
    let took = phase.await?;
    Ok(Spent {
        took,
        postgres_cpu: testkit::postgres_cpu_seconds() - pg,
        own_cpu: own_cpu() - own,
    })
}
