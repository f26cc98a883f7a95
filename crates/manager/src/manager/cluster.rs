//! The manager as one node of a cluster: the per-user limit through a
//! [`ConnectionLeases`] store (a connection's lease taken before it is registered and
//! dropped when it is removed, evictions by id, the renewal task), and the control
//! channel (evictions on other nodes, the admin's view and disconnect on every node).

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};

use agentwire_protocol::{CloseCode, ConnectionId, UserId};
use futures_util::StreamExt;

use super::connection::ConnShared;
use super::{Inner, UnifiedWebSocketManager};
use crate::broker::BrokerError;
use crate::control::{Answers, ConnectionInfo, ControlHandler};
use crate::leases::{ConnectionLeases, Lease, NodeId};

/// Leases renewed concurrently by one renewal pass (one store call per user).
const RENEW_CONCURRENCY: usize = 16;

/// Drops a lease taken for a connection that never got registered (the connect was
/// refused by the node cap, failed or was cancelled), unless disarmed.
pub(super) struct LeaseGuard {
    pub(super) leases: Option<Arc<dyn ConnectionLeases>>,
    pub(super) user: UserId,
    pub(super) connection: ConnectionId,
}

impl LeaseGuard {
    pub(super) fn disarm(mut self) {
        self.leases = None;
    }
}

impl Drop for LeaseGuard {
    fn drop(&mut self) {
        if let Some(leases) = self.leases.take() {
            spawn_release(leases, self.user.clone(), self.connection.clone());
        }
    }
}

/// Drops a lease in a task of its own (removal is synchronous). A lease whose release
/// cannot run or fails expires by itself within the lease time.
pub(super) fn spawn_release(
    leases: Arc<dyn ConnectionLeases>,
    user: UserId,
    connection: ConnectionId,
) {
    let Ok(handle) = tokio::runtime::Handle::try_current() else {
        return;
    };
    handle.spawn(async move {
        if let Err(e) = leases.release(&user, &connection).await {
            tracing::debug!(%user, error = %e, "lease release failed; it expires by itself");
        }
    });
}

impl UnifiedWebSocketManager {
    /// The lease store, when the per-user limit is counted across a cluster.
    pub(super) fn leases(&self) -> Option<&Arc<dyn ConnectionLeases>> {
        self.inner.leases.as_ref()
    }

    /// Closes this node's connection `connection` of `user` with 4003 because a newer
    /// connection of the user took its lease. Returns whether it was open here.
    pub fn evict_connection(&self, user: &UserId, connection: &ConnectionId) -> bool {
        let conn = self
            .shard(user)
            .get(user)
            .and_then(|e| e.conns.iter().find(|c| c.id == *connection).cloned());
        match conn {
            Some(conn) => self.evict(&conn, false),
            None => false,
        }
    }

    /// Closes a connection with 4003 and removes it, counting it an eviction (and, after a
    /// renewal found its lease gone, a lost lease); whether this call did.
    fn evict(&self, conn: &Arc<ConnShared>, lease_lost: bool) -> bool {
        let counters = &self.inner.counters;
        let counted: &[&std::sync::atomic::AtomicU64] = if lease_lost {
            &[&counters.evictions, &counters.leases_lost]
        } else {
            &[&counters.evictions]
        };
        self.unregister(conn, CloseCode::Replaced, counted)
    }

    /// Acts on the leases an admission evicted: this node's are closed at once; another
    /// node is told through the control channel, and learns at its next renewal if the
    /// notice is lost.
    pub(super) fn evicted_leases(&self, user: &UserId, evicted: Vec<Lease>) {
        for lease in evicted {
            if lease.node == self.inner.node {
                self.evict_connection(user, &lease.connection);
            } else if let Some(control) = self.inner.control.clone()
                && let Ok(handle) = tokio::runtime::Handle::try_current()
            {
                let user = user.clone();
                handle.spawn(async move {
                    if let Err(e) = control.evict(&user, &lease).await {
                        tracing::debug!(%user, error = %e, "eviction notice not sent; the renewal closes it");
                    }
                });
            }
        }
    }

    /// This node's name in its cluster (a random one for a node on its own).
    pub fn node_id(&self) -> &NodeId {
        &self.inner.node
    }

    pub(super) fn attach_control(&self) {
        if let Some(control) = &self.inner.control {
            control.attach(Arc::new(Handler {
                inner: Arc::downgrade(&self.inner),
            }));
        }
    }

