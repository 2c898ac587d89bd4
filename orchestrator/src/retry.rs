//! When to retry a failed message, on `backon` schedules.
//!
//! `backoff`, the crate the seeds used, is unmaintained (RUSTSEC-2025-0012);
//! `backon` is its maintained successor. A [`RetryPolicy`] is a
//! [`backon::BackoffBuilder`], so the same schedule drives message-level
//! retries (via the retry topic) and in-process retries with backon's `.retry()`.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};

/// The delays between attempts.
#[derive(Debug, Clone)]
pub enum Schedule {
    /// Explicit delays, one per retry; the last repeats when there are more retries.
    Steps(Vec<Duration>),
    /// backon's exponential backoff (with jitter if configured).
    Exponential(ExponentialBuilder),
}

/// How many times and how long apart a retryable failure is retried.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    max_retries: u32,
    schedule: Schedule,
}

/// What to do after a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryDecision {
    /// Try again after this delay.
    RetryAfter(Duration),
    /// Give up: dead-letter the message.
    GiveUp,
}

/// Multipliers of the base delay in the default schedule: 1 s, 5 s, 15 s.
const DEFAULT_STEPS: [u32; 3] = [1, 5, 15];

impl Default for RetryPolicy {
    /// Three retries after 1 s, 5 s and 15 s, then the dead-letter queue.
    fn default() -> Self {
        Self::scaled(3, Duration::from_secs(1))
    }
}

impl RetryPolicy {
    /// The default shape (1x, 5x, 15x the base delay) with `max_retries` retries.
    pub fn scaled(max_retries: u32, base_delay: Duration) -> Self {
        Self { max_retries, schedule: Schedule::Steps(DEFAULT_STEPS.iter().map(|m| base_delay * *m).collect()) }
    }

    /// Explicit delays; `max_retries` is their count.
    pub fn steps(delays: Vec<Duration>) -> Self {
        Self { max_retries: delays.len() as u32, schedule: Schedule::Steps(delays) }
    }

    /// backon's exponential schedule with `max_retries` retries.
    pub fn exponential(max_retries: u32, builder: ExponentialBuilder) -> Self {
        Self { max_retries, schedule: Schedule::Exponential(builder) }
    }

    /// Retries after the first attempt.
    pub fn max_retries(&self) -> u32 {
        self.max_retries
    }

    /// Attempts in all: the first plus the retries.
    pub fn max_attempts(&self) -> u32 {
        self.max_retries.saturating_add(1)
    }

    /// The schedule.
    pub fn schedule(&self) -> &Schedule {
        &self.schedule
    }

    /// Delay before retry number `retry` (1-based), `None` past the last retry.
    pub fn delay_before_retry(&self, retry: u32) -> Option<Duration> {
        if retry == 0 {
            return None;
        }
        self.build().nth(retry as usize - 1)
    }

    /// Decides after attempt `attempt` (1-based) of `max_attempts` failed.
    /// Permanent failures are never retried.
    pub fn decide(&self, attempt: u32, max_attempts: u32, retryable: bool) -> RetryDecision {
        if !retryable || attempt >= max_attempts {
            return RetryDecision::GiveUp;
        }
        // A message may allow more attempts than the schedule lists: keep the last delay.
        let delay = self
            .delay_before_retry(attempt)
            .or_else(|| self.delay_before_retry(self.max_retries))
            .unwrap_or(Duration::ZERO);
        RetryDecision::RetryAfter(delay)
    }
}

/// The iterator backon drives: the policy's delays, `max_retries` of them.
#[derive(Debug)]
pub struct RetryBackoff {
    remaining: u32,
    inner: Delays,
}

#[derive(Debug)]
enum Delays {
    Steps { delays: Vec<Duration>, next: usize },
    Exponential(backon::ExponentialBackoff),
}

impl Iterator for RetryBackoff {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        if self.remaining == 0 {
            return None;
        }
        self.remaining -= 1;
        match &mut self.inner {
            Delays::Steps { delays, next } => {
                let delay = delays.get(*next).or(delays.last()).copied();
                *next += 1;
                delay
            }
            Delays::Exponential(backoff) => backoff.next(),
        }
    }
}

impl BackoffBuilder for &RetryPolicy {
    type Backoff = RetryBackoff;

    fn build(self) -> RetryBackoff {
        let inner = match &self.schedule {
            Schedule::Steps(delays) => Delays::Steps { delays: delays.clone(), next: 0 },
            Schedule::Exponential(builder) => {
                Delays::Exponential(builder.with_max_times(self.max_retries as usize).build())
            }
        };
        RetryBackoff { remaining: self.max_retries, inner }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use backon::Retryable;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[test]
    fn default_schedule_is_1_5_15_seconds_then_give_up() {
        let policy = RetryPolicy::default();
        let delays: Vec<Duration> = (&policy).build().collect();
        assert_eq!(delays, [1, 5, 15].map(Duration::from_secs));
        assert_eq!(policy.max_attempts(), 4);
        assert_eq!(policy.decide(1, 4, true), RetryDecision::RetryAfter(Duration::from_secs(1)));
        assert_eq!(policy.decide(2, 4, true), RetryDecision::RetryAfter(Duration::from_secs(5)));
        assert_eq!(policy.decide(3, 4, true), RetryDecision::RetryAfter(Duration::from_secs(15)));
        assert_eq!(policy.decide(4, 4, true), RetryDecision::GiveUp);
    }

    #[test]
    fn permanent_errors_skip_retries() {
        let policy = RetryPolicy::default();
        assert_eq!(policy.decide(1, 4, false), RetryDecision::GiveUp);
    }

    #[test]
    fn message_max_attempts_caps_the_schedule() {
        let policy = RetryPolicy::default();
        assert_eq!(policy.decide(2, 3, true), RetryDecision::RetryAfter(Duration::from_secs(5)));
        assert_eq!(policy.decide(3, 3, true), RetryDecision::GiveUp);
        // More attempts than listed delays: the last delay repeats.
        assert_eq!(policy.decide(5, 8, true), RetryDecision::RetryAfter(Duration::from_secs(15)));
    }

    #[test]
    fn scaled_base_and_retry_count() {
        let policy = RetryPolicy::scaled(2, Duration::from_millis(200));
        let delays: Vec<Duration> = (&policy).build().collect();
        assert_eq!(delays, [200, 1000].map(Duration::from_millis));
    }

    #[test]
    fn exponential_schedule_comes_from_backon() {
        let builder = ExponentialBuilder::default().with_min_delay(Duration::from_millis(100)).with_factor(2.0);
        let policy = RetryPolicy::exponential(3, builder);
        // backon computes in f32: compare at millisecond precision.
        let delays: Vec<u128> = (&policy).build().map(|d| d.as_millis()).collect();
        assert_eq!(delays, [100, 200, 400]);
    }

    #[tokio::test(start_paused = true)]
    async fn drives_backon_in_process_retries() {
        let policy = RetryPolicy::default();
        let calls = AtomicU32::new(0);
        let result = (|| async { if calls.fetch_add(1, Ordering::SeqCst) < 2 { Err("flaky") } else { Ok(42) } })
            .retry(&policy)
            .await;
        assert_eq!(result, Ok(42));
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }
}
