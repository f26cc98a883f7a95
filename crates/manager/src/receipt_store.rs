//! Delivery receipts for a whole cluster: [`ReceiptStore`], the seam a store shared by
//! many nodes fills, and [`InMemoryReceipts`], the same rules in one process.
//!
//! A manager on its own keeps its users' receipts in memory and that is the whole truth.
//! A node of a cluster does too, and also writes each changed receipt to the store, at
//! most once per [`RECEIPT_FLUSH_INTERVAL`] per user (deliveries and acks in between are
//! coalesced into one write), so a receipt read on any node — the store's record merged
//! with the node's own — sees what every node's sockets did, at most about one flush
//! interval late.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agentwire_protocol::{Epoch, Seq, UserId};
use async_trait::async_trait;

use crate::broker::BrokerError;

/// How often a node of a cluster writes its changed receipts to the [`ReceiptStore`]: the
/// longest a delivery or an ack takes to be seen by the other nodes, beyond the store's
/// own round trip.
pub const RECEIPT_FLUSH_INTERVAL: Duration = Duration::from_secs(1);

/// One user's receipt as a [`ReceiptStore`] holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct StoredReceipt {
    /// The stream the seqs belong to.
    pub epoch: Epoch,
    /// The newest `seq` written to one of the user's sockets, on any node.
    pub delivered_seq: Seq,
    /// The newest `seq` one of the user's clients acknowledged, on any node.
    pub acked_seq: Seq,
}

impl StoredReceipt {
    /// A receipt of `epoch`.
    pub fn new(epoch: Epoch, delivered_seq: Seq, acked_seq: Seq) -> Self {
        StoredReceipt {
            epoch,
            delivered_seq,
            acked_seq,
        }
    }
}

/// A store of delivery receipts shared by the nodes of a cluster.
///
/// The rules, each checked by a property in `agentwire_manager::conformance` (feature
/// `conformance`) that every implementation runs:
///
/// 1. **Max only.** [`record`](Self::record) in the epoch the store holds keeps, for each
///    seq, the larger of the stored one and the recorded one: however records from many
///    nodes interleave, a seq never moves back.
/// 2. **Acked was delivered.** After any record, `delivered_seq >= acked_seq`.
/// 3. **A new epoch starts over.** A record in another epoch than the stored one replaces
///    the receipt with the record (the user's stream was reset).
/// 4. **Visibility.** A [`read`](Self::read) that starts after a `record` returned, through
///    any handle on the same store, sees it.
/// 5. **Expiry.** A receipt not recorded for [`ttl`](Self::ttl) may be forgotten (`read`
///    answers `None`), so the store stays bounded.
///
/// Errors are the broker's: a transient one ([`BrokerError::is_transient`]) means the
/// store could not be reached; nothing is known to have changed.
#[async_trait]
pub trait ReceiptStore: Send + Sync + std::fmt::Debug + 'static {
    /// How long a receipt is kept without a record (rule 5).
    fn ttl(&self) -> Duration;

    /// Records how far `user`'s clients got in `epoch` (rules 1–3).
    ///
    /// # Errors
    /// [`BrokerError`] when the store cannot answer.
    async fn record(&self, user: &UserId, receipt: &StoredReceipt) -> Result<(), BrokerError>;

    /// The user's receipt, `None` when the store has none (never recorded, or expired).
    ///
    /// # Errors
    /// [`BrokerError`] when the store cannot answer.
    async fn read(&self, user: &UserId) -> Result<Option<StoredReceipt>, BrokerError>;
}

/// Moves `stored` forward with `record` by rules 1–3.
pub(crate) fn merge(stored: Option<&StoredReceipt>, record: &StoredReceipt) -> StoredReceipt {
    let (mut delivered, mut acked) = (record.delivered_seq, record.acked_seq);
    if let Some(s) = stored.filter(|s| s.epoch == record.epoch) {
        delivered = delivered.max(s.delivered_seq);
        acked = acked.max(s.acked_seq);
    }
    StoredReceipt::new(record.epoch.clone(), delivered.max(acked), acked)
}

/// The receipt store of one process: the rules of [`ReceiptStore`] over a mutex, for
/// several managers in one process (tests, an embedder running many managers) and as the
/// model the shared stores are checked against. At most `max_users` receipts are kept (the
/// least recently recorded forgotten first). Time is tokio's clock.
#[derive(Debug, Clone)]
pub struct InMemoryReceipts {
    inner: Arc<Mutex<HashMap<UserId, (StoredReceipt, tokio::time::Instant)>>>,
    ttl: Duration,
    max_users: usize,
}

impl InMemoryReceipts {
    /// A store keeping each receipt `ttl` after its last record, at most `max_users`.
    pub fn new(ttl: Duration, max_users: usize) -> Self {
        InMemoryReceipts {
            inner: Arc::default(),
            ttl,
            max_users: max_users.max(1),
        }
    }

    fn lock(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<UserId, (StoredReceipt, tokio::time::Instant)>> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[async_trait]
impl ReceiptStore for InMemoryReceipts {
    fn ttl(&self) -> Duration {
        self.ttl
    }

    async fn record(&self, user: &UserId, receipt: &StoredReceipt) -> Result<(), BrokerError> {
        let now = tokio::time::Instant::now();
        let mut map = self.lock();
        let stored = map
            .get(user)
            .filter(|(_, at)| now.duration_since(*at) < self.ttl)
            .map(|(r, _)| r);
        let next = merge(stored, receipt);
        if !map.contains_key(user) && map.len() >= self.max_users {
            map.retain(|_, (_, at)| now.duration_since(*at) < self.ttl);
            if map.len() >= self.max_users {
                let oldest = map
                    .iter()
                    .min_by_key(|(_, (_, at))| *at)
                    .map(|(u, _)| u.clone());
                if let Some(oldest) = oldest {
                    map.remove(&oldest);
                }
            }
        }
        map.insert(user.clone(), (next, now));
        Ok(())
    }

    async fn read(&self, user: &UserId) -> Result<Option<StoredReceipt>, BrokerError> {
        let now = tokio::time::Instant::now();
        Ok(self
            .lock()
            .get(user)
            .filter(|(_, at)| now.duration_since(*at) < self.ttl)
            .map(|(r, _)| r.clone()))
    }
}
