//! Readers of `/proc` for tests and benchmarks: a process's memory and CPU time.

/// A field of `/proc/PID/status` in KiB (`VmRSS:`, `VmHWM:`), for tests and benchmarks.
pub fn proc_status_kib(pid: u32, field: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// Peak resident memory of a process, from /proc (VmHWM), in MiB.
pub fn peak_rss_mib(pid: u32) -> Option<f64> {
    proc_status_kib(pid, "VmHWM:").map(|k| k as f64 / 1024.0)
}

/// Current resident memory of a process in MiB.
pub fn rss_mib(pid: u32) -> Option<f64> {
    proc_status_kib(pid, "VmRSS:").map(|k| k as f64 / 1024.0)
}

/// CPU seconds (user + system) a process has used, from /proc/PID/stat.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let f = stat_fields(&pid.to_string())?;
    Some((f.get(10)? + f.get(11)?) as f64 / 100.0)
}

/// The numeric fields of `/proc/PID/stat` after the command name and the state: the parent's
/// pid is [0], user and system time (clock ticks) [10] and [11], the exited children's [12] and
/// [13].
fn stat_fields(pid: &str) -> Option<Vec<u64>> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = s.rsplit_once(')')?.1;
    Some(
        after
            .split_whitespace()
            .skip(1)
            .map(|f| f.parse().unwrap_or(0))
            .collect(),
    )
}

/// CPU seconds every PostgreSQL server process on this machine has used, the exited ones
/// included: each live `postgres` process's user and system time, plus, for each postmaster
/// (a `postgres` whose parent is not one), the time of its children that have exited (backends
/// closed, autovacuum workers done). The difference across a phase is what PostgreSQL spent
/// on it, whatever backends came and went.
pub fn postgres_cpu_seconds() -> f64 {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0.0;
    };
    let comm = |pid: &str| std::fs::read_to_string(format!("/proc/{pid}/comm")).ok();
    let is_postgres = |pid: &str| comm(pid).is_some_and(|c| c.trim_end() == "postgres");
    let mut ticks = 0u64;
    for entry in dir.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .filter(|p| p.bytes().all(|b| b.is_ascii_digit()))
        else {
            continue;
        };
        if !is_postgres(pid) {
            continue;
        }
        let Some(f) = stat_fields(pid) else { continue };
        ticks += f.get(10).copied().unwrap_or(0) + f.get(11).copied().unwrap_or(0);
        let parent = f.first().map(u64::to_string).unwrap_or_default();
        if !is_postgres(&parent) {
            ticks += f.get(12).copied().unwrap_or(0) + f.get(13).copied().unwrap_or(0);
        }
    }
    ticks as f64 / 100.0
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    #[test]
    fn stat_fields_start_with_the_parent_and_cpu_time_grows_with_work() {
        let me = std::process::id();
        let fields = super::stat_fields(&me.to_string()).expect("own stat");
        assert_eq!(fields[0], u64::from(std::os::unix::process::parent_id()));
        let before = super::cpu_seconds(me).expect("own cpu time");
        let started = Instant::now();
        let mut spin = 0u64;
        // Until the clock ticks have moved (they count in hundredths), at most 10 s.
        while super::cpu_seconds(me).expect("own cpu time") < before + 0.05 {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "cpu time never grew"
            );
            for _ in 0..100_000 {
                spin = std::hint::black_box(spin.wrapping_add(1));
            }
        }
    }
}
