//! The one retry policy of every daemon: exponential backoff with full jitter. Each delay is
//! drawn uniformly between zero and a ceiling that starts at `base` and doubles per attempt up to
//! `cap`, so replicas retrying the same outage spread out instead of arriving together. Whether
//! an error is worth retrying is the caller's question (`DbError::is_transient`, a Redis error's
//! kind); how long to wait is answered here.

use std::time::Duration;

use rand::Rng;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    ceiling: Duration,
}

impl Backoff {
    /// Delays up to `base` at first, doubling to at most `cap`.
    pub fn new(base: Duration, cap: Duration) -> Self {
        Self {
            base,
            cap: cap.max(base),
            ceiling: base,
        }
    }

    /// Waiting for a dependency (PostgreSQL, Redis) to come back: 100 ms doubling to 5 s.
    pub fn standard() -> Self {
        Self::new(Duration::from_millis(100), Duration::from_secs(5))
    }

    /// The next delay, and the ceiling doubles.
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = u64::try_from(self.ceiling.as_micros()).unwrap_or(u64::MAX);
        let delay = Duration::from_micros(rand::rng().random_range(0..=ceiling));
        self.ceiling = self.ceiling.saturating_mul(2).min(self.cap);
        delay
    }

    /// After a success: the next failure starts from `base` again.
    pub fn reset(&mut self) {
        self.ceiling = self.base;
    }

    /// Sleeps the next delay; `false` as soon as `stop` is cancelled (then the caller stops).
    pub async fn wait(&mut self, stop: &CancellationToken) -> bool {
        self.wait_at_most(stop, None).await
    }

    /// Sleeps the next delay, but not past `deadline`; `false` as soon as `stop` is cancelled.
    pub async fn wait_at_most(
        &mut self,
        stop: &CancellationToken,
        deadline: Option<tokio::time::Instant>,
    ) -> bool {
        let mut until = tokio::time::Instant::now() + self.next_delay();
        if let Some(d) = deadline {
            until = until.min(d);
        }
        tokio::select! {
            _ = tokio::time::sleep_until(until) => true,
            _ = stop.cancelled() => false,
        }
    }

    /// Sleeps the next delay, not past `deadline`, whatever else happens (for work that must go
    /// on during a shutdown's grace period).
    pub async fn sleep_at_most(&mut self, deadline: Option<tokio::time::Instant>) {
        let mut until = tokio::time::Instant::now() + self.next_delay();
        if let Some(d) = deadline {
            until = until.min(d);
        }
        tokio::time::sleep_until(until).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_stay_under_a_ceiling_that_doubles_to_the_cap_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(800));
        let ceilings = [100, 200, 400, 800, 800, 800];
        for _ in 0..200 {
            b.reset();
            for c in ceilings {
                assert!(b.next_delay() <= Duration::from_millis(c));
            }
        }
        // Jitter: the delays are spread, not all at the ceiling.
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(1));
        let delays: Vec<Duration> = (0..100).map(|_| b.next_delay()).collect();
        assert!(delays.iter().any(|d| *d < Duration::from_millis(500)));
        assert!(delays.iter().any(|d| *d > Duration::from_millis(500)));
        assert_eq!(
            Backoff::new(Duration::from_secs(2), Duration::from_secs(1)).cap,
            Duration::from_secs(2),
            "the cap is never below the base"
        );
    }

    #[tokio::test]
    async fn a_wait_ends_at_once_on_stop_and_at_its_deadline() {
        let stop = CancellationToken::new();
        let mut b = Backoff::new(Duration::from_secs(60), Duration::from_secs(60));
        let started = std::time::Instant::now();
        let deadline = tokio::time::Instant::now() + Duration::from_millis(50);
        b.sleep_at_most(Some(deadline)).await;
        assert!(
            b.wait_at_most(&stop, Some(deadline)).await,
            "deadline passed: no wait"
        );
        stop.cancel();
        assert!(!b.wait(&stop).await, "stopped");
        assert!(started.elapsed() < Duration::from_secs(5));
    }
}
