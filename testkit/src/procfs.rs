//! Readers of `/proc` for tests and benchmarks: a process's memory and CPU time.

/// A field of `/proc/PID/status` in KiB (`VmRSS:`, `VmHWM:`), for tests and benchmarks.
pub fn proc_status_kib(pid: u32, field: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}
