//! The contract of [`ConnectionLeases`] (its docs number the rules) as async properties
//! generic over a [`LeaseHarness`] that hands out handles of several nodes on one fresh
//! store. Time is real: the expiry properties use short leases and wait a few of them.

use std::sync::Arc;
use std::time::Duration;

use agentwire_protocol::{ConnectionId, UserId};
use async_trait::async_trait;

use crate::config::LimitPolicy;
use crate::leases::{
    Admission, ConnectionLeases, InMemoryLeases, Lease, MAX_EVICTED_LEASES_PER_USER, NodeId,
};

/// Builds lease stores for the lease properties.
#[async_trait]
pub trait LeaseHarness: Send + Sync {
    /// Handles of `nodes` distinct nodes on one store no other call shares, each with
    /// `lease_time`.
    async fn nodes(&self, nodes: usize, lease_time: Duration) -> Vec<Arc<dyn ConnectionLeases>>;
}

/// The harness of [`InMemoryLeases`].
#[derive(Debug, Default)]
pub struct InMemoryLeaseHarness;

#[async_trait]
impl LeaseHarness for InMemoryLeaseHarness {
    async fn nodes(&self, nodes: usize, lease_time: Duration) -> Vec<Arc<dyn ConnectionLeases>> {
        let first = InMemoryLeases::new(NodeId::random(), lease_time);
        let mut out: Vec<Arc<dyn ConnectionLeases>> = Vec::new();
        for _ in 1..nodes {
            out.push(Arc::new(first.for_node(NodeId::random())));
        }
        out.insert(0, Arc::new(first));
        out
    }
}

/// A lease time no property waits out.
const LONG: Duration = Duration::from_secs(60);

fn fresh_user(label: &str) -> UserId {
    UserId::new(format!(
        "lease-{label}-{}",
        agentwire_protocol::EventId::generate()
    ))
    .unwrap_or_else(|e| panic!("a valid user id: {e}"))
}

fn conn(n: usize) -> ConnectionId {
    ConnectionId::new(format!("c_{n:04}")).unwrap_or_else(|e| panic!("a valid id: {e}"))
}

async fn admit(
    node: &Arc<dyn ConnectionLeases>,
    user: &UserId,
    c: &ConnectionId,
    limit: usize,
    policy: LimitPolicy,
) -> Admission {
    node.admit(user, c, limit, policy)
        .await
        .unwrap_or_else(|e| panic!("admit failed: {e}"))
}

fn evicted(a: Admission) -> Vec<Lease> {
    match a {
        Admission::Admitted { evicted } => evicted,
        other => panic!("expected an admission, got {other:?}"),
    }
}

/// Rules 1 and 2: under the limit leases are added; at the limit `EvictOldest` evicts the
/// oldest by admission, on whichever node it is, and `Reject` changes nothing; admitting a
/// held lease again evicts nothing; releasing makes room; releasing twice is harmless.
pub async fn lease_limit_and_policies(h: &dyn LeaseHarness) {
    let nodes = h.nodes(3, LONG).await;
    let user = fresh_user("limit");
    for (i, node) in nodes.iter().enumerate() {
        let got = evicted(admit(node, &user, &conn(i), 3, LimitPolicy::EvictOldest).await);
        assert!(
            got.is_empty(),
            "under the limit nothing is evicted: {got:?}"
        );
    }
    let again = evicted(admit(&nodes[1], &user, &conn(1), 3, LimitPolicy::EvictOldest).await);
    assert!(
        again.is_empty(),
        "a held lease admitted again evicts nothing"
    );
    assert_eq!(
        admit(&nodes[2], &user, &conn(3), 3, LimitPolicy::Reject).await,
        Admission::Rejected
    );
    let got = evicted(admit(&nodes[2], &user, &conn(3), 3, LimitPolicy::EvictOldest).await);
    assert_eq!(
        got,
        vec![Lease {
            node: nodes[0].node().clone(),
            connection: conn(0),
        }],
        "the oldest lease, on its node, is evicted"
    );
    for _ in 0..2 {
        nodes[1]
            .release(&user, &conn(1))
            .await
            .unwrap_or_else(|e| panic!("release failed: {e}"));
    }
    let got = evicted(admit(&nodes[0], &user, &conn(4), 3, LimitPolicy::Reject).await);
    assert!(got.is_empty(), "a released lease makes room");
    assert_eq!(
        admit(&nodes[0], &user, &conn(5), 3, LimitPolicy::Reject).await,
        Admission::Rejected
    );
}

