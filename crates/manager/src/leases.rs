//! The per-user connection limit for a whole cluster: [`ConnectionLeases`], the seam a
//! store shared by many nodes fills, and [`InMemoryLeases`], the same rules in one process.
//!
//! Without a lease store a manager counts only its own connections (the limit holds per
//! node, which is the whole cluster when there is one node). With one, every connection
//! holds a *lease* in the store: admitted by one atomic step that counts the user's live
//! leases everywhere, renewed by its node every third of the lease time, and dropped when
//! it closes; a node that dies stops renewing, so its connections stop counting within
//! one lease time.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use agentwire_protocol::{ConnectionId, UserId};
use async_trait::async_trait;
use tokio::time::Instant;

use crate::broker::BrokerError;
use crate::config::LimitPolicy;

/// The most evicted leases a lease store remembers per user (rule 4 of
/// [`ConnectionLeases`]): past it the oldest are forgotten, and a renewal treats them as
/// expired. Redis counts the forgotten ones in `agentwire_redis_evicted_leases_forgotten`.
pub const MAX_EVICTED_LEASES_PER_USER: usize = 64;

/// The name of one node of a cluster, unique among the nodes sharing a lease store.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(String);

/// Why a text cannot be a [`NodeId`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a node id is 1-64 bytes of ASCII letters, digits, `-` and `_`")]
pub struct NodeIdError;

impl NodeId {
    /// Longest node id, in bytes.
    pub const MAX_BYTES: usize = 64;

    /// A node id from `text`.
    ///
    /// # Errors
    /// [`NodeIdError`] unless `text` is 1–64 ASCII letters, digits, `-` or `_` (so a
    /// node id never holds the separator of a lease record).
    pub fn new(text: impl Into<String>) -> Result<Self, NodeIdError> {
        let text = text.into();
        let ok = !text.is_empty()
            && text.len() <= Self::MAX_BYTES
            && text
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if ok {
            Ok(NodeId(text))
        } else {
            Err(NodeIdError)
        }
    }

    /// A fresh random node id, `n_` and 16 hex digits.
    pub fn random() -> Self {
        NodeId(format!("n_{:016x}", rand_u64()))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for NodeId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    // A per-process random seed mixed with the time and a counter: unique enough to name
    // a node, without a random-number dependency in production builds.
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let mut h = foldhash::fast::RandomState::default().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.finish()
}

/// One connection's lease: which node holds which connection.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Lease {
    /// The node the connection is open on.
    pub node: NodeId,
    /// The connection.
    pub connection: ConnectionId,
}

/// The answer to [`ConnectionLeases::admit`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Admission {
    /// The lease is held. `evicted` are the user's oldest leases it replaced (policy
    /// `EvictOldest`): their nodes close them with 4003.
    Admitted {
        /// Leases the admission took the place of, oldest first.
        evicted: Vec<Lease>,
    },
    /// The user holds `limit` live leases and the policy is `Reject`: nothing changed.
    Rejected,
}

/// The answer to [`ConnectionLeases::renew`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct Renewal {
    /// Connections whose lease is gone for good: evicted by a newer connection (the
    /// eviction's notice may have been lost), or expired while the user's other leases
    /// filled the limit. Their node closes them with 4003.
    pub lost: Vec<ConnectionId>,
    /// Connections whose lease had expired (the store lost it, or the node could not
    /// renew in time) and was taken again because the user had room.
    pub restored: Vec<ConnectionId>,
}

