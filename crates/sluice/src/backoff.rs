//! Defines the backoff policy: exponential growth, full jitter, a cap, and a reset that needs a
//! stable period. A plain value: it computes waits, the run loop sleeps.

use std::time::Duration;

/// Exponential backoff with full jitter.
///
/// The n-th wait (from 0) is uniform in `[0, min(max, initial · multiplierⁿ)]` ("full jitter":
/// reconnecting clients spread out instead of storming the server in step). The cap applies
/// before the jitter, so no wait exceeds `max`. [`Backoff::reset`] starts over; the run loop calls
/// it only after a session stayed up for `stable_after`, so a server that accepts and then fails
/// at once is not hammered every `initial`.
#[derive(Clone, Debug)]
pub struct Backoff {
    policy: BackoffPolicy,
    attempt: u32,
    rng: fastrand::Rng,
}

/// The numbers of a [`Backoff`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BackoffPolicy {
    /// The ceiling of the first wait.
    pub initial: Duration,
    /// The largest wait.
    pub max: Duration,
    /// Growth per attempt.
    pub multiplier: f64,
    /// How long a session must stay healthy before the backoff resets.
    pub stable_after: Duration,
}

impl Default for BackoffPolicy {
    fn default() -> Self {
        Self {
            initial: Duration::from_millis(500),
            max: Duration::from_secs(30),
            multiplier: 2.0,
            stable_after: Duration::from_secs(10),
        }
    }
}

impl Backoff {
    /// A backoff with a random seed.
    pub fn new(policy: BackoffPolicy) -> Self {
        Self {
            policy,
            attempt: 0,
            rng: fastrand::Rng::new(),
        }
    }

    /// A backoff with a fixed seed, for tests.
    pub fn with_seed(policy: BackoffPolicy, seed: u64) -> Self {
        Self {
            policy,
            attempt: 0,
            rng: fastrand::Rng::with_seed(seed),
        }
    }

    /// The ceiling of the next wait, before jitter.
    pub fn ceiling(&self) -> Duration {
        let factor = self
            .policy
            .multiplier
            .max(1.0)
            .powi(self.attempt.min(64) as i32);
        let ceiling = self.policy.initial.as_secs_f64() * factor;
        Duration::from_secs_f64(ceiling.min(self.policy.max.as_secs_f64()))
    }

    /// The next wait; each call counts one attempt.
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self.ceiling();
        self.attempt = self.attempt.saturating_add(1);
        ceiling.mul_f64(self.rng.f64())
    }

    /// How many waits were handed out since the last reset.
    pub fn attempts(&self) -> u32 {
        self.attempt
    }

    /// Starts over from `initial`.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    /// Resets if a session that started at `since` has been up for the stable period.
    pub fn reset_if_stable(&mut self, up_for: Duration) {
        if up_for >= self.policy.stable_after {
            self.reset();
        }
    }
}

impl Iterator for Backoff {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        Some(self.next_delay())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> BackoffPolicy {
        BackoffPolicy {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(1),
            multiplier: 2.0,
            stable_after: Duration::from_secs(10),
        }
    }

    #[test]
    fn ceilings_double_up_to_the_cap() {
        let mut backoff = Backoff::with_seed(policy(), 1);
        let mut ceilings = Vec::new();
        for _ in 0..6 {
            ceilings.push(backoff.ceiling().as_millis());
            backoff.next_delay();
        }
        assert_eq!(ceilings, [100, 200, 400, 800, 1000, 1000]);
    }

    #[test]
    fn every_wait_is_within_zero_and_its_ceiling() {
        let mut backoff = Backoff::with_seed(policy(), 7);
        for _ in 0..200 {
            let ceiling = backoff.ceiling();
            let wait = backoff.next_delay();
            assert!(wait <= ceiling && wait <= Duration::from_secs(1));
        }
    }

    #[test]
    fn full_jitter_spreads_waits_over_the_whole_range() {
        let mut low = 0;
        for seed in 0..200 {
            let mut backoff = Backoff::with_seed(policy(), seed);
            if backoff.next_delay() < Duration::from_millis(50) {
                low += 1;
            }
        }
        assert!(
            (60..140).contains(&low),
            "{low} of 200 waits below half the ceiling"
        );
    }

    #[test]
    fn the_same_seed_gives_the_same_sequence() {
        let a: Vec<_> = Backoff::with_seed(policy(), 3).take(10).collect();
        let b: Vec<_> = Backoff::with_seed(policy(), 3).take(10).collect();
        assert_eq!(a, b);
    }

    #[test]
    fn a_short_session_does_not_reset_the_backoff() {
        let mut backoff = Backoff::with_seed(policy(), 1);
        backoff.next_delay();
        backoff.next_delay();
        backoff.reset_if_stable(Duration::from_secs(1));
        assert_eq!(backoff.attempts(), 2);
        backoff.reset_if_stable(Duration::from_secs(10));
        assert_eq!(backoff.attempts(), 0);
        assert_eq!(backoff.ceiling(), Duration::from_millis(100));
    }
}
