//! The background tasks of a daemon (key refresh, queue depth, pool upkeep, schedules, ...),
//! watched: a task that ends or panics before its stop token is cancelled is logged, counted in
//! `sluice_background_task_deaths_total{task}`, and makes `/healthz` and `/readyz` answer 503,
//! so an orchestrator restarts the process instead of it running on without, say, key refresh.
//!
//! Architecture invariant: every long-lived task of a daemon is spawned through [`Tasks::spawn`].

use std::future::Future;
use std::sync::{Arc, Mutex};

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::metrics;

/// The watched tasks of one daemon; cheap to clone.
#[derive(Clone, Debug)]
pub struct Tasks {
    /// Cancelled when the tasks are meant to stop; a task ending after that is not a death.
    stop: CancellationToken,
    dead: Arc<Mutex<Vec<&'static str>>>,
}

impl Tasks {
    pub fn new(stop: CancellationToken) -> Self {
        Self {
            stop,
            dead: Arc::default(),
        }
    }

    /// Tasks recorded in the same place that stop on `stop` instead (a daemon's main work may
    /// stop before its chores).
    pub fn with_stop(&self, stop: CancellationToken) -> Self {
        Self {
            stop,
            dead: self.dead.clone(),
        }
    }

    /// The token the tasks stop on.
    pub fn stop_token(&self) -> CancellationToken {
        self.stop.clone()
    }

    /// Spawns `task` under `name`, watched. Returns a handle that ends when the task has ended
    /// and its end has been recorded.
    pub fn spawn<F>(&self, name: &'static str, task: F) -> JoinHandle<()>
    where
        F: Future<Output = ()> + Send + 'static,
    {
        metrics::task_watched(name);
        let handle = tokio::spawn(task);
        let me = self.clone();
        tokio::spawn(async move {
            let outcome = handle.await;
            if me.stop.is_cancelled() {
                return;
            }
            let why = match outcome {
                Ok(()) => "it returned".to_owned(),
                Err(e) if e.is_panic() => {
                    let p = e.into_panic();
                    let msg = p
                        .downcast_ref::<&str>()
                        .map(|s| (*s).to_owned())
                        .or_else(|| p.downcast_ref::<String>().cloned())
                        .unwrap_or_else(|| "a panic".to_owned());
                    format!("it panicked: {msg}")
                }
                Err(e) => e.to_string(),
            };
            tracing::error!(task = name, why = %why, "A background task died; this process reports itself unhealthy.");
            metrics::task_died(name);
            me.dead.lock().unwrap_or_else(|e| e.into_inner()).push(name);
        })
    }

    /// The tasks that died before their stop, in the order they died.
    pub fn dead(&self) -> Vec<&'static str> {
        self.dead.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn a_task_that_panics_or_returns_early_is_recorded_one_stopped_on_purpose_is_not() {
        let stop = CancellationToken::new();
        let tasks = Tasks::new(stop.clone());
        tasks
            .spawn("panics", async { panic!("boom") })
            .await
            .expect("watcher");
        tasks.spawn("returns", async {}).await.expect("watcher");
        assert_eq!(tasks.dead(), vec!["panics", "returns"]);
        let s = stop.clone();
        let w = tasks.spawn("loops", async move { s.cancelled().await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        stop.cancel();
        w.await.expect("watcher");
        assert_eq!(
            tasks.dead(),
            vec!["panics", "returns"],
            "a stop is no death"
        );
    }
}
