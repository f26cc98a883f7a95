//! [`RedisRates`]: publish rate limits shared by every node of a Redis — GCRA in one
//! script (`lua/rate.lua`) per request, on a key of the publisher's own.

use std::time::Duration;

use agentwire_manager::{BrokerError, PublishRate, PublishRates, PublisherId, RateDecision};
use async_trait::async_trait;
use redis::Value;

use crate::broker::RedisBroker;
use crate::keys::rate_key;
use crate::metrics::bump;
use crate::runs::text;
use crate::script::Malformed;

/// The [`PublishRates`] limiter on Redis, made by [`RedisBroker::rates`]: each publisher's
/// theoretical arrival time is one key, `<prefix>{%rate:<publisher>}:tat` (the publisher
/// escaped as user ids are, so it is its own hash tag and publishers spread over a
/// cluster), read and moved by one script call per request with Redis's clock, so the
/// rate holds across nodes whatever their clocks. Counted in `rate_refused`.
#[derive(Debug, Clone)]
pub struct RedisRates {
    broker: RedisBroker,
}

impl RedisBroker {
    /// The publish rate limiter on this broker's Redis, shared by every node using it.
    pub fn rates(&self) -> RedisRates {
        RedisRates {
            broker: self.clone(),
        }
    }
}

#[async_trait]
impl PublishRates for RedisRates {
    async fn take(
        &self,
        publisher: &PublisherId,
        events: usize,
        rate: PublishRate,
    ) -> Result<RateDecision, BrokerError> {
        let burst = rate.burst.max(1);
        if events > burst as usize {
            return Ok(RateDecision::OverBurst { burst });
        }
        let inner = self.broker.inner();
        let mut call = inner.scripts.rate.prepare_invoke();
        call.key(rate_key(&inner.config.key_prefix, publisher.as_str()))
            .arg(events)
            .arg(rate.per_second.max(1))
            .arg(burst);
        let reply: Value = self
            .broker
            .round_trip("rate", inner.commands.invoke(&call))
            .await?;
        let bad = || self.broker.malformed(Malformed { what: "rate reply" });
        let Value::Array(items) = reply else {
            return Err(bad());
        };
        let decision = match items.first().and_then(text).as_deref() {
            Some("taken") => RateDecision::Taken,
            Some("over") => RateDecision::OverBurst { burst },
            Some("wait") => {
                let micros: u64 = items
                    .get(1)
                    .and_then(text)
                    .and_then(|t| t.parse().ok())
                    .ok_or_else(bad)?;
                RateDecision::Wait(Duration::from_micros(micros))
            }
            _ => return Err(bad()),
        };
        if decision != RateDecision::Taken {
            bump(&inner.counters.rate_refused);
        }
        Ok(decision)
    }
}
