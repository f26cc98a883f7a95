//! The publish API's per-key rate limit: a token bucket per API key, refilled at
//! `--publish-rate` events per second up to `--publish-burst`.
//!
//! One token is one event, so a batch of 50 costs 50. A request whose events do not fit
//! is refused whole (429) and costs nothing; its `Retry-After` says when they will fit. A
//! batch larger than the burst can never fit: it is refused too (429, without
//! `Retry-After`), whatever the bucket holds — letting it through at the cost of a full
//! bucket would let a key publish `max_batch / burst` times its rate. Buckets exist only
//! for configured keys (the key is checked first), so the map is bounded by the
//! configuration. The limit is per node: behind a load balancer a key's rate is the sum
//! over the nodes it reaches.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// Why [`RateLimiter::take`] refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    /// The events fit once the bucket has refilled for this long.
    Wait(Duration),
    /// More events than the bucket holds: they never fit at once.
    OverBurst {
        /// The bucket's size (`--publish-burst`).
        burst: u32,
    },
}

/// Token buckets, one per API key.
#[derive(Debug)]
pub(crate) struct RateLimiter {
    per_second: f64,
    burst: f64,
    burst_events: u32,
    buckets: Mutex<HashMap<usize, Bucket>>,
}

impl RateLimiter {
    /// Buckets refilled at `per_second` tokens up to `burst` (at least 1); `None` when
    /// `per_second` is 0 (no limit).
    pub(crate) fn new(per_second: u32, burst: u32) -> Option<Self> {
        (per_second > 0).then(|| RateLimiter {
            per_second: f64::from(per_second),
            burst: f64::from(burst.max(1)),
            burst_events: burst.max(1),
            buckets: Mutex::new(HashMap::new()),
        })
    }

    /// Takes `events` tokens from `key`'s bucket, or answers how long until they are
    /// there (at least a second: `Retry-After` counts whole seconds), or that they never
    /// fit at once.
    pub(crate) fn take(&self, key: usize, events: usize, now: Instant) -> Result<(), Refused> {
        if events > self.burst_events as usize {
            return Err(Refused::OverBurst {
                burst: self.burst_events,
            });
        }
        #[allow(clippy::cast_precision_loss)] // at most `burst` events: far below 2^52
        let cost = events as f64;
        let mut buckets = self
            .buckets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let bucket = buckets.entry(key).or_insert(Bucket {
            tokens: self.burst,
            at: now,
        });
        let elapsed = now.saturating_duration_since(bucket.at).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * self.per_second).min(self.burst);
        bucket.at = now;
        if bucket.tokens >= cost {
            bucket.tokens -= cost;
            return Ok(());
        }
        let wait = ((cost - bucket.tokens) / self.per_second).ceil().max(1.0);
        Err(Refused::Wait(Duration::from_secs_f64(wait)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_rate_means_no_limit() {
        assert!(RateLimiter::new(0, 10).is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn a_burst_passes_then_the_rate_applies() {
        let limiter = RateLimiter::new(10, 20).expect("limited");
        let now = Instant::now();
        assert_eq!(limiter.take(1, 15, now), Ok(()));
        assert_eq!(limiter.take(1, 5, now), Ok(()));
        // Empty: 10 events need a second.
        assert_eq!(
            limiter.take(1, 10, now),
            Err(Refused::Wait(Duration::from_secs(1)))
        );
        // Another key has its own bucket.
        assert_eq!(limiter.take(2, 20, now), Ok(()));
        let later = now + Duration::from_millis(500);
        assert_eq!(limiter.take(1, 5, later), Ok(()));
        assert_eq!(
            limiter.take(1, 1, later),
            Err(Refused::Wait(Duration::from_secs(1)))
        );
        // A refused request cost nothing: after 3 s the bucket is full again.
        let full = later + Duration::from_secs(3);
        assert_eq!(limiter.take(1, 20, full), Ok(()));
    }

    /// Issue 14: rate 10/s, burst 20 and batches of 100 let 50 events/s through when a
    /// batch cost only the burst.
    #[tokio::test(start_paused = true)]
    async fn a_batch_larger_than_the_burst_is_refused_and_costs_nothing() {
        let limiter = RateLimiter::new(10, 20).expect("limited");
        let now = Instant::now();
        let over = Err(Refused::OverBurst { burst: 20 });
        assert_eq!(limiter.take(0, 100, now), over);
        assert_eq!(limiter.take(0, 21, now + Duration::from_secs(60)), over);
        // The bucket is untouched: a full burst still passes.
        assert_eq!(limiter.take(0, 20, now), Ok(()));
        // Over a minute of batches of 100, nothing passes; at the burst, the rate holds.
        let mut passed = 0;
        for tick in 1..=60u64 {
            let at = now + Duration::from_secs(tick);
            if limiter.take(0, 100, at).is_ok() {
                passed += 100;
            }
            if limiter.take(0, 10, at).is_ok() {
                passed += 10;
            }
        }
        assert_eq!(passed, 600, "10 events/s for 60 s");
    }
}
