//! Telling other nodes what to do: [`ClusterControl`], the seam a message channel shared by
//! the nodes fills (nodes never talk to each other directly), and [`ControlHandler`], what
//! a node does when told.

use std::sync::Arc;

use agentwire_protocol::{CloseCode, ConnectionId, UserId};
use async_trait::async_trait;

use crate::broker::BrokerError;
use crate::leases::{Lease, NodeId};

/// What one live connection looks like from outside (an admin's view, also of another
/// node's connections).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionInfo {
    /// Its id.
    pub connection_id: ConnectionId,
    /// How long it has been connected.
    pub connected_for: std::time::Duration,
    /// The newest `seq` the client acknowledged.
    pub acked_seq: agentwire_protocol::Seq,
    /// Frames waiting for the writer.
    pub queued_frames: usize,
    /// Bytes waiting for the writer.
    pub queued_bytes: usize,
}

/// The shared pieces that make a manager one node of a cluster
/// ([`crate::UnifiedWebSocketManager::clustered`]). Both carry the same [`NodeId`].
#[derive(Debug, Clone)]
pub struct Cluster {
    /// The per-user connection limit across the nodes.
    pub leases: Arc<dyn crate::leases::ConnectionLeases>,
    /// The channel to the other nodes: evictions at once, the admin's requests. Without
    /// it an eviction reaches another node at its next renewal and the admin sees this
    /// node only.
    pub control: Option<Arc<dyn ClusterControl>>,
    /// The users' delivery receipts across the nodes. Without it a node's receipts are
    /// what its own sockets did.
    pub receipts: Option<Arc<dyn crate::receipt_store::ReceiptStore>>,
}

/// What the nodes of a cluster answered to one request: each answering node's answer, and
/// the nodes known to be alive that did not answer within the wait.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answers<T> {
    /// Each answering node and its answer (this node's own first when the manager adds
    /// it).
    pub answers: Vec<(NodeId, T)>,
    /// Live nodes that did not answer in time.
    pub unanswered: Vec<NodeId>,
}

impl<T> Default for Answers<T> {
    fn default() -> Self {
        Answers {
            answers: Vec::new(),
            unanswered: Vec::new(),
        }
    }
}

/// What a node does when another node's request reaches it. The manager implements it;
/// every method is quick and never awaits.
pub trait ControlHandler: Send + Sync + 'static {
    /// Closes this node's `connection` of `user` with 4003 (its lease was taken by a newer
    /// connection). Returns whether it was open here.
    fn evict(&self, user: &UserId, connection: &ConnectionId) -> bool;
    /// The user's open connections on this node, oldest first: none already closing, so
    /// an answer given after a [`disconnect_user`](Self::disconnect_user) here lists none
    /// of the connections it closed.
    fn connections_of(&self, user: &UserId) -> Vec<ConnectionInfo>;
    /// Closes every connection of `user` on this node with `code`; how many.
    fn disconnect_user(&self, user: &UserId, code: CloseCode) -> usize;
}