/// Rule 1 under contention: 30 concurrent admissions of one user on three nodes with limit
/// 3 leave exactly 3 live leases (`EvictOldest`: every other one evicted exactly once and
/// reported lost by its renewal) or admit exactly 3 (`Reject`).
pub async fn lease_concurrent_admissions(h: &dyn LeaseHarness) {
    for policy in [LimitPolicy::EvictOldest, LimitPolicy::Reject] {
        let nodes = h.nodes(3, LONG).await;
        let user = fresh_user("race");
        let tasks: Vec<_> = (0..30)
            .map(|i| {
                let (node, user) = (nodes[i % 3].clone(), user.clone());
                tokio::spawn(async move {
                    let a = node.admit(&user, &conn(i), 3, policy).await;
                    (i, a.unwrap_or_else(|e| panic!("admit failed: {e}")))
                })
            })
            .collect();
        let mut admitted = Vec::new();
        let mut evictions = Vec::new();
        for t in tasks {
            let (i, a) = t.await.unwrap_or_else(|e| panic!("task: {e}"));
            match a {
                Admission::Admitted { evicted } => {
                    admitted.push(i);
                    evictions.extend(evicted);
                }
                Admission::Rejected => {}
            }
        }
        match policy {
            LimitPolicy::Reject => {
                assert_eq!(admitted.len(), 3, "reject admits exactly the limit");
                assert!(evictions.is_empty());
            }
            LimitPolicy::EvictOldest => {
                assert_eq!(admitted.len(), 30);
                assert_eq!(
                    evictions.len(),
                    27,
                    "each lease beyond the limit evicts one"
                );
                let mut seen: Vec<_> = evictions.iter().map(|l| l.connection.clone()).collect();
                seen.sort();
                seen.dedup();
                assert_eq!(seen.len(), 27, "no lease is evicted twice");
            }
        }
        // Renewals agree: exactly the admitted and not evicted leases are live.
        let mut live = 0;
        for (n, node) in nodes.iter().enumerate() {
            let mine: Vec<_> = admitted
                .iter()
                .filter(|i| *i % 3 == n)
                .map(|i| conn(*i))
                .collect();
            let r = node
                .renew(&user, &mine, 3)
                .await
                .unwrap_or_else(|e| panic!("renew failed: {e}"));
            assert!(r.restored.is_empty(), "nothing expired: {r:?}");
            live += mine.len() - r.lost.len();
        }
        assert_eq!(live, 3, "exactly the limit stays live ({policy:?})");
    }
}

