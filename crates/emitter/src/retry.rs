//! `RetryPolicy`: how often and how patiently an emitter retries a transient failure.
//!
//! What it is not: the retry loop. The loop is `backon`'s; this type only holds the
//! configuration and turns it into a `backon` backoff.

use std::time::Duration;

use backon::ExponentialBuilder;

/// Retries with exponential backoff and full jitter, for transient broker errors only
/// ([`agentwire_manager::EmitError::is_transient`]); a permanent error fails at once.
///
/// The n-th retry (n = 1, 2, …) waits `min(base_delay × 2^(n-1), max_delay)` plus a
/// random jitter of up to the same amount again, so concurrent emitters that failed
/// together do not retry together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Most publish attempts per event, the first included (default 5). `1` disables
    /// retries; `0` is treated as `1`.
    pub max_attempts: u32,
    /// Delay before the first retry, before jitter (default 100 ms).
    pub base_delay: Duration,
    /// Longest delay between two attempts, before jitter (default 2 s).
    pub max_delay: Duration,
    /// Whether to add jitter (default `true`).
    pub jitter: bool,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 5,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(2),
            jitter: true,
        }
    }
}

impl RetryPolicy {
    /// A policy that tries each event once.
    pub fn no_retry() -> Self {
        RetryPolicy {
            max_attempts: 1,
            ..RetryPolicy::default()
        }
    }

    /// The `backon` backoff for this policy.
    pub(crate) fn backoff(&self) -> ExponentialBuilder {
        let retries = usize::try_from(self.max_attempts.max(1) - 1).unwrap_or(usize::MAX);
        let builder = ExponentialBuilder::default()
            .with_factor(2.0)
            .with_min_delay(self.base_delay)
            .with_max_delay(self.max_delay.max(self.base_delay))
            .with_max_times(retries);
        if self.jitter {
            builder.with_jitter()
        } else {
            builder
        }
    }
}

#[cfg(test)]
mod tests {
    use backon::BackoffBuilder;

    use super::*;

    fn delays(policy: RetryPolicy) -> Vec<Duration> {
        policy.backoff().build().collect()
    }

    fn close(a: Duration, b: Duration) -> bool {
        a.abs_diff(b) < Duration::from_micros(10)
    }

    #[test]
    fn delays_double_up_to_the_maximum_without_jitter() {
        let got = delays(RetryPolicy {
            max_attempts: 6,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_millis(500),
            jitter: false,
        });
        let want = [100, 200, 400, 500, 500].map(Duration::from_millis);
        assert_eq!(got.len(), want.len());
        for (g, w) in got.iter().zip(want) {
            assert!(close(*g, w), "{got:?}");
        }
    }

    #[test]
    fn jitter_adds_at_most_the_delay_again() {
        let policy = RetryPolicy {
            max_attempts: 4,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(10),
            jitter: true,
        };
        for _ in 0..50 {
            let got = delays(policy);
            assert_eq!(got.len(), 3);
            for (g, nominal) in got.iter().zip([100, 200, 400].map(Duration::from_millis)) {
                assert!(
                    *g + Duration::from_micros(10) >= nominal && *g <= nominal * 2,
                    "{got:?}"
                );
            }
        }
    }

    #[test]
    fn one_attempt_or_zero_means_no_retry() {
        assert!(delays(RetryPolicy::no_retry()).is_empty());
        assert!(
            delays(RetryPolicy {
                max_attempts: 0,
                ..RetryPolicy::default()
            })
            .is_empty()
        );
    }
}
