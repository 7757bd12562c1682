//! Retries, in three parts as Vector and nextest split them: [`Retriable`] classifies a failure
//! (each client implements it, and parses its own headers), [`Backoff`] is the iterator of
//! jittered delays (pure, seeded in tests), and [`retry`] is the one loop that sleeps between
//! attempts, bounded by attempts, a deadline and a shutdown signal.

use std::future::Future;
use std::time::{Duration, Instant};

use tokio::sync::watch;

/// How a request is retried.
#[derive(Clone, Debug)]
pub struct RetryPolicy {
    /// Attempts in all, the first included.
    pub max_attempts: u32,
    /// Total time one request may spend retrying, from its first attempt.
    pub deadline: Duration,
    /// The first delay (before jitter); doubles each time.
    pub base_delay: Duration,
    pub max_delay: Duration,
    /// Seed of the jitter; `None` seeds from the clock.
    pub jitter_seed: Option<u64>,
}

/// Delays between attempts: `base * 2^n`, capped at `max`, each drawn uniformly from
/// `[delay/2, delay]` ("equal jitter": never zero, never more than the cap).
pub struct Backoff {
    next: Duration,
    max: Duration,
    rng: fastrand::Rng,
}

impl Backoff {
    pub fn new(policy: &RetryPolicy, stream: u64) -> Backoff {
        let rng = match policy.jitter_seed {
            Some(seed) => fastrand::Rng::with_seed(seed ^ stream.wrapping_mul(0x9e37_79b9_7f4a_7c15)),
            None => fastrand::Rng::new(),
        };
        Backoff { next: policy.base_delay, max: policy.max_delay, rng }
    }
}

impl Iterator for Backoff {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        let delay = self.next.min(self.max);
        self.next = self.next.saturating_mul(2);
        let nanos = u64::try_from(delay.as_nanos()).unwrap_or(u64::MAX);
        let half = nanos / 2;
        Some(Duration::from_nanos(half + self.rng.u64(0..=nanos - half)))
    }
}

/// The wait before the next attempt: the backoff, or longer if the server asked for it
/// (`Retry-After`). `None` when the wait would pass the deadline: give up now.
pub fn next_wait(backoff: Duration, server_asked: Option<Duration>, remaining: Duration) -> Option<Duration> {
    let wait = server_asked.map_or(backoff, |asked| asked.max(backoff));
    (wait < remaining).then_some(wait)
}

/// A failure that may be worth another attempt.
pub trait Retriable: std::fmt::Display {
    /// Worth another attempt (timeouts, refused connections, 408, 429, 5xx...).
    fn is_retriable(&self) -> bool;
    /// How long the server asked to wait, if it did.
    fn retry_after(&self) -> Option<Duration>;
}

/// What [`retry`] came to.
pub struct Outcome<T, E> {
    /// Attempts made, the first included.
    pub attempts: u32,
    pub result: Result<T, E>,
    /// A shutdown signal cut the waiting short: the last failure stands, and is not the
    /// request's fault.
    pub cancelled: bool,
}

/// Runs `attempt` until it succeeds, fails for good, runs out of attempts or of `policy.deadline`,
/// or `shutdown` turns `Some` (a signal: no new attempt starts, a wait is cut short). `stream`
/// (a request number) tells apart the jitter of concurrent callers; the warnings say
/// `retrying <what>` with it.
pub async fn retry<T, E, F, Fut>(
    policy: &RetryPolicy,
    stream: u64,
    what: &str,
    shutdown: &mut watch::Receiver<Option<i32>>,
    mut attempt: F,
) -> Outcome<T, E>
where
    E: Retriable,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let started = Instant::now();
    let mut backoff = Backoff::new(policy, stream);
    let mut attempts = 0;
    loop {
        attempts += 1;
        let error = match attempt().await {
            Ok(value) => return Outcome { attempts, result: Ok(value), cancelled: false },
            Err(error) => error,
        };
        let remaining = policy.deadline.saturating_sub(started.elapsed());
        let wait = backoff.next().and_then(|delay| next_wait(delay, error.retry_after(), remaining));
        let wait = match wait {
            Some(wait) if error.is_retriable() && attempts < policy.max_attempts && shutdown.borrow().is_none() => wait,
            _ => return Outcome { attempts, result: Err(error), cancelled: false },
        };
        tracing::warn!(number = stream, attempt = attempts, delay_ms = wait.as_millis() as u64, error = %error, "retrying {what}");
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            _ = shutdown.changed() => return Outcome { attempts, result: Err(error), cancelled: true },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(seed: u64) -> RetryPolicy {
        RetryPolicy {
            max_attempts: 5,
            deadline: Duration::from_secs(60),
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_millis(1000),
            jitter_seed: Some(seed),
        }
    }

    #[test]
    fn delays_grow_exponentially_within_jitter_bounds_and_cap() {
        let delays: Vec<Duration> = Backoff::new(&policy(7), 0).take(6).collect();
        for (delay, nominal) in delays.iter().zip([100u64, 200, 400, 800, 1000, 1000]) {
            let nominal = Duration::from_millis(nominal);
            assert!(*delay >= nominal / 2 && *delay <= nominal, "{delay:?} not within jitter of {nominal:?}");
        }
    }

    #[test]
    fn seeded_jitter_is_repeatable_and_streams_differ() {
        let a: Vec<_> = Backoff::new(&policy(1), 3).take(4).collect();
        let b: Vec<_> = Backoff::new(&policy(1), 3).take(4).collect();
        let c: Vec<_> = Backoff::new(&policy(1), 4).take(4).collect();
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn server_wait_wins_and_the_deadline_bounds_it() {
        let ms = Duration::from_millis;
        assert_eq!(next_wait(ms(100), Some(ms(2000)), ms(5000)), Some(ms(2000)));
        assert_eq!(next_wait(ms(100), Some(ms(10)), ms(5000)), Some(ms(100)));
        assert_eq!(next_wait(ms(100), Some(ms(6000)), ms(5000)), None);
        assert_eq!(next_wait(ms(100), None, ms(50)), None);
    }
}