/// A store of connection leases shared by the nodes of a cluster: the per-user connection
/// limit for all of them.
///
/// The rules, each checked by a property in `agentwire_manager::conformance` (feature
/// `conformance`) that every implementation runs:
///
/// 1. **Limit.** [`admit`](Self::admit) first forgets the user's expired leases, then
///    counts the live ones. Under `limit` it adds the lease. At `limit`, `EvictOldest`
///    removes the oldest (by admission) and adds the new one, returning what it removed;
///    `Reject` changes nothing. One atomic step: however many nodes admit concurrently,
///    the user never holds more than `limit` live leases.
/// 2. **Idempotence.** Admitting a lease the store holds keeps it (and its place) and
///    evicts nothing; releasing one it does not hold does nothing.
/// 3. **Expiry.** A lease not renewed for [`lease_time`](Self::lease_time) stops counting.
/// 4. **Renewal.** [`renew`](Self::renew) extends the given leases of one user by the lease
///    time. A lease evicted since is reported `lost` (and forgotten); a lease that expired
///    is taken again, as the newest, if the user has room (`restored`), else `lost`.
///    A store remembers at most [`MAX_EVICTED_LEASES_PER_USER`] evicted leases of a user
///    (a user reconnecting in a loop must not grow it); one it forgot for that bound
///    renews like an expired one, which the limit still bounds.
/// 5. **Release.** [`release`](Self::release) removes a lease at once.
///
/// Errors are the broker's: a transient one ([`BrokerError::is_transient`]) means the
/// store could not be reached; nothing is known to have changed.
#[async_trait]
pub trait ConnectionLeases: Send + Sync + std::fmt::Debug + 'static {
    /// The node this handle admits and renews leases for.
    fn node(&self) -> &NodeId;

    /// How long a lease counts without renewal. The manager renews every third of it.
    fn lease_time(&self) -> Duration;

    /// Admits `connection` of `user` on this node under `limit` (rule 1).
    ///
    /// # Errors
    /// [`BrokerError`] when the store cannot answer.
    async fn admit(
        &self,
        user: &UserId,
        connection: &ConnectionId,
        limit: usize,
        policy: LimitPolicy,
    ) -> Result<Admission, BrokerError>;

    /// Renews this node's leases of `user` for `connections` (rule 4).
    ///
    /// # Errors
    /// [`BrokerError`] when the store cannot answer; the leases run on until they expire.
    async fn renew(
        &self,
        user: &UserId,
        connections: &[ConnectionId],
        limit: usize,
    ) -> Result<Renewal, BrokerError>;

    /// Drops this node's lease of `connection` (rule 5). Idempotent.
    ///
    /// # Errors
    /// [`BrokerError`] when the store cannot answer; the lease then expires by itself.
    async fn release(&self, user: &UserId, connection: &ConnectionId) -> Result<(), BrokerError>;
}

/// One user's leases in [`InMemoryLeases`]: live ones by admission, evicted ones until
/// they would have expired (so a renewal can tell evicted from expired).
#[derive(Debug, Default)]
struct UserLeases {
    /// Live leases, oldest admission first, with their expiry.
    live: Vec<(Lease, Instant)>,
    /// Evicted leases with the expiry they had.
    evicted: Vec<(Lease, Instant)>,
}

impl UserLeases {
    fn forget_expired(&mut self, now: Instant) {
        self.live.retain(|(_, until)| *until > now);
        self.evicted.retain(|(_, until)| *until > now);
    }
}

/// The lease store of one process: the rules of [`ConnectionLeases`] over a mutex, for
/// several managers in one process (tests, an embedder running many managers) and as the
/// model the shared stores are checked against. Time is tokio's clock, so tests may pause
/// it.
#[derive(Debug)]
pub struct InMemoryLeases {
    node: NodeId,
    lease_time: Duration,
    users: std::sync::Arc<Mutex<HashMap<UserId, UserLeases>>>,
    forgotten: std::sync::Arc<AtomicU64>,
}

impl InMemoryLeases {
    /// A new, empty store whose handle admits for `node`.
    pub fn new(node: NodeId, lease_time: Duration) -> Self {
        InMemoryLeases {
            node,
            lease_time,
            users: Default::default(),
            forgotten: Default::default(),
        }
    }

    /// A handle on the same store for another node.
    pub fn for_node(&self, node: NodeId) -> Self {
        InMemoryLeases {
            node,
            lease_time: self.lease_time,
            users: self.users.clone(),
            forgotten: self.forgotten.clone(),
        }
    }

    /// Evicted leases this store forgot, on any of its nodes' handles, to keep
    /// [`MAX_EVICTED_LEASES_PER_USER`].
    pub fn evicted_forgotten(&self) -> u64 {
        self.forgotten.load(Ordering::Relaxed)
    }

