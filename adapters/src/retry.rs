//! Exponential backoff with jitter, for a source or the gateway being down.

use std::time::Duration;

/// Exponential backoff: `base · 2^n`, capped at `max`, each delay drawn
/// uniformly from its upper half (jitter, so that many agents restarted
/// together do not retry in lockstep).
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    /// A backoff starting at `base`, never waiting longer than `max`.
    pub fn new(base: Duration, max: Duration) -> Backoff {
        Backoff {
            base,
            max: max.max(base),
            attempt: 0,
        }
    }

    /// Failures since the last [`Backoff::reset`].
    pub fn attempts(&self) -> u32 {
        self.attempt
    }

    /// The next delay (and counts one more failure).
    pub fn next_delay(&mut self) -> Duration {
        let exp = self.base.saturating_mul(1u32 << self.attempt.min(20));
        let cap = exp.min(self.max);
        self.attempt = self.attempt.saturating_add(1);
        let half = cap / 2;
        let r = (uuid::Uuid::new_v4().as_u128() % 1_000_000) as u32;
        half + (cap - half).mul_f64(f64::from(r) / 1_000_000.0)
    }

    /// Sleeps for the next delay.
    pub async fn wait(&mut self) {
        tokio::time::sleep(self.next_delay()).await;
    }

    /// After a success.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_exponentially_with_jitter_and_caps() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        let d: Vec<Duration> = (0..8).map(|_| b.next_delay()).collect();
        for (n, x) in d.iter().enumerate() {
            let cap = Duration::from_millis(100 * (1 << n)).min(Duration::from_secs(2));
            assert!(
                *x >= cap / 2 && *x <= cap,
                "attempt {n}: {x:?} not in [{:?}, {cap:?}]",
                cap / 2
            );
        }
        assert_eq!(b.attempts(), 8);
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
    }
}
