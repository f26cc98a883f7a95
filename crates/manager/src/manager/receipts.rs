//! Delivery receipts: per user, the newest `seq` written to at least one of the user's
//! sockets (`delivered_seq`, reported by the server's writer after a flush) and the newest
//! `seq` a client acknowledged (`acked_seq`, from `ack` frames, never past what that
//! connection was sent), in the user's current epoch. They outlive connections (a
//! reconnect keeps them) and are bounded: at most `ManagerConfig::max_receipt_users` users,
//! the least recently updated forgotten first. A node knows what its own sockets did.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::{Mutex, MutexGuard};

use agentwire_protocol::{Epoch, Seq, UserId};
use foldhash::HashMap;
use std::hash::BuildHasher;
use tokio::sync::Notify;
use tokio::time::Instant;

use super::UnifiedWebSocketManager;

const SHARDS: usize = 16;

/// What a user's receipt says: how far the user's clients got in `epoch`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct DeliveryReceipt {
    /// The stream the seqs belong to (`None` until something was written or acked).
    pub epoch: Option<Epoch>,
    /// The newest `seq` written (and flushed) to at least one of the user's sockets on
    /// this node.
    pub delivered_seq: Seq,
    /// The newest `seq` one of the user's clients acknowledged on this node.
    pub acked_seq: Seq,
}

#[derive(Debug)]
struct Receipt {
    epoch: Option<Epoch>,
    delivered: Seq,
    acked: Seq,
    touched: Instant,
    changed: Arc<Notify>,
}

/// Every user's receipt on one node.
#[derive(Debug)]
pub(crate) struct Receipts {
    shards: Box<[Mutex<HashMap<UserId, Receipt>>]>,
    hasher: foldhash::fast::RandomState,
}

impl Default for Receipts {
    fn default() -> Self {
        Receipts {
            shards: (0..SHARDS)
                .map(|_| Mutex::new(HashMap::default()))
                .collect(),
            hasher: Default::default(),
        }
    }
}

impl Receipts {
    fn shard(&self, user: &UserId) -> MutexGuard<'_, HashMap<UserId, Receipt>> {
        let i = (self.hasher.hash_one(user) as usize) % SHARDS;
        self.shards[i].lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Users with a receipt.
    pub(crate) fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).len())
            .sum()
    }
}

impl UnifiedWebSocketManager {
    /// Runs `f` on the user's receipt, creating it first (and making room) when `create`.
    fn with_receipt<T>(
        &self,
        user: &UserId,
        create: bool,
        f: impl FnOnce(&mut Receipt) -> T,
    ) -> Option<T> {
        let receipts = &self.inner.receipts;
        let mut shard = receipts.shard(user);
        if let Some(r) = shard.get_mut(user) {
            return Some(f(r));
        }
        if !create {
            return None;
        }
        let room = (self.inner.config.max_receipt_users / SHARDS).max(1);
        if shard.len() >= room {
            let oldest = shard
                .iter()
                .min_by_key(|(_, r)| r.touched)
                .map(|(u, _)| u.clone());
            if let Some(oldest) = oldest {
                shard.remove(&oldest);
                self.inner
                    .counters
                    .receipts_evicted
                    .fetch_add(1, Ordering::Relaxed);
            }
        }
        let r = shard.entry(user.clone()).or_insert_with(|| Receipt {
            epoch: None,
            delivered: Seq::ZERO,
            acked: Seq::ZERO,
            touched: Instant::now(),
            changed: Arc::new(Notify::new()),
        });
        Some(f(r))
    }

    /// Moves the user's receipt forward in `epoch` (a new epoch starts it over).
    pub(crate) fn record_receipt(
        &self,
        user: &UserId,
        epoch: &Epoch,
        delivered: Option<Seq>,
        acked: Option<Seq>,
    ) {
        let changed = self.with_receipt(user, true, |r| {
            if r.epoch.as_ref() != Some(epoch) {
                r.epoch = Some(epoch.clone());
                r.delivered = Seq::ZERO;
                r.acked = Seq::ZERO;
            }
            let before = (r.delivered, r.acked);
            if let Some(d) = delivered {
                r.delivered = r.delivered.max(d);
            }
            if let Some(a) = acked {
                r.acked = r.acked.max(a);
                // What a client acknowledged reached it.
                r.delivered = r.delivered.max(a);
            }
            r.touched = Instant::now();
            ((r.delivered, r.acked) != before).then(|| r.changed.clone())
        });
        if let Some(Some(notify)) = changed {
            notify.notify_waiters();
        }
    }

    /// The user's delivery receipt on this node: how far the user's sockets and clients
    /// got. A user this node knows nothing of (or forgot, see
    /// `ManagerConfig::max_receipt_users`) has zeros and no epoch.
    pub fn receipt(&self, user: &UserId) -> DeliveryReceipt {
        self.with_receipt(user, false, |r| DeliveryReceipt {
            epoch: r.epoch.clone(),
            delivered_seq: r.delivered,
            acked_seq: r.acked,
        })
        .unwrap_or(DeliveryReceipt {
            epoch: None,
            delivered_seq: Seq::ZERO,
            acked_seq: Seq::ZERO,
        })
    }

    /// A signal that fires (`notified`) whenever the user's receipt moves: for a caller
    /// that waits for an ack. Makes the user's receipt if it had none.
    pub fn receipt_changes(&self, user: &UserId) -> Arc<Notify> {
        self.with_receipt(user, true, |r| r.changed.clone())
            .unwrap_or_else(|| Arc::new(Notify::new()))
    }
}
