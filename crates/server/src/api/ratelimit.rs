//! The publish API's per-key rate limit: a token bucket per API key, refilled at
//! `--publish-rate` events per second up to `--publish-burst`.
//!
//! One token is one event, so a batch of 50 costs 50. A request whose events do not fit
//! is refused whole (429) and costs nothing; its `Retry-After` says when they will fit. A
//! batch larger than the burst costs the whole burst, so it waits for a full bucket rather
//! than never passing. Buckets exist only for configured keys (the key is checked first),
//! so the map is bounded by the configuration.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// Token buckets, one per API key.
#[derive(Debug)]
pub(crate) struct RateLimiter {
    per_second: f64,
    burst: f64,
    buckets: Mutex<HashMap<usize, Bucket>>,
}

impl RateLimiter {
    /// Buckets refilled at `per_second` tokens up to `burst` (at least 1); `None` when
    /// `per_second` is 0 (no limit).
    pub(crate) fn new(per_second: u32, burst: u32) -> Option<Self> {
        (per_second > 0).then(|| RateLimiter {
            per_second: f64::from(per_second),
            burst: f64::from(burst.max(1)),
            buckets: Mutex::new(HashMap::new()),
        })
    }

    /// Takes `events` tokens from `key`'s bucket, or answers how long until they are
    /// there (at least a second: `Retry-After` counts whole seconds).
    pub(crate) fn take(&self, key: usize, events: usize, now: Instant) -> Result<(), Duration> {
        #[allow(clippy::cast_precision_loss)] // a batch is far below 2^52 events
        let cost = (events as f64).min(self.burst);
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
        Err(Duration::from_secs_f64(wait))
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
        assert_eq!(limiter.take(1, 10, now), Err(Duration::from_secs(1)));
        // Another key has its own bucket.
        assert_eq!(limiter.take(2, 20, now), Ok(()));
        let later = now + Duration::from_millis(500);
        assert_eq!(limiter.take(1, 5, later), Ok(()));
        assert_eq!(limiter.take(1, 1, later), Err(Duration::from_secs(1)));
        // A refused request cost nothing: after 3 s the bucket is full again.
        let full = later + Duration::from_secs(3);
        assert_eq!(limiter.take(1, 20, full), Ok(()));
    }

    #[tokio::test(start_paused = true)]
    async fn a_batch_larger_than_the_burst_waits_for_a_full_bucket() {
        let limiter = RateLimiter::new(1, 5).expect("limited");
        let now = Instant::now();
        assert_eq!(limiter.take(0, 100, now), Ok(()));
        assert_eq!(limiter.take(0, 100, now), Err(Duration::from_secs(5)));
        assert_eq!(limiter.take(0, 100, now + Duration::from_secs(5)), Ok(()));
    }
}
