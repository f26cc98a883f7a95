//! Delivery receipts: per user, the newest `seq` written to at least one of the user's
//! sockets (`delivered_seq`, reported by the server's writer after a flush) and the newest
//! `seq` a client acknowledged (`acked_seq`, from `ack` frames, never past what that
//! connection was sent), in the user's current epoch. They outlive connections (a
//! reconnect keeps them) and are bounded: at most `ManagerConfig::max_receipt_users` users,
//! the least recently updated forgotten first, and each forgotten by the sweeper once it
//! went `ManagerConfig::receipt_ttl` unchanged while its user had no connection here. A
//! node knows what its own sockets did; a node of a cluster with a [`ReceiptStore`] also
//! writes each changed receipt there, at most once per [`RECEIPT_FLUSH_INTERVAL`] per
//! user, and reads merge the store's record with its own (`receipt_in`), so they see
//! every node's deliveries and acks.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::{Mutex, MutexGuard};

use agentwire_protocol::{Epoch, Seq, UserId};
use std::collections::HashMap;
use std::hash::{BuildHasher, BuildHasherDefault, Hash, Hasher};
use tokio::sync::Notify;
use tokio::time::Instant;

use super::UnifiedWebSocketManager;
use crate::broker::BrokerError;
use crate::capacity::give_back_map_capacity;
use crate::receipt_store::{RECEIPT_FLUSH_INTERVAL, ReceiptStore, StoredReceipt};

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

/// A user's receipt, shared by the node's map and the user's connections: each keeps it
/// once it first wrote (see [`ReceiptHandle`]), so a flushed batch records itself without
/// looking the user up.
pub(crate) type ReceiptCell = Arc<Mutex<Receipt>>;

#[derive(Debug)]
pub(crate) struct Receipt {
    /// Taken out of the map (expired or evicted): a connection that kept it looks its
    /// user up again, so nothing it records is lost with it.
    retired: bool,
    epoch: Option<Epoch>,
    delivered: Seq,
    acked: Seq,
    touched: Instant,
    /// Fires when the receipt moves; made when a caller first waits on it
    /// ([`UnifiedWebSocketManager::receipt_changes`]). Most users are never waited on: a
    /// signal each would be an allocation per user, kept as long as the receipt — long
    /// after the user's connections, among whatever else was allocated then.
    changed: Option<Arc<Notify>>,
    /// Moved since the cluster's store last took it (meaningful only with a store): set
    /// by every move, cleared by a flush whose write succeeded with what the receipt
    /// still says. The sweeper keeps a receipt while it is set, so a change is never
    /// forgotten between the flush that took it and the write that failed.
    unflushed: bool,
}

impl Receipt {
    /// Moves it forward in `epoch` (a new epoch starts it over); `Some` when it moved.
    fn record(
        &mut self,
        epoch: &Epoch,
        delivered: Option<Seq>,
        acked: Option<Seq>,
        now: Instant,
    ) -> Option<Moved> {
        if self.epoch.as_ref() != Some(epoch) {
            self.epoch = Some(epoch.clone());
            self.delivered = Seq::ZERO;
            self.acked = Seq::ZERO;
        }
        let before = (self.delivered, self.acked);
        if let Some(d) = delivered {
            self.delivered = self.delivered.max(d);
        }
        if let Some(a) = acked {
            self.acked = self.acked.max(a);
            // What a client acknowledged reached it.
            self.delivered = self.delivered.max(a);
        }
        self.touched = now;
        let moved = (self.delivered, self.acked) != before;
        self.unflushed |= moved;
        moved.then(|| Moved {
            signal: self.changed.clone(),
        })
    }

    /// What the cluster's store is given for it; `None` before it has an epoch.
    fn stored(&self) -> Option<StoredReceipt> {
        let epoch = self.epoch.clone()?;
        Some(StoredReceipt::new(epoch, self.delivered, self.acked))
    }
}

/// A user as a receipt shard's key: the user and its hash, computed once per look-up
/// (it picks the shard, and the shard's map takes it as the key's hash, see [`Hashed`]).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Key {
    hash: u64,
    user: UserId,
}

impl Hash for Key {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.hash);
    }
}

/// The hasher of a shard's map: a [`Key`] hands it the hash it carries, which it returns
/// as it is (anything else is folded in, so it still hashes whatever it is given).
#[derive(Debug, Default, Clone, Copy)]
struct Hashed(u64);

