//! [`RedisReceipts`]: the users' delivery receipts for every node sharing a Redis — one
//! HASH per user under the user's hash tag, moved forward by one script
//! (`lua/receipts.lua`) that keeps each seq the larger of the stored and the recorded.

use std::time::Duration;

use agentwire_manager::{BrokerError, ReceiptStore, StoredReceipt};
use agentwire_protocol::{Epoch, Seq, UserId};
use async_trait::async_trait;
use redis::Value;

use crate::broker::RedisBroker;
use crate::runs::text;
use crate::script::Malformed;

/// The [`ReceiptStore`] on Redis, made by [`RedisBroker::receipts`]: it shares the broker's
/// connection and key prefix. A receipt is kept the broker's
/// [`stream_idle_ttl`](crate::RedisConfig::stream_idle_ttl) after its last record, like the
/// user's stream.
#[derive(Debug, Clone)]
pub struct RedisReceipts {
    broker: RedisBroker,
}

impl RedisBroker {
    /// The receipt store on this broker's Redis.
    pub fn receipts(&self) -> RedisReceipts {
        RedisReceipts {
            broker: self.clone(),
        }
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn seq(v: &Value) -> Option<Seq> {
    text(v)?.parse().ok().map(Seq)
}

#[async_trait]
impl ReceiptStore for RedisReceipts {
    fn ttl(&self) -> Duration {
        self.broker.inner().config.stream_idle_ttl
    }

    async fn record(&self, user: &UserId, receipt: &StoredReceipt) -> Result<(), BrokerError> {
        let inner = self.broker.inner();
        let key = self.broker.user_keys(user).receipt;
        let mut call = inner.scripts.receipts.prepare_invoke();
        call.key(&key)
            .arg(receipt.epoch.as_str())
            .arg(receipt.delivered_seq.get())
            .arg(receipt.acked_seq.get())
            .arg(millis(self.ttl()));
        let _: Value = self
            .broker
            .round_trip("receipt record", inner.commands.invoke(&call))
            .await?;
        Ok(())
    }

    async fn read(&self, user: &UserId) -> Result<Option<StoredReceipt>, BrokerError> {
        let inner = self.broker.inner();
        let key = self.broker.user_keys(user).receipt;
        let reply: Vec<Value> = self
            .broker
            .round_trip(
                "receipt read",
                inner
                    .commands
                    .query(redis::cmd("HMGET").arg(&key).arg("e").arg("d").arg("a")),
            )
            .await?;
        let malformed = || {
            self.broker.malformed(Malformed {
                what: "receipt read reply",
            })
        };
        match reply.as_slice() {
            [Value::Nil, ..] => Ok(None),
            [e, d, a] => {
                let epoch = text(e)
                    .and_then(|e| Epoch::new(&e).ok())
                    .ok_or_else(malformed)?;
                let (d, a) = seq(d).zip(seq(a)).ok_or_else(malformed)?;
                Ok(Some(StoredReceipt::new(epoch, d, a)))
            }
            _ => Err(malformed()),
        }
    }
}