/// Rules 3 and 4: a lease not renewed stops counting within its lease time, while one that
/// is renewed keeps counting; a renewal reports an evicted lease lost once, and takes an
/// expired one again only when the user has room.
pub async fn lease_expiry_and_renewal(h: &dyn LeaseHarness) {
    let lease = Duration::from_millis(300);
    let nodes = h.nodes(3, lease).await;
    let user = fresh_user("expiry");
    let ok = |a| assert!(evicted(a).is_empty());
    ok(admit(&nodes[0], &user, &conn(0), 3, LimitPolicy::Reject).await);
    ok(admit(&nodes[0], &user, &conn(1), 3, LimitPolicy::Reject).await);
    ok(admit(&nodes[1], &user, &conn(2), 3, LimitPolicy::Reject).await);
    // Node 1 renews; node 0 has died.
    for _ in 0..8 {
        tokio::time::sleep(lease / 6).await;
        let r = nodes[1]
            .renew(&user, &[conn(2)], 3)
            .await
            .unwrap_or_else(|e| panic!("renew failed: {e}"));
        assert!(r.lost.is_empty() && r.restored.is_empty(), "{r:?}");
    }
    ok(admit(&nodes[2], &user, &conn(3), 3, LimitPolicy::Reject).await);
    ok(admit(&nodes[2], &user, &conn(4), 3, LimitPolicy::Reject).await);
    assert_eq!(
        admit(&nodes[2], &user, &conn(5), 3, LimitPolicy::Reject).await,
        Admission::Rejected,
        "the renewed lease still counts"
    );
    // Node 0 comes back: the user is full, so its expired leases are lost.
    let r = nodes[0]
        .renew(&user, &[conn(0), conn(1)], 3)
        .await
        .unwrap_or_else(|e| panic!("renew failed: {e}"));
    assert_eq!((r.lost.len(), r.restored.len()), (2, 0), "{r:?}");
    // With room, an expired lease is taken again.
    nodes[2]
        .release(&user, &conn(4))
        .await
        .unwrap_or_else(|e| panic!("release failed: {e}"));
    let r = nodes[0]
        .renew(&user, &[conn(0)], 3)
        .await
        .unwrap_or_else(|e| panic!("renew failed: {e}"));
    assert_eq!(r.restored, vec![conn(0)], "{r:?}");
    // An evicted lease is lost, once, even with room.
    let got = evicted(admit(&nodes[1], &user, &conn(6), 3, LimitPolicy::EvictOldest).await);
    assert_eq!(got.len(), 1);
    let victim = &got[0];
    let victim_node = nodes
        .iter()
        .find(|n| n.node() == &victim.node)
        .unwrap_or_else(|| panic!("the victim's node"));
    nodes[2]
        .release(&user, &conn(3))
        .await
        .unwrap_or_else(|e| panic!("release failed: {e}"));
    let r = victim_node
        .renew(&user, std::slice::from_ref(&victim.connection), 3)
        .await
        .unwrap_or_else(|e| panic!("renew failed: {e}"));
    assert_eq!(r.lost, vec![victim.connection.clone()], "{r:?}");
}

/// Rule 4's bound: a user evicted in a loop leaves at most
/// [`MAX_EVICTED_LEASES_PER_USER`] evicted leases remembered; renewing the others finds
/// no record and takes them again (when there is room), as after an expiry.
pub async fn lease_evicted_memory_is_bounded(h: &dyn LeaseHarness) {
    const EXTRA: usize = 6;
    let nodes = h.nodes(1, LONG).await;
    let node = &nodes[0];
    let user = fresh_user("evicted-bound");
    let last = MAX_EVICTED_LEASES_PER_USER + EXTRA;
    for i in 0..=last {
        admit(node, &user, &conn(i), 1, LimitPolicy::EvictOldest).await;
    }
    node.release(&user, &conn(last))
        .await
        .unwrap_or_else(|e| panic!("release failed: {e}"));
    let (mut lost, mut restored) = (0, 0);
    for i in 0..last {
        let r = node
            .renew(&user, &[conn(i)], last + 1)
            .await
            .unwrap_or_else(|e| panic!("renew failed: {e}"));
        lost += r.lost.len();
        restored += r.restored.len();
    }
    assert_eq!(
        (lost, restored),
        (MAX_EVICTED_LEASES_PER_USER, EXTRA),
        "evicted leases remembered beyond the bound"
    );
}

/// Every lease property, in order.
pub async fn run_lease_properties(h: &dyn LeaseHarness) {
    lease_limit_and_policies(h).await;
    lease_concurrent_admissions(h).await;
    lease_expiry_and_renewal(h).await;
    lease_evicted_memory_is_bounded(h).await;
}
