//! What a run measures: counters read from the daemons, the figures of a window and of an
//! erasure, and the views folds the maintenance worker logged.

use std::time::Instant;

use chrono::{DateTime, Utc};
use serde::Serialize;

/// Counters of the daemons at one instant.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub at: Instant,
    pub written: f64,
    pub accepted: f64,
    pub refused: u64,
    pub folds: f64,
    pub fold_seconds: f64,
}

/// One window's figures.
#[derive(Debug, Clone, Serialize)]
pub struct Window {
    pub seconds: f64,
    pub stored_per_sec: f64,
    pub accepted_per_sec: f64,
    pub refused_requests: u64,
    /// Scheduled views folds (every minute) that finished in the window, and their seconds.
    pub folds: f64,
    pub fold_seconds: f64,
}

/// A views fold, from the maintenance worker's log.
#[derive(Debug, Clone, Serialize)]
pub struct Fold {
    /// Seconds after the 202 it finished.
    pub finished: f64,
    pub seconds: f64,
    pub pending_rows_folded: i64,
    pub days_recomputed: i64,
}

/// The views folds of a JSON log that finished in `[from, from + seconds]`.
pub fn folds(log: &str, from: DateTime<Utc>, seconds: f64) -> Vec<Fold> {
    log.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["message"] == "Job done." && v["job"] == "views")
        .filter_map(|v| {
            let at = DateTime::parse_from_rfc3339(v["timestamp"].as_str()?).ok()?;
            let finished = (at.with_timezone(&Utc) - from).num_milliseconds() as f64 / 1000.0;
            let detail: serde_json::Value = match &v["detail"] {
                serde_json::Value::String(s) => serde_json::from_str(s).ok()?,
                other => other.clone(),
            };
            Some(Fold {
                finished,
                seconds: v["duration_ms"].as_f64()? / 1000.0,
                pending_rows_folded: detail["pending_rows_folded"].as_i64().unwrap_or(-1),
                days_recomputed: detail["days_recomputed"].as_i64().unwrap_or(-1),
            })
        })
        .filter(|f| (0.0..=seconds + 1.0).contains(&f.finished))
        .collect()
}

/// One erasure and the window around it.
#[derive(Debug, Clone, Serialize)]
pub struct Erasure {
    pub user: String,
    pub events_before: i64,
    pub days_before: i64,
    /// From the 202 to the first GET that answered `done`.
    pub seconds: f64,
    /// `finished_at - requested_at`, as the worker recorded them.
    pub server_seconds: f64,
    /// Each status or phase seen, with the seconds after the 202 it was first seen.
    pub phases: Vec<(String, f64)>,
    /// Events waiting in `summary_pending` when the summary phase began: the erasure's fold
    /// folds them too (scheduled folds wait while an erasure deletes).
    pub pending_at_summary: Option<i64>,
    pub removed: serde_json::Value,
    /// The scheduled views folds that finished between the 202 and `done` (the erasure's own fold,
    /// its summary phase, is not logged as a job).
    pub folds: Vec<Fold>,
    /// The erasure was not done within `--seconds`: the window went on until it was.
    pub extended: bool,
    pub window: Window,
}

/// The sum of every sample of `name` whose labels contain `labels` in a `/metrics` text.
pub fn metric(text: &str, name: &str, labels: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
        .filter(|l| l.contains(labels))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

pub fn window(a: &Snapshot, b: &Snapshot) -> Window {
    let secs = (b.at - a.at).as_secs_f64();
    Window {
        seconds: secs,
        stored_per_sec: (b.written - a.written) / secs,
        accepted_per_sec: (b.accepted - a.accepted) / secs,
        refused_requests: b.refused - a.refused,
        folds: b.folds - a.folds,
        fold_seconds: b.fold_seconds - a.fold_seconds,
    }
}

/// "queue 7.1, delete 0.4, ..." : the seconds spent in each status or phase.
pub fn phases_text(phases: &[(String, f64)]) -> String {
    phases
        .windows(2)
        .map(|w| format!("{} {:.1}", w[0].0, w[1].1 - w[0].1))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_are_read_by_name_and_labels() {
        let text = "sluice_maintenance_duration_seconds_sum{job=\"views\"} 2.5\n\
                    sluice_maintenance_duration_seconds_sum{job=\"analyze\"} 7\n\
                    sluice_maintenance_duration_seconds_count{job=\"views\"} 3\n\
                    sluice_events_written_total 120\n";
        let views = "job=\"views\"";
        assert_eq!(
            metric(text, "sluice_maintenance_duration_seconds_sum", views),
            2.5
        );
        assert_eq!(
            metric(text, "sluice_maintenance_duration_seconds_sum", ""),
            9.5
        );
        assert_eq!(metric(text, "sluice_events_written_total", ""), 120.0);
        assert_eq!(metric(text, "sluice_events_written", ""), 0.0);
    }

    #[test]
    fn phases_are_the_time_between_changes() {
        let p = [
            ("pending".to_owned(), 0.0),
            ("queue".to_owned(), 0.5),
            ("done".to_owned(), 9.75),
        ];
        assert_eq!(phases_text(&p), "pending 0.5, queue 9.2");
    }

    #[test]
    fn folds_are_read_from_the_json_log() {
        let from = DateTime::parse_from_rfc3339("2026-11-30T17:42:00Z")
            .expect("time")
            .with_timezone(&Utc);
        let log = concat!(
            r#"{"timestamp":"2026-11-30T17:42:04.5Z","message":"Job done.","job":"views","duration_ms":4689,"detail":"{\"days_recomputed\":0,\"pending_rows_folded\":14625}"}"#,
            "\n",
            r#"{"timestamp":"2026-11-30T17:42:05Z","message":"Job done.","job":"analyze","duration_ms":10,"detail":"{}"}"#,
            "\n",
            r#"{"timestamp":"2026-11-30T17:50:00Z","message":"Job done.","job":"views","duration_ms":10,"detail":"{}"}"#,
            "\nnot json\n",
        );
        let f = folds(log, from, 60.0);
        assert_eq!(f.len(), 1);
        assert_eq!(
            (f[0].finished, f[0].seconds, f[0].pending_rows_folded),
            (4.5, 4.689, 14625)
        );
    }
}