    fn with_user<T>(&self, user: &UserId, f: impl FnOnce(&mut UserLeases, Instant) -> T) -> T {
        let now = Instant::now();
        let mut users = self.users.lock().unwrap_or_else(|p| p.into_inner());
        let entry = users.entry(user.clone()).or_default();
        entry.forget_expired(now);
        let out = f(entry, now);
        if entry.live.is_empty() && entry.evicted.is_empty() {
            users.remove(user);
        }
        out
    }

    fn lease(&self, connection: &ConnectionId) -> Lease {
        Lease {
            node: self.node.clone(),
            connection: connection.clone(),
        }
    }
}

#[async_trait]
impl ConnectionLeases for InMemoryLeases {
    fn node(&self) -> &NodeId {
        &self.node
    }

    fn lease_time(&self) -> Duration {
        self.lease_time
    }

    async fn admit(
        &self,
        user: &UserId,
        connection: &ConnectionId,
        limit: usize,
        policy: LimitPolicy,
    ) -> Result<Admission, BrokerError> {
        let lease = self.lease(connection);
        let until_from = self.lease_time;
        let forgotten = &self.forgotten;
        Ok(self.with_user(user, |u, now| {
            if let Some(held) = u.live.iter_mut().find(|(l, _)| *l == lease) {
                held.1 = now + until_from;
                return Admission::Admitted {
                    evicted: Vec::new(),
                };
            }
            let mut evicted = Vec::new();
            if u.live.len() >= limit {
                if policy == LimitPolicy::Reject {
                    return Admission::Rejected;
                }
                let over = u.live.len() + 1 - limit.max(1);
                for (l, until) in u.live.drain(..over.min(u.live.len())) {
                    evicted.push(l.clone());
                    u.evicted.push((l, until));
                }
                let past = u.evicted.len().saturating_sub(MAX_EVICTED_LEASES_PER_USER);
                u.evicted.drain(..past);
                forgotten.fetch_add(past as u64, Ordering::Relaxed);
            }
            u.live.push((lease, now + until_from));
            Admission::Admitted { evicted }
        }))
    }

    async fn renew(
        &self,
        user: &UserId,
        connections: &[ConnectionId],
        limit: usize,
    ) -> Result<Renewal, BrokerError> {
        let lease_time = self.lease_time;
        let wanted: HashSet<&ConnectionId> = connections.iter().collect();
        Ok(self.with_user(user, |u, now| {
            let mut renewal = Renewal::default();
            for c in wanted {
                let lease = self.lease(c);
                if let Some(held) = u.live.iter_mut().find(|(l, _)| *l == lease) {
                    held.1 = now + lease_time;
                } else if let Some(at) = u.evicted.iter().position(|(l, _)| *l == lease) {
                    u.evicted.remove(at);
                    renewal.lost.push(c.clone());
                } else if u.live.len() < limit {
                    u.live.push((lease, now + lease_time));
                    renewal.restored.push(c.clone());
                } else {
                    renewal.lost.push(c.clone());
                }
            }
            renewal
        }))
    }

    async fn release(&self, user: &UserId, connection: &ConnectionId) -> Result<(), BrokerError> {
        let lease = self.lease(connection);
        self.with_user(user, |u, _| {
            u.live.retain(|(l, _)| *l != lease);
            u.evicted.retain(|(l, _)| *l != lease);
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_ids_hold_no_separator() {
        assert!(NodeId::new("n_0123-abc").is_ok());
        for bad in ["", "a/b", "a b", "a\nb", &"x".repeat(65)] {
            assert_eq!(NodeId::new(bad), Err(NodeIdError), "{bad:?}");
        }
        assert_ne!(NodeId::random(), NodeId::random());
        assert!(NodeId::new(NodeId::random().as_str()).is_ok());
    }

    #[tokio::test]
    async fn evicted_leases_past_the_bound_are_forgotten_and_counted() {
        let store = InMemoryLeases::new(NodeId::random(), Duration::from_secs(60));
        let user = UserId::new("u_evicted_bound").expect("a valid user id");
        for i in 0..MAX_EVICTED_LEASES_PER_USER + 4 {
            let c = ConnectionId::new(format!("c_{i}")).expect("a valid id");
            store
                .admit(&user, &c, 1, LimitPolicy::EvictOldest)
                .await
                .expect("admit");
        }
        assert_eq!(store.evicted_forgotten(), 3);
    }
}
