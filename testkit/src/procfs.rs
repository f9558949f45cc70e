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
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = s.rsplit_once(')')?.1;
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}