/// A control channel shared by the nodes of a cluster.
///
/// The rules, checked by `conformance::control` on every implementation:
///
/// 1. **Addressed.** [`evict`](Self::evict) reaches the lease's node only, which closes
///    the connection (its handler's `evict`). Delivery is best effort: a notice lost with
///    the channel is made good by the node's next lease renewal.
/// 2. **Everyone answers.** [`connections_of`](Self::connections_of) and
///    [`disconnect_user`](Self::disconnect_user) reach every *other* live node and return
///    each one's answer, waiting at most the implementation's documented bound; a live node
///    that did not answer is named in `unanswered`, never silently left out. The calling
///    node answers for itself (the manager adds it).
/// 3. **Unavailable is an error.** When the channel cannot carry the request at all (its
///    link is down) the call fails with a transient [`BrokerError`] rather than answer
///    for this node alone.
#[async_trait]
pub trait ClusterControl: Send + Sync + std::fmt::Debug + 'static {
    /// This node's name on the channel.
    fn node(&self) -> &NodeId;

    /// Hands the channel this node's handler. Called once by the manager; the handler
    /// holds the manager weakly.
    fn attach(&self, handler: Arc<dyn ControlHandler>);

    /// Whether the channel can carry messages to and from this node now: a node whose
    /// channel is down misses the admin's disconnects and other nodes' evictions until it
    /// is back, so readiness checks ask this (rule 3). The default is always up, for
    /// channels that cannot go down (one process).
    ///
    /// # Errors
    /// A transient [`BrokerError`] saying why the channel is down.
    fn health(&self) -> Result<(), BrokerError> {
        Ok(())
    }

    /// Tells the lease's node to close its connection of `user` (rule 1).
    ///
    /// # Errors
    /// A transient [`BrokerError`] when the notice could not be sent.
    async fn evict(&self, user: &UserId, lease: &Lease) -> Result<(), BrokerError>;

    /// Every other live node's connections of `user` (rule 2).
    ///
    /// # Errors
    /// A transient [`BrokerError`] when the channel is down (rule 3).
    async fn connections_of(
        &self,
        user: &UserId,
    ) -> Result<Answers<Vec<ConnectionInfo>>, BrokerError>;

    /// Closes `user`'s connections on every other live node with `code` (rule 2).
    ///
    /// # Errors
    /// A transient [`BrokerError`] when the channel is down (rule 3).
    async fn disconnect_user(
        &self,
        user: &UserId,
        code: CloseCode,
    ) -> Result<Answers<usize>, BrokerError>;
}

type Bus = Arc<std::sync::Mutex<Vec<(NodeId, Arc<dyn ControlHandler>)>>>;

/// The control channel of nodes in one process: a shared list of their handlers, called
/// directly. The model the shared channels are checked against, and a cluster of managers
/// in one process (tests, an embedder).
#[derive(Clone)]
pub struct InMemoryControl {
    node: NodeId,
    bus: Bus,
}

impl std::fmt::Debug for InMemoryControl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InMemoryControl")
            .field("node", &self.node)
            .finish_non_exhaustive()
    }
}

impl InMemoryControl {
    /// A new channel, with a handle for `node`.
    pub fn new(node: NodeId) -> Self {
        InMemoryControl {
            node,
            bus: Bus::default(),
        }
    }

    /// A handle on the same channel for another node.
    pub fn for_node(&self, node: NodeId) -> Self {
        InMemoryControl {
            node,
            bus: self.bus.clone(),
        }
    }

    fn others(&self) -> Vec<(NodeId, Arc<dyn ControlHandler>)> {
        self.bus
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|(n, _)| *n != self.node)
            .cloned()
            .collect()
    }
}

#[async_trait]
impl ClusterControl for InMemoryControl {
    fn node(&self) -> &NodeId {
        &self.node
    }

    fn attach(&self, handler: Arc<dyn ControlHandler>) {
        let mut bus = self.bus.lock().unwrap_or_else(|p| p.into_inner());
        bus.retain(|(n, _)| *n != self.node);
        bus.push((self.node.clone(), handler));
    }

    async fn evict(&self, user: &UserId, lease: &Lease) -> Result<(), BrokerError> {
        for (node, handler) in self.others() {
            if node == lease.node {
                handler.evict(user, &lease.connection);
            }
        }
        Ok(())
    }

    async fn connections_of(
        &self,
        user: &UserId,
    ) -> Result<Answers<Vec<ConnectionInfo>>, BrokerError> {
        Ok(Answers {
            answers: self
                .others()
                .into_iter()
                .map(|(n, h)| (n, h.connections_of(user)))
                .collect(),
            unanswered: Vec::new(),
        })
    }

    async fn disconnect_user(
        &self,
        user: &UserId,
        code: CloseCode,
    ) -> Result<Answers<usize>, BrokerError> {
        Ok(Answers {
            answers: self
                .others()
                .into_iter()
                .map(|(n, h)| (n, h.disconnect_user(user, code)))
                .collect(),
            unanswered: Vec::new(),
        })
    }
}
