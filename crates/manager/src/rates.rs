//! Publish rate limits per publisher: [`PublishRates`], the seam a limiter shared by the
//! nodes of a cluster fills, and [`InMemoryRates`], the same rule for one node.
//!
//! The rule is GCRA (the generic cell rate algorithm, a token bucket kept as one
//! timestamp): a publisher may publish `per_second` events per second on average and up to
//! `burst` at once. A request of `n` events is taken whole or refused whole (it then costs
//! nothing); a request of more than `burst` events can never be taken at once and is
//! refused as such, never let through at the cost of a full bucket (which would let a
//! publisher publish `batch / burst` times its rate).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use tokio::time::Instant;

use crate::broker::BrokerError;
use crate::runs::PublisherId;

/// A publisher's rate: `per_second` events per second, `burst` at once (at least 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PublishRate {
    /// Events per second on average (at least 1).
    pub per_second: u32,
    /// Events at once.
    pub burst: u32,
}

impl PublishRate {
    /// Time one event takes of the rate.
    pub fn emission_interval(&self) -> Duration {
        Duration::from_secs(1) / self.per_second.max(1)
    }
}

/// The answer to [`PublishRates::take`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RateDecision {
    /// The events are taken.
    Taken,
    /// The events fit after this long; nothing was taken.
    Wait(Duration),
    /// More events than `burst`: they never fit at once; nothing was taken.
    OverBurst {
        /// The burst.
        burst: u32,
    },
}

/// Publish rate limits, one per publisher, that may be shared by many nodes.
///
/// The rules, checked by `conformance::rates` on every implementation:
/// 1. **Burst.** A publisher unseen (or idle for `burst` intervals) may take `burst`
///    events at once; more than `burst` in one request is `OverBurst`, whatever the state.
/// 2. **Rate.** Over any span, a publisher is granted at most `burst + span × per_second`
///    events, however many nodes it asks through.
/// 3. **All or nothing.** A refused request takes nothing, and says how long until it
///    would fit (`Wait`).
/// 4. **Publishers apart.** One publisher's requests never change another's.
#[async_trait]
pub trait PublishRates: Send + Sync + std::fmt::Debug + 'static {
    /// Takes `events` events of `publisher`'s rate.
    ///
    /// # Errors
    /// [`BrokerError`] when a shared limiter cannot be reached; the caller answers 503.
    async fn take(
        &self,
        publisher: &PublisherId,
        events: usize,
        rate: PublishRate,
    ) -> Result<RateDecision, BrokerError>;
}

/// GCRA for one node: each publisher's theoretical arrival time behind a mutex. The map
/// holds one entry per publisher that asked (the server asks only for configured keys).
#[derive(Debug)]
pub struct InMemoryRates {
    tat: Mutex<HashMap<PublisherId, Instant>>,
}

impl Default for InMemoryRates {
    fn default() -> Self {
        InMemoryRates {
            tat: Mutex::new(HashMap::new()),
        }
    }
}

/// The GCRA step: with the publisher's theoretical arrival time `tat` (none: idle),
/// whether `events` fit at `now`, and the new `tat` if they do.
pub(crate) fn gcra(
    tat: Option<Instant>,
    now: Instant,
    events: usize,
    rate: PublishRate,
) -> Result<Instant, RateDecision> {
    let burst = rate.burst.max(1);
    if events > burst as usize {
        return Err(RateDecision::OverBurst { burst });
    }
    let t = rate.emission_interval();
    let events = u32::try_from(events).unwrap_or(u32::MAX);
    let tat = tat.map_or(now, |tat| tat.max(now));
    let new_tat = tat + t * events;
    let allow_at = new_tat.checked_sub(t * burst).unwrap_or(now);
    if allow_at > now {
        return Err(RateDecision::Wait(allow_at - now));
    }
    Ok(new_tat)
}

#[async_trait]
impl PublishRates for InMemoryRates {
    async fn take(
        &self,
        publisher: &PublisherId,
        events: usize,
        rate: PublishRate,
    ) -> Result<RateDecision, BrokerError> {
        let now = Instant::now();
        let mut tat = self.tat.lock().unwrap_or_else(|p| p.into_inner());
        match gcra(tat.get(publisher).copied(), now, events, rate) {
            Ok(new_tat) => {
                tat.insert(publisher.clone(), new_tat);
                Ok(RateDecision::Taken)
            }
            Err(refused) => Ok(refused),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_burst_passes_then_the_rate_applies() {
        let rates = InMemoryRates::default();
        let rate = PublishRate {
            per_second: 10,
            burst: 20,
        };
        let p = PublisherId::new("p").expect("id");
        let q = PublisherId::new("q").expect("id");
        let take = |who: &PublisherId, n| {
            let (rates, who) = (&rates, who.clone());
            async move { rates.take(&who, n, rate).await.expect("in memory") }
        };
        assert_eq!(take(&p, 15).await, RateDecision::Taken);
        assert_eq!(take(&p, 5).await, RateDecision::Taken);
        assert_eq!(
            take(&p, 10).await,
            RateDecision::Wait(Duration::from_secs(1))
        );
        assert_eq!(take(&q, 20).await, RateDecision::Taken);
        assert_eq!(take(&p, 21).await, RateDecision::OverBurst { burst: 20 });
        tokio::time::advance(Duration::from_millis(500)).await;
        assert_eq!(take(&p, 5).await, RateDecision::Taken);
        assert!(matches!(take(&p, 1).await, RateDecision::Wait(_)));
        tokio::time::advance(Duration::from_secs(3)).await;
        assert_eq!(take(&p, 20).await, RateDecision::Taken);
    }

    /// Rate 10/s, burst 20 and batches of 100 would let 50 events/s through if a batch
    /// cost only the burst: it is refused, costs nothing, and the rate holds.
    #[tokio::test(start_paused = true)]
    async fn a_batch_larger_than_the_burst_is_refused_and_costs_nothing() {
        let rates = InMemoryRates::default();
        let rate = PublishRate {
            per_second: 10,
            burst: 20,
        };
        let p = PublisherId::new("p").expect("id");
        let over = RateDecision::OverBurst { burst: 20 };
        assert_eq!(rates.take(&p, 100, rate).await.expect("mem"), over);
        assert_eq!(
            rates.take(&p, 20, rate).await.expect("mem"),
            RateDecision::Taken
        );
        let mut passed = 0;
        for _ in 0..60 {
            tokio::time::advance(Duration::from_secs(1)).await;
            if rates.take(&p, 100, rate).await.expect("mem") == RateDecision::Taken {
                passed += 100;
            }
            if rates.take(&p, 10, rate).await.expect("mem") == RateDecision::Taken {
                passed += 10;
            }
        }
        assert_eq!(passed, 600, "10 events/s for 60 s");
    }
}