    /// The user's open connections on every node of the cluster (none already closing:
    /// see [`open_connections_of`](Self::open_connections_of)), each node named; on a
    /// node without a control channel, this node's.
    ///
    /// # Errors
    /// A transient [`BrokerError`] when the control channel is down.
    pub async fn cluster_connections_of(
        &self,
        user: &UserId,
    ) -> Result<Answers<Vec<ConnectionInfo>>, BrokerError> {
        let mut answers = match &self.inner.control {
            Some(control) => control.connections_of(user).await?,
            None => Answers::default(),
        };
        answers
            .answers
            .insert(0, (self.inner.node.clone(), self.open_connections_of(user)));
        Ok(answers)
    }

    /// Closes the user's connections on every node of the cluster with `code`, and says
    /// how many each node closed; on a node without a control channel, this node's.
    ///
    /// # Errors
    /// A transient [`BrokerError`] when the control channel is down; nothing was closed.
    pub async fn cluster_disconnect_user(
        &self,
        user: &UserId,
        code: CloseCode,
    ) -> Result<Answers<usize>, BrokerError> {
        let mut answers = match &self.inner.control {
            Some(control) => control.disconnect_user(user, code).await?,
            None => Answers::default(),
        };
        answers.answers.insert(
            0,
            (self.inner.node.clone(), self.disconnect_user(user, code)),
        );
        Ok(answers)
    }

    /// One renewal pass: every connection of this node renews its lease; a connection
    /// whose lease is gone is closed with 4003. Returns how many it closed.
    pub async fn renew_leases(&self) -> usize {
        let Some(leases) = self.leases().cloned() else {
            return 0;
        };
        let users: Vec<(UserId, Vec<Arc<ConnShared>>)> = self
            .inner
            .shards
            .iter()
            .flat_map(|shard| {
                shard
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .iter()
                    .map(|(u, e)| (u.clone(), e.conns.clone()))
                    .collect::<Vec<_>>()
            })
            .collect();
        let limit = self.inner.config.max_connections_per_user;
        let counters = &self.inner.counters;
        futures_util::stream::iter(users)
            .map(|(user, conns)| {
                let leases = leases.clone();
                async move {
                    let ids: Vec<ConnectionId> = conns.iter().map(|c| c.id.clone()).collect();
                    let renewal = match leases.renew(&user, &ids, limit).await {
                        Ok(r) => r,
                        Err(e) => {
                            counters.lease_failures.fetch_add(1, Ordering::Relaxed);
                            tracing::warn!(%user, error = %e, "lease renewal failed");
                            return 0;
                        }
                    };
                    for id in &renewal.restored {
                        // Removed while the renewal was under way: its release may have
                        // come first, so drop the lease taken again.
                        if conns
                            .iter()
                            .any(|c| c.id == *id && !c.registered.load(Ordering::Acquire))
                        {
                            spawn_release(leases.clone(), user.clone(), id.clone());
                        }
                    }
                    let mut closed = 0;
                    for id in &renewal.lost {
                        if let Some(conn) = conns.iter().find(|c| c.id == *id)
                            && self.evict(conn, true)
                        {
                            closed += 1;
                        }
                    }
                    closed
                }
            })
            .buffer_unordered(RENEW_CONCURRENCY)
            .fold(0, |sum, n| async move { sum + n })
            .await
    }

    /// Starts the renewal task, every third of the lease time; it ends with the manager.
    pub(super) fn start_renewal(&self, handle: &tokio::runtime::Handle) {
        let Some(leases) = self.leases() else { return };
        let period = (leases.lease_time() / 3).max(std::time::Duration::from_millis(10));
        self.every(handle, period, |m| async move {
            m.renew_leases().await;
        });
    }
}

/// What this node does when another node's request reaches it.
struct Handler {
    inner: Weak<Inner>,
}

impl Handler {
    fn manager(&self) -> Option<UnifiedWebSocketManager> {
        self.inner
            .upgrade()
            .map(|inner| UnifiedWebSocketManager { inner })
    }
}

impl ControlHandler for Handler {
    fn evict(&self, user: &UserId, connection: &ConnectionId) -> bool {
        self.manager()
            .is_some_and(|m| m.evict_connection(user, connection))
    }

    fn connections_of(&self, user: &UserId) -> Vec<ConnectionInfo> {
        self.manager()
            .map(|m| m.open_connections_of(user))
            .unwrap_or_default()
    }

    fn disconnect_user(&self, user: &UserId, code: CloseCode) -> usize {
        self.manager().map_or(0, |m| m.disconnect_user(user, code))
    }
}
