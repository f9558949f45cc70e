//! The progress line of a load on the terminal: elapsed time, events accepted, current rate.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A progress line on the terminal: elapsed time, events accepted and the current rate.
pub struct Progress {
    pub(super) accepted: Arc<AtomicU64>,
    bar: indicatif::ProgressBar,
    ticker: tokio::task::JoinHandle<()>,
}

impl Progress {
    pub fn spawn(duration: Duration) -> Self {
        let bar = indicatif::ProgressBar::new(duration.as_secs().max(1));
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{elapsed_precise} [{bar:40}] {pos}/{len} s  {msg}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        let accepted = Arc::new(AtomicU64::new(0));
        let (a, b) = (accepted.clone(), bar.clone());
        let started = Instant::now();
        let ticker = tokio::spawn(async move {
            let mut last = (0u64, Instant::now());
            loop {
                tokio::time::sleep(Duration::from_millis(500)).await;
                let now = a.load(Ordering::Relaxed);
                let rate = (now - last.0) as f64 / last.1.elapsed().as_secs_f64();
                last = (now, Instant::now());
                b.set_position(started.elapsed().as_secs());
                b.set_message(format!("{now} events accepted, {rate:.0}/s"));
            }
        });
        Self {
            accepted,
            bar,
            ticker,
        }
    }

    pub fn finish(&self) {
        self.ticker.abort();
        self.bar.finish();
    }
}
