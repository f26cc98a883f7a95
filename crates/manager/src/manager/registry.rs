//! The registry: each user's connections, sharded by user, with the node's subscription to
//! the user's stream; routing the broker's deliveries to them; removing, disconnecting and
//! inspecting them.

use foldhash::HashMap;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, MutexGuard, Weak};

use agentwire_protocol::{CloseCode, UserId};
use tokio::sync::OnceCell;
use tokio::time::Instant;

use super::connection::{ConnShared, FanOutTime, Pushed};
use super::{Inner, REGISTRY_SHARDS, UnifiedWebSocketManager, UserEntry, held};
use crate::broker::{BrokerError, StoredEvent, Subscriber};
use crate::control::ConnectionInfo;

/// Routes the broker's deliveries to this node's connections.
pub(super) struct Router {
    pub(super) inner: Weak<Inner>,
}

impl Subscriber for Router {
    fn deliver(&self, user: &UserId, event: &StoredEvent) {
        if let Some(inner) = self.inner.upgrade() {
            UnifiedWebSocketManager { inner }.fan_out(user, event);
        }
    }

    fn resync(&self, user: &UserId) {
        if let Some(inner) = self.inner.upgrade() {
            UnifiedWebSocketManager { inner }.resync_user(user);
        }
    }
}

impl UnifiedWebSocketManager {
    pub(super) fn shard(&self, user: &UserId) -> MutexGuard<'_, HashMap<UserId, UserEntry>> {
        let i = (self.inner.hasher.hash_one(user) as usize) % REGISTRY_SHARDS;
        // Registry mutations complete before anything that can panic.
        self.inner.shards[i]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn router(&self) -> Arc<dyn Subscriber> {
        match self.inner.router.get() {
            Some(r) => r.clone(),
            None => Arc::new(Router {
                inner: Arc::downgrade(&self.inner),
            }),
        }
    }

    /// Queues an event the broker delivered to every local connection of its user.
    ///
    /// Pushes under the registry shard's lock rather than cloning the user's connection
    /// list for every event: a push only takes the connection's own short lock (never the
    /// other way round) and never waits, so the shard is held for a few pushes.
    pub(super) fn fan_out(&self, user: &UserId, event: &StoredEvent) {
        let shard = self.shard(user);
        let Some(entry) = shard.get(user) else {
            return;
        };
        let now = FanOutTime::default();
        let hold = held::holding();
        for conn in &entry.conns {
            match conn.deliver_live(event, self, &now, hold) {
                Pushed::NeedsCatchUp => self.spawn_catch_up(conn.clone(), None),
                Pushed::Held => held::hold(self, conn),
                Pushed::Queued | Pushed::Skipped => {}
            }
        }
    }

    /// Removes a connection. Idempotent.
    pub(crate) fn remove(&self, shared: &Arc<ConnShared>) {
        self.unregister(shared, CloseCode::Normal, &[]);
    }

    /// Removes a connection and closes it with `code` (unless it is closing already, else
    /// also adding one to each of `counted`). Returns whether this call removed it. The
    /// close comes last, so whoever waits for it finds the registry and the counts
    /// already without the connection.
    pub(super) fn unregister(
        &self,
        shared: &Arc<ConnShared>,
        code: CloseCode,
        counted: &[&AtomicU64],
    ) -> bool {
        if !shared.registered.swap(false, Ordering::AcqRel) {
            return false;
        }
        let released = {
            let mut shard = self.shard(&shared.user);
            match shard.get_mut(&shared.user) {
                Some(entry) => {
                    entry.conns.retain(|c| !Arc::ptr_eq(c, shared));
                    if entry.conns.is_empty() {
                        shard.remove(&shared.user).map(|e| e.subscription)
                    } else {
                        None
                    }
                }
                None => None,
            }
        };
        self.inner.total.fetch_sub(1, Ordering::AcqRel);
        self.inner.counters.closed.fetch_add(1, Ordering::Relaxed);
        if shared.closing().is_none() {
            for c in counted {
                c.fetch_add(1, Ordering::Relaxed);
            }
        }
        shared.close(code);
        if let Some(leases) = self.leases() {
            super::cluster::spawn_release(leases.clone(), shared.user.clone(), shared.id.clone());
        }
        if let Some(subscription) = released {
            self.release_entry(shared.user.clone(), subscription);
        }
        true
    }