impl Hasher for Hashed {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = self.0.rotate_left(32) ^ n;
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

type Shard = HashMap<Key, ReceiptCell, BuildHasherDefault<Hashed>>;

fn lock_cell(cell: &ReceiptCell) -> MutexGuard<'_, Receipt> {
    // Every change of a receipt completes before anything that can panic.
    cell.lock().unwrap_or_else(|p| p.into_inner())
}

/// Where a connection keeps its user's receipt between writes.
pub(crate) type ReceiptHandle = Option<ReceiptCell>;

/// What a receipt's move asks of the caller once its locks are let go.
#[must_use]
pub(crate) struct Moved {
    signal: Option<Arc<Notify>>,
}

/// Every user's receipt on one node, and the users whose receipt changed since the last
/// flush to the cluster's store.
#[derive(Debug)]
pub(crate) struct Receipts {
    shards: Box<[Mutex<Shard>]>,
    hasher: foldhash::fast::RandomState,
    /// Changed since the last flush (only with a store); at most `max_receipt_users`.
    dirty: Mutex<foldhash::HashSet<UserId>>,
    flushing: std::sync::atomic::AtomicBool,
}

impl Default for Receipts {
    fn default() -> Self {
        Receipts {
            shards: (0..SHARDS)
                .map(|_| Mutex::new(HashMap::default()))
                .collect(),
            hasher: Default::default(),
            dirty: Mutex::default(),
            flushing: std::sync::atomic::AtomicBool::new(false),
        }
    }
}

