//! The scheduler: one task per job, each sleeping until its cron expression's next time (UTC),
//! then running the job if this replica leads. A job's task runs it to the end before computing
//! its next time, so a job never overlaps itself; a failure is logged and counted, and the next
//! run still happens.

use std::sync::Arc;

use chrono::Utc;
use croner::Cron;
use shared::tasks::Tasks;
use tokio_util::sync::CancellationToken;

use crate::config::Schedules;
use crate::jobs::{self, Job, JobCtx};
use crate::leader::Leadership;

pub fn schedule_of(s: &Schedules, job: Job) -> &Cron {
    match job {
        Job::Partitions => &s.partitions.cron,
        Job::Retention => &s.retention.cron,
        Job::Views => &s.refresh_views.cron,
        Job::Analyze => &s.analyze.cron,
        Job::Vacuum => &s.vacuum.cron,
        Job::Dedupe => &s.dedupe_prune.cron,
    }
}

/// Runs every job on its schedule until `stop`. The partitions job also runs each time this
/// replica becomes leader, so a fresh leader never waits an hour for missing partitions.
pub fn spawn(
    schedules: Schedules,
    ctx: JobCtx,
    leader: Leadership,
    watched: &Tasks,
) -> Vec<tokio::task::JoinHandle<()>> {
    let ctx = Arc::new(ctx);
    let stop = watched.stop_token();
    let mut tasks: Vec<_> = Job::ALL
        .iter()
        .map(|job| {
            let cron = schedule_of(&schedules, *job).clone();
            watched.spawn(
                job.name(),
                job_loop(*job, cron, ctx.clone(), leader.clone(), stop.clone()),
            )
        })
        .collect();
    let (ctx2, leader2, stop2) = (ctx.clone(), leader.clone(), stop.clone());
    tasks.push(watched.spawn("partitions_on_leadership", async move {
        loop {
            tokio::select! {
                _ = leader2.gained() => {}
                _ = stop2.cancelled() => return,
            }
            let _ = jobs::run(Job::Partitions, &ctx2).await;
        }
    }));
    tasks
}

async fn job_loop(
    job: Job,
    cron: Cron,
    ctx: Arc<JobCtx>,
    leader: Leadership,
    stop: CancellationToken,
) {
    loop {
        let now = Utc::now();
        let Ok(next) = cron.find_next_occurrence(&now, false) else {
            tracing::error!(
                job = job.name(),
                "The schedule has no next time; the job stops."
            );
            return;
        };
        let wait = (next - now).to_std().unwrap_or_default();
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.cancelled() => return,
        }
        if !leader.is_leader() {
            continue;
        }
        // Errors are logged and counted inside; the loop goes on to the next time.
        let _ = jobs::run(job, &ctx).await;
    }
}