    /// Subscribes the node to `user`'s stream for one registry entry, once. The broker
    /// call runs in a task of its own and records its outcome in the entry's cell, so a
    /// connect cancelled mid-call cannot leave a subscription the entry does not know of,
    /// and a second connect waiting on the cell does not subscribe again.
    pub(super) fn subscribe_entry(
        &self,
        user: &UserId,
        subscription: Arc<OnceCell<()>>,
    ) -> tokio::task::JoinHandle<Result<(), BrokerError>> {
        let broker = self.inner.broker.clone();
        let router = self.router();
        let user = user.clone();
        tokio::spawn(async move {
            subscription
                .get_or_try_init(|| broker.subscribe(&user, router))
                .await
                .map(|_| ())
        })
    }

    /// Undoes the subscription of a registry entry that lost its last connection. Its
    /// subscribe may still be in flight (the connect that started it was cancelled):
    /// waiting for it on the cell — or making it, when it never started — means exactly
    /// one unsubscribe answers exactly one subscribe.
    pub(super) fn release_entry(&self, user: UserId, subscription: Arc<OnceCell<()>>) {
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            tracing::warn!(%user, "connection dropped outside a tokio runtime; broker subscription kept");
            return;
        };
        let broker = self.inner.broker.clone();
        let router = self.router();
        handle.spawn(async move {
            let subscribed = subscription
                .get_or_try_init(|| broker.subscribe(&user, router.clone()))
                .await
                .is_ok();
            if subscribed && let Err(e) = broker.unsubscribe(&user, &router).await {
                tracing::warn!(%user, error = %e, "unsubscribe failed");
            }
        });
    }

    /// Closes every connection of `user` with `code` (e.g. 1001 so they resume). Returns
    /// how many were closed.
    pub fn disconnect_user(&self, user: &UserId, code: CloseCode) -> usize {
        let conns = self
            .shard(user)
            .get(user)
            .map(|e| e.conns.clone())
            .unwrap_or_default();
        conns.iter().filter(|c| c.close(code)).count()
    }

    /// Closes every connection of this node with `code` (shutdown). Returns how many.
    pub fn close_all(&self, code: CloseCode) -> usize {
        let mut closed = 0;
        for shard in self.inner.shards.iter() {
            let conns: Vec<Arc<ConnShared>> = shard
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .values()
                .flat_map(|e| e.conns.iter().cloned())
                .collect();
            closed += conns.iter().filter(|c| c.close(code)).count();
        }
        closed
    }

    /// The connections of `user` registered on this node, oldest first: every one whose
    /// session has not ended, those already closing included (each stays registered, and
    /// counted in [`connection_count`](Self::connection_count), until its session lets
    /// go of it).
    pub fn connections_of(&self, user: &UserId) -> Vec<ConnectionInfo> {
        self.list_connections(user, |_| true)
    }

    /// The open connections of `user` on this node, oldest first: those of
    /// [`connections_of`](Self::connections_of) not already closing (an operator's
    /// disconnect, a slow consumer, a shutdown). This is what the admin list and the
    /// cluster's control answer show, so a list taken right after a disconnect shows none
    /// of the connections it closed.
    pub fn open_connections_of(&self, user: &UserId) -> Vec<ConnectionInfo> {
        self.list_connections(user, |c| c.closing().is_none())
    }

    fn list_connections(
        &self,
        user: &UserId,
        keep: impl Fn(&ConnShared) -> bool,
    ) -> Vec<ConnectionInfo> {
        let conns = self
            .shard(user)
            .get(user)
            .map(|e| e.conns.clone())
            .unwrap_or_default();
        let now = Instant::now();
        conns
            .iter()
            .filter(|c| keep(c))
            .map(|c| {
                let (queued_frames, queued_bytes) = c.queued();
                ConnectionInfo {
                    connection_id: c.id.clone(),
                    connected_for: now.saturating_duration_since(c.connected_at),
                    acked_seq: c.acked(),
                    queued_frames,
                    queued_bytes,
                }
            })
            .collect()
    }

    /// Live connections on this node.
    pub fn connection_count(&self) -> usize {
        self.inner.total.load(Ordering::Acquire)
    }
}
