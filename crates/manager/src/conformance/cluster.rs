//! Managers as nodes of one cluster (a lease store and a control channel shared by
//! several `UnifiedWebSocketManager`s): the per-user limit, evictions and the admin's view
//! hold for all of them, whichever node a connection or a request lands on.

use std::time::Duration;

use agentwire_protocol::{CloseCode, UserId};
use async_trait::async_trait;

use crate::config::{LimitPolicy, ManagerConfig};
use crate::control::{Answers, Cluster, ConnectionInfo, InMemoryControl};
use crate::leases::{InMemoryLeases, NodeId};
use crate::manager::{ConnectOptions, Connection, Outbound, UnifiedWebSocketManager};

/// Builds clusters of managers for the cluster properties.
#[async_trait]
pub trait ClusterHarness: Send + Sync {
    /// `nodes` managers with `config`, each with its own broker handle, sharing one fresh
    /// lease store (lease time `lease`) and one control channel that no other call shares.
    async fn managers(
        &self,
        nodes: usize,
        config: ManagerConfig,
        lease: Duration,
    ) -> Vec<UnifiedWebSocketManager>;
}

/// The harness of managers sharing an [`InMemoryLeases`] store and an
/// [`InMemoryControl`] channel in one process, over one in-memory broker.
#[derive(Debug, Default)]
pub struct InMemoryClusterHarness;

#[async_trait]
impl ClusterHarness for InMemoryClusterHarness {
    async fn managers(
        &self,
        nodes: usize,
        config: ManagerConfig,
        lease: Duration,
    ) -> Vec<UnifiedWebSocketManager> {
        let broker = std::sync::Arc::new(crate::memory::InMemoryBroker::default());
        let store = InMemoryLeases::new(NodeId::random(), lease);
        let channel = InMemoryControl::new(NodeId::random());
        (0..nodes)
            .map(|_| {
                let node = NodeId::random();
                UnifiedWebSocketManager::clustered(
                    config.clone(),
                    broker.clone(),
                    Cluster {
                        leases: std::sync::Arc::new(store.for_node(node.clone())),
                        control: Some(std::sync::Arc::new(channel.for_node(node))),
                        receipts: None,
                    },
                )
            })
            .collect()
    }
}

fn fresh_user(label: &str) -> UserId {
    UserId::new(format!(
        "cluster-{label}-{}",
        agentwire_protocol::EventId::generate()
    ))
    .unwrap_or_else(|e| panic!("a valid user id: {e}"))
}

async fn connect(m: &UnifiedWebSocketManager, user: &UserId) -> Connection {
    m.connect_user(user.clone(), ConnectOptions::default())
        .await
        .unwrap_or_else(|e| panic!("connect failed: {e}"))
}

/// Waits (at most `within`) for `conn` to close, and returns its code.
pub async fn closed_within(conn: &Connection, within: Duration) -> Option<CloseCode> {
    let mut frames = Vec::new();
    let deadline = tokio::time::Instant::now() + within;
    loop {
        frames.clear();
        match tokio::time::timeout_at(deadline, conn.next_frames(&mut frames, 64)).await {
            Ok(Outbound::Close(code)) => return Some(code),
            Ok(Outbound::Frames) => {}
            Err(_) => return None,
        }
    }
}

/// The admin's list of `user`'s connections asked of `node`, every node having answered.
async fn listed(node: &UnifiedWebSocketManager, user: &UserId) -> Answers<Vec<ConnectionInfo>> {
    let seen = node
        .cluster_connections_of(user)
        .await
        .unwrap_or_else(|e| panic!("list failed: {e}"));
    assert!(seen.unanswered.is_empty(), "{seen:?}");
    seen
}

/// An eviction on another node is carried by the control channel: with a lease far longer
/// than the wait, the oldest connection still closes with 4003 at once; the admin's list
/// on any node shows every node's connections, each node named; the admin's disconnect on
/// any node closes them on every node, and from its answer on no node lists them.
pub async fn cluster_evictions_and_admin(h: &dyn ClusterHarness) {
    let config = ManagerConfig {
        limit_policy: LimitPolicy::EvictOldest,
        ..ManagerConfig::default()
    };
    let m = h.managers(3, config, Duration::from_secs(120)).await;
    let user = fresh_user("admin");
    let oldest = connect(&m[0], &user).await;
    let b = connect(&m[1], &user).await;
    let c = connect(&m[1], &user).await;
    let d = connect(&m[2], &user).await;
    assert_eq!(
        closed_within(&oldest, Duration::from_secs(10)).await,
        Some(CloseCode::Replaced),
        "the eviction reached the oldest connection's node"
    );
    for node in &m {
        let seen = listed(node, &user).await;
        assert_eq!(seen.answers.len(), 3, "every node answers: {seen:?}");
        assert_eq!(&seen.answers[0].0, node.node_id(), "this node first");
        let mut ids: Vec<_> = seen
            .answers
            .iter()
            .flat_map(|(n, conns)| {
                conns
                    .iter()
                    .map(move |c| (n.clone(), c.connection_id.clone()))
            })
            .collect();
        ids.sort();
        let mut want = vec![
            (m[1].node_id().clone(), b.id().clone()),
            (m[1].node_id().clone(), c.id().clone()),
            (m[2].node_id().clone(), d.id().clone()),
        ];
        want.sort();
        assert_eq!(ids, want);
    }
    let done = m[0]
        .cluster_disconnect_user(&user, CloseCode::GoingAway)
        .await
        .unwrap_or_else(|e| panic!("disconnect failed: {e}"));
    assert!(done.unanswered.is_empty(), "{done:?}");
    let total: usize = done.answers.iter().map(|(_, n)| n).sum();
    assert_eq!(total, 3, "{done:?}");
    // The closed connections stay registered until their sessions let go of them (the
    // handles are still held here), but no node lists them any more.
    for node in &m {
        let seen = listed(node, &user).await;
        assert!(
            seen.answers.iter().all(|(_, conns)| conns.is_empty()),
            "closing connections are not listed: {seen:?}"
        );
    }
    assert_eq!(
        m[1].connections_of(&user).len(),
        2,
        "still registered on m[1]"
    );
    for conn in [&b, &c, &d] {
        assert_eq!(
            closed_within(conn, Duration::from_secs(10)).await,
            Some(CloseCode::GoingAway)
        );
    }
}