impl Receipts {
    /// The user's key and shard. The shard is picked by bits of the hash that the map
    /// does not use for the bucket (the low ones) nor for the tag (the top seven), so the
    /// users of one shard still spread over all its buckets.
    fn shard(&self, user: &UserId) -> (Key, MutexGuard<'_, Shard>) {
        let hash = self.hasher.hash_one(user);
        let i = ((hash >> 32) as usize) % SHARDS;
        let key = Key {
            hash,
            user: user.clone(),
        };
        (
            key,
            self.shards[i].lock().unwrap_or_else(|p| p.into_inner()),
        )
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
    /// The user's receipt, created first (and room made) when `create`.
    fn receipt_cell(&self, user: &UserId, create: bool) -> Option<ReceiptCell> {
        let receipts = &self.inner.receipts;
        let (key, mut shard) = receipts.shard(user);
        if let Some(cell) = shard.get(&key) {
            return Some(cell.clone());
        }
        if !create {
            return None;
        }
        let room = (self.inner.config.max_receipt_users / SHARDS).max(1);
        if shard.len() >= room {
            let oldest = shard
                .iter()
                .min_by_key(|(_, cell)| lock_cell(cell).touched)
                .map(|(k, _)| k.clone());
            if let Some(cell) = oldest.and_then(|oldest| shard.remove(&oldest)) {
                lock_cell(&cell).retired = true;
                self.inner
                    .counters
                    .receipts_evicted
                    .fetch_add(1, Ordering::Relaxed);
            }
        }
        let cell = shard.entry(key).or_insert_with(|| {
            Arc::new(Mutex::new(Receipt {
                retired: false,
                epoch: None,
                delivered: Seq::ZERO,
                acked: Seq::ZERO,
                touched: Instant::now(),
                changed: None,
                unflushed: false,
            }))
        });
        Some(cell.clone())
    }

    /// Runs `f` on the user's receipt, creating it first (and making room) when `create`.
    fn with_receipt<T>(
        &self,
        user: &UserId,
        create: bool,
        f: impl FnOnce(&mut Receipt) -> T,
    ) -> Option<T> {
        self.with_kept_receipt(&mut None, user, create, f)
    }

    /// Runs `f` on the user's receipt kept in `handle`, looked up (and created first, room
    /// made, when `create`) only when `handle` holds none, or a retired one.
    fn with_kept_receipt<T>(
        &self,
        handle: &mut ReceiptHandle,
        user: &UserId,
        create: bool,
        f: impl FnOnce(&mut Receipt) -> T,
    ) -> Option<T> {
        loop {
            let cell = match handle {
                Some(cell) => cell,
                None => handle.insert(self.receipt_cell(user, create)?),
            };
            let mut r = lock_cell(cell);
            // Retired since it was kept or looked up: the next look-up finds its
            // successor, or makes one.
            if !r.retired {
                return Some(f(&mut r));
            }
            drop(r);
            *handle = None;
        }
    }

    /// Moves the user's receipt forward in `epoch` (a new epoch starts it over), through
    /// the receipt a connection keeps in `handle` (see
    /// [`with_kept_receipt`](Self::with_kept_receipt)). The caller passes what it returns
    /// to [`receipt_moved`](Self::receipt_moved) once its own locks are let go.
    pub(crate) fn record_receipt_in(
        &self,
        handle: &mut ReceiptHandle,
        user: &UserId,
        epoch: &Epoch,
        delivered: Option<Seq>,
        acked: Option<Seq>,
        now: Instant,
    ) -> Option<Moved> {
        self.with_kept_receipt(handle, user, true, |r| {
            r.record(epoch, delivered, acked, now)
        })
        .flatten()
    }

    /// Signals a receipt's move, and marks it for the next flush to the cluster's store.
    pub(crate) fn receipt_moved(&self, user: &UserId, moved: Option<Moved>) {
        let Some(moved) = moved else {
            return;
        };
        if let Some(notify) = moved.signal {
            notify.notify_waiters();
        }
        if self.inner.receipt_store.is_some() {
            self.mark_for_flush(user);
        }
    }

    /// Forgets the receipts nothing moved for `ManagerConfig::receipt_ttl` whose user has
    /// no connection on this node, and gives back the slots they held; the sweeper calls
    /// it every `sweep_interval`. Kept however old: a receipt whose change the cluster's
    /// store has not yet taken (its write waits for the next flush, is under way, or
    /// failed and waits to be retried), and one a caller waits on
    /// ([`receipt_changes`](Self::receipt_changes)). Returns how many it forgot.
    pub(crate) fn expire_receipts(&self, now: Instant) -> usize {
        let ttl = self.inner.config.receipt_ttl;
        let receipts = &self.inner.receipts;
        let shared = self.inner.receipt_store.is_some();
        let expired = |r: &Receipt| {
            now.saturating_duration_since(r.touched) >= ttl
                && r.changed.as_ref().is_none_or(|n| Arc::strong_count(n) == 1)
        };
        let stale = |cell: &ReceiptCell| {
            let r = lock_cell(cell);
            expired(&r) && !(shared && r.unflushed)
        };
        let mut forgotten = 0;
        // Past their ttl but not yet in the store: marked for the next flush again, in
        // case their mark was dropped (`receipts_unflushed`) or their write failed.
        let mut unwritten = Vec::new();
        for slot in receipts.shards.iter() {
            let lock = || slot.lock().unwrap_or_else(|p| p.into_inner());
            let mut old = Vec::new();
            for (k, cell) in lock().iter() {
                let r = lock_cell(cell);
                if !expired(&r) {
                    continue;
                }
                if shared && r.unflushed {
                    unwritten.push(k.user.clone());
                } else {
                    old.push(k.clone());
                }
            }
            if !old.is_empty() {
                // The registry's locks are never taken under a receipt shard's: look the
                // users up first, then remove what is still stale.
                old.retain(|k| !self.shard(&k.user).contains_key(&k.user));
            }
            let mut shard = lock();
            for key in old {
                if shard.get(&key).is_some_and(stale)
                    && let Some(cell) = shard.remove(&key)
                {
                    lock_cell(&cell).retired = true;
                    forgotten += 1;
                }
            }
            give_back_map_capacity(&mut shard);
        }
        for user in &unwritten {
            self.mark_for_flush(user);
        }
        self.inner
            .counters
            .receipts_expired
            .fetch_add(forgotten as u64, Ordering::Relaxed);
        forgotten
    }

    /// Whether receipts are shared by the nodes of a cluster (a [`ReceiptStore`]): a
    /// change on another node is then seen by polling, not signalled.
    pub fn receipts_shared(&self) -> bool {
        self.inner.receipt_store.is_some()
    }

    /// How far `user`'s clients got in `epoch`: `(delivered_seq, acked_seq)`, zero for a
    /// receipt of another epoch. With a [`ReceiptStore`], what every node recorded (this
    /// node's own flushed or not).
    ///
    /// # Errors
    /// [`BrokerError`] when the store cannot be read.
    pub async fn receipt_in(
        &self,
        user: &UserId,
        epoch: &Epoch,
    ) -> Result<(Seq, Seq), BrokerError> {
        let local = self.receipt(user);
        let (mut delivered, mut acked) = if local.epoch.as_ref() == Some(epoch) {
            (local.delivered_seq, local.acked_seq)
        } else {
            (Seq::ZERO, Seq::ZERO)
        };
        if let Some(store) = &self.inner.receipt_store
            && let Some(r) = store.read(user).await?
            && &r.epoch == epoch
        {
            delivered = delivered.max(r.delivered_seq);
            acked = acked.max(r.acked_seq);
        }
        Ok((delivered.max(acked), acked))
    }

    fn mark_for_flush(&self, user: &UserId) {
        let receipts = &self.inner.receipts;
        {
            let mut dirty = receipts.dirty.lock().unwrap_or_else(|p| p.into_inner());
            if !dirty.contains(user) {
                if dirty.len() >= self.inner.config.max_receipt_users {
                    self.inner
                        .counters
                        .receipts_unflushed
                        .fetch_add(1, Ordering::Relaxed);
                    return;
                }
                dirty.insert(user.clone());
            }
        }
        if !receipts.flushing.load(Ordering::Relaxed) {
            self.start_receipt_flush();
        }
    }

    /// Starts the flush task once, inside a runtime: every [`RECEIPT_FLUSH_INTERVAL`] it
    /// writes the changed receipts to the store. It holds the manager weakly.
    fn start_receipt_flush(&self) {
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if self.inner.receipts.flushing.swap(true, Ordering::AcqRel) {
            return;
        }
        let weak = Arc::downgrade(&self.inner);
        handle.spawn(async move {
            let mut tick = tokio::time::interval(RECEIPT_FLUSH_INTERVAL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(inner) = weak.upgrade() else { break };
                UnifiedWebSocketManager { inner }.flush_receipts().await;
            }
        });
    }

    /// Writes every changed receipt to the store, one call per user, concurrently; a user
    /// whose write failed is written again at the next flush.
    pub(crate) async fn flush_receipts(&self) {
        let Some(store) = self.inner.receipt_store.clone() else {
            return;
        };
        let users: Vec<UserId> = {
            let mut dirty = self
                .inner
                .receipts
                .dirty
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            dirty.drain().collect()
        };
        let writes = users.iter().filter_map(|user| {
            // The cell, not a copy: what the write took is compared with it afterwards.
            let cell = self.receipt_cell(user, false)?;
            let record = lock_cell(&cell).stored()?;
            let store: &Arc<dyn ReceiptStore> = &store;
            Some(async move {
                let result = store.record(user, &record).await;
                (user, cell, record, result)
            })
        });
        for (user, cell, record, result) in futures_util::future::join_all(writes).await {
            match result {
                Ok(()) => {
                    // Taken by the store, unless it moved while the write was under way
                    // (that move marked it for the next flush).
                    let mut r = lock_cell(&cell);
                    if r.stored().as_ref() == Some(&record) {
                        r.unflushed = false;
                    }
                }
                Err(e) => {
                    self.inner
                        .counters
                        .receipt_flush_failures
                        .fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(%user, error = %e, "a receipt was not written to the store");
                    self.mark_for_flush(user);
                }
            }
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
        self.with_receipt(user, true, |r| {
            r.changed
                .get_or_insert_with(|| Arc::new(Notify::new()))
                .clone()
        })
        .unwrap_or_else(|| Arc::new(Notify::new()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Cluster, InMemoryBroker, InMemoryLeases, InMemoryReceipts, ManagerConfig, NodeId};
    use std::time::Duration;

    fn node(store: &InMemoryReceipts) -> UnifiedWebSocketManager {
        UnifiedWebSocketManager::clustered(
            ManagerConfig {
                receipt_ttl: Duration::ZERO,
                ..ManagerConfig::default()
            },
            Arc::new(InMemoryBroker::default()),
            Cluster {
                leases: Arc::new(InMemoryLeases::new(
                    NodeId::random(),
                    Duration::from_secs(30),
                )),
                control: None,
                receipts: Some(Arc::new(store.clone())),
            },
        )
    }

    #[tokio::test]
    async fn a_change_whose_mark_was_dropped_is_marked_again_by_the_sweep_and_written() {
        let store = InMemoryReceipts::new(Duration::from_secs(600), 100);
        let m = node(&store);
        let alice = UserId::new("alice").expect("id");
        let epoch = Epoch::generate();
        let moved = m.record_receipt_in(
            &mut None,
            &alice,
            &epoch,
            Some(Seq(3)),
            None,
            Instant::now(),
        );
        m.receipt_moved(&alice, moved);
        // As when the flush set was full: the change is not marked.
        m.inner.receipts.dirty.lock().expect("lock").clear();
        assert_eq!(
            m.expire_receipts(Instant::now()),
            0,
            "kept: not in the store"
        );
        m.flush_receipts().await;
        let stored = store.read(&alice).await.expect("read").expect("written");
        assert_eq!(stored.delivered_seq, Seq(3));
        assert_eq!(
            m.expire_receipts(Instant::now()),
            1,
            "written, then forgotten"
        );
    }
}
