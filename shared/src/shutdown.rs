//! Graceful shutdown: one token cancelled on SIGTERM or SIGINT, watched by every loop.

use tokio_util::sync::CancellationToken;

/// Returns a token that is cancelled when the process receives SIGTERM or SIGINT (Ctrl-C).
/// A second signal exits at once, for an operator who does not want to wait.
pub fn on_signals() -> CancellationToken {
    let token = CancellationToken::new();
    let child = token.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("Shutdown signal received; finishing work in hand.");
        child.cancel();
        wait_for_signal().await;
        tracing::warn!("Second shutdown signal; exiting now.");
        std::process::exit(130);
    });
    token
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("Cannot install signal handlers; the daemon stops only when killed.");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

/// Runs `f` every `period` (the first time at once) until `stop` is cancelled; a run that
/// overruns delays the next instead of bunching them up. The loop of every background chore.
pub async fn every<F, Fut>(period: std::time::Duration, stop: CancellationToken, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.cancelled() => return,
        }
        f().await;
    }
}
