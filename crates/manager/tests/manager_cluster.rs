//! The per-user connection limit across nodes: the lease contract on the in-memory store,
//! and managers ("nodes") sharing one store — the limit holds for all of them, the newest
//! connection evicts the oldest wherever it is (4003) or is refused (4004), and a node that
//! stops renewing stops counting within the lease time. And delivery receipts across nodes:
//! the receipt contract on the in-memory store, and an ack on one node read on another
//! through a store whose first writes fail.

mod support;

use std::sync::Arc;
use std::time::Duration;

use agentwire_manager::conformance::{
    self, InMemoryClusterHarness, InMemoryLeaseHarness, InMemoryRatesHarness,
    InMemoryReceiptHarness,
};
use std::sync::atomic::{AtomicBool, Ordering};

use agentwire_manager::{
    Admission, BrokerError, Cluster, ConnectError, ConnectOptions, ConnectionLeases,
    InMemoryBroker, InMemoryLeases, InMemoryReceipts, LimitPolicy, ManagerConfig, NodeId,
    ReceiptStore, Renewal, StoredReceipt, UnifiedWebSocketManager,
};
use agentwire_protocol::{CloseCode, ConnectionId, Seq, UserId};
use async_trait::async_trait;
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_in_memory_store_keeps_the_lease_contract() {
    conformance::run_lease_properties(&InMemoryLeaseHarness).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_in_memory_store_keeps_the_receipt_contract() {
    conformance::run_receipt_properties(&InMemoryReceiptHarness).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_in_memory_limiter_keeps_the_rate_contract() {
    conformance::run_rate_properties(&InMemoryRatesHarness).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_memory_nodes_evict_list_and_disconnect_across_the_cluster() {
    conformance::cluster_evictions_and_admin(&InMemoryClusterHarness).await;
}

/// Leases without a control channel: evictions on other nodes wait for the renewal.
fn no_control(leases: Arc<dyn ConnectionLeases>) -> Cluster {
    Cluster {
        leases,
        control: None,
        receipts: None,
    }
}

/// Three managers over one broker and one lease store, with `lease` and `policy`.
fn nodes(lease: Duration, policy: LimitPolicy) -> Vec<UnifiedWebSocketManager> {
    let broker = Arc::new(InMemoryBroker::default());
    let store = InMemoryLeases::new(NodeId::random(), lease);
    let config = ManagerConfig {
        limit_policy: policy,
        ..ManagerConfig::default()
    };
    (0..3)
        .map(|_| {
            let leases: Arc<dyn ConnectionLeases> = Arc::new(store.for_node(NodeId::random()));
            UnifiedWebSocketManager::clustered(config.clone(), broker.clone(), no_control(leases))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fourth_connection_on_another_node_evicts_the_oldest_where_it_is() {
    let m = nodes(Duration::from_secs(3), LimitPolicy::EvictOldest);
    let u = user("alice");
    let mut oldest = connect(&m[0], &u, ConnectOptions::default()).await;
    let _second = connect(&m[1], &u, ConnectOptions::default()).await;
    let _third = connect(&m[0], &u, ConnectOptions::default()).await;
    let _fourth = connect(&m[2], &u, ConnectOptions::default()).await;
    // Node 0 learns at its next renewal (a third of the lease).
    assert_eq!(oldest.until_closed().await, CloseCode::Replaced);
    let open: usize = m
        .iter()
        .map(UnifiedWebSocketManager::connection_count)
        .sum();
    assert_eq!(open, 3);
    assert_eq!(m[0].get_stats().evictions, 1);
    assert_eq!(m[0].get_stats().leases_lost, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_eviction_on_the_admitting_node_closes_at_once() {
    let m = nodes(Duration::from_secs(60), LimitPolicy::EvictOldest);
    let u = user("bob");
    let mut oldest = connect(&m[1], &u, ConnectOptions::default()).await;
    let _b = connect(&m[0], &u, ConnectOptions::default()).await;
    let _c = connect(&m[2], &u, ConnectOptions::default()).await;
    let _d = connect(&m[1], &u, ConnectOptions::default()).await;
    // A lease of 60 s renews every 20 s: only the admitting node's own eviction can close
    // it within the wait.
    assert_eq!(oldest.until_closed().await, CloseCode::Replaced);
    assert_eq!(m[1].connection_count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reject_counts_every_node() {
    let m = nodes(Duration::from_secs(60), LimitPolicy::Reject);
    let u = user("carol");
    let _held: Vec<_> = connect_spread(&m, &u, 3).await;
    for node in &m {
        let refused = node
            .connect_user(u.clone(), ConnectOptions::default())
            .await;
        assert!(
            matches!(refused, Err(ConnectError::UserLimit { limit: 3 })),
            "{refused:?}"
        );
        assert_eq!(node.get_stats().rejections_user_limit, 1);
    }
}

async fn connect_spread(m: &[UnifiedWebSocketManager], u: &UserId, n: usize) -> Vec<Client> {
    let mut out = Vec::new();
    for i in 0..n {
        out.push(connect(&m[i % m.len()], u, ConnectOptions::default()).await);
    }
    out
}

/// A node's lease handle that dies on command: from then on every call fails, as for a
/// node that was killed (nothing renews or releases its leases).
#[derive(Debug)]
struct Dying {
    store: InMemoryLeases,
    dead: AtomicBool,
}

#[async_trait]
impl ConnectionLeases for Dying {
    fn node(&self) -> &NodeId {
        self.store.node()
    }
    fn lease_time(&self) -> Duration {
        self.store.lease_time()
    }
    async fn admit(
        &self,
        user: &UserId,
        connection: &ConnectionId,
        limit: usize,
        policy: LimitPolicy,
    ) -> Result<Admission, BrokerError> {
        self.alive()?;
        self.store.admit(user, connection, limit, policy).await
    }
    async fn renew(
        &self,
        user: &UserId,
        connections: &[ConnectionId],
        limit: usize,
    ) -> Result<Renewal, BrokerError> {
        self.alive()?;
        self.store.renew(user, connections, limit).await
    }
    async fn release(&self, user: &UserId, connection: &ConnectionId) -> Result<(), BrokerError> {
        self.alive()?;
        self.store.release(user, connection).await
    }
}

impl Dying {
    fn alive(&self) -> Result<(), BrokerError> {
        if self.dead.load(Ordering::Relaxed) {
            Err(BrokerError::Unavailable("the node is dead".into()))
        } else {
            Ok(())
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_stops_renewing_stops_counting_within_the_lease() {
    let lease = Duration::from_millis(300);
    let broker = Arc::new(InMemoryBroker::default());
    let store = InMemoryLeases::new(NodeId::random(), lease);
    let config = ManagerConfig {
        limit_policy: LimitPolicy::Reject,
        ..ManagerConfig::default()
    };
    let dying = Arc::new(Dying {
        store: store.for_node(NodeId::random()),
        dead: AtomicBool::new(false),
    });
    let doomed = UnifiedWebSocketManager::clustered(
        config.clone(),
        broker.clone(),
        no_control(dying.clone()),
    );
    let survivor = UnifiedWebSocketManager::clustered(config, broker, no_control(Arc::new(store)));
    let u = user("dave");
    let _a = connect(&doomed, &u, ConnectOptions::default()).await;
    let _b = connect(&doomed, &u, ConnectOptions::default()).await;
    let _c = connect(&survivor, &u, ConnectOptions::default()).await;
    assert!(matches!(
        survivor
            .connect_user(u.clone(), ConnectOptions::default())
            .await,
        Err(ConnectError::UserLimit { .. })
    ));
    dying.dead.store(true, Ordering::Relaxed);
    let mut opened = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while opened.len() < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the dead node's leases still count"
        );
        match survivor
            .connect_user(u.clone(), ConnectOptions::default())
            .await
        {
            Ok(c) => opened.push(c),
            Err(ConnectError::UserLimit { .. }) => tokio::time::sleep(lease / 4).await,
            Err(e) => panic!("{e}"),
        }
    }
    assert!(doomed.get_stats().lease_failures > 0);
}

/// A receipt store whose next `failures` records fail as if the store were unreachable,
/// and whose records can be made to wait at a gate (a flush under way while the sweeper
/// runs).
#[derive(Debug)]
struct FlakyReceipts {
    store: InMemoryReceipts,
    /// How many writes fail from now on.
    failures: std::sync::atomic::AtomicU32,
    /// Writes begun.
    calls: std::sync::atomic::AtomicU32,
    /// When set, each write waits there for a permit first: a flush under way.
    gate: Option<tokio::sync::Semaphore>,
}

impl FlakyReceipts {
    /// Over `store`, failing the next `failures` writes; with `gated`, each write first
    /// waits for a permit of [`FlakyReceipts::gate`].
    fn new(store: &InMemoryReceipts, failures: u32, gated: bool) -> Arc<Self> {
        Arc::new(FlakyReceipts {
            store: store.clone(),
            failures: std::sync::atomic::AtomicU32::new(failures),
            calls: std::sync::atomic::AtomicU32::new(0),
            gate: gated.then(|| tokio::sync::Semaphore::new(0)),
        })
    }

    fn open_gate(&self, permits: usize) {
        self.gate
            .as_ref()
            .expect("a gated store")
            .add_permits(permits);
    }
}

#[async_trait]
impl ReceiptStore for FlakyReceipts {
    fn ttl(&self) -> Duration {
        self.store.ttl()
    }

    async fn record(&self, user: &UserId, receipt: &StoredReceipt) -> Result<(), BrokerError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if let Some(gate) = &self.gate {
            gate.acquire().await.expect("open gate").forget();
        }
        let left = self.failures.load(Ordering::SeqCst);
        if left > 0 {
            self.failures.store(left - 1, Ordering::SeqCst);
            return Err(BrokerError::unavailable(
                "the store is down",
                std::io::Error::other("down"),
            ));
        }
        self.store.record(user, receipt).await
    }

    async fn read(&self, user: &UserId) -> Result<Option<StoredReceipt>, BrokerError> {
        self.store.read(user).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ack_on_one_node_reaches_another_through_the_receipt_store_after_failed_writes() {
    let broker = Arc::new(InMemoryBroker::default());
    let leases = InMemoryLeases::new(NodeId::random(), Duration::from_secs(30));
    let store = InMemoryReceipts::new(Duration::from_secs(60), 100);
    let node = |leases: InMemoryLeases, receipts: Arc<dyn ReceiptStore>| {
        UnifiedWebSocketManager::clustered(
            ManagerConfig::default(),
            broker.clone(),
            Cluster {
                leases: Arc::new(leases),
                control: None,
                receipts: Some(receipts),
            },
        )
    };
    let a = node(
        leases.for_node(NodeId::random()),
        FlakyReceipts::new(&store, 2, false),
    );
    let b = node(leases, Arc::new(store.clone()));
    assert!(a.receipts_shared() && b.receipts_shared());
    let alice = user("alice");
    let mut client = connect(&a, &alice, live_only()).await;
    let seq = emit(&b, &alice, 1).await;
    // The event itself, not just any frame: an ack is capped at what the connection was sent.
    client.until_seq(seq).await;
    client.conn.written();
    client.conn.ack(Seq(seq));
    let epoch = client.conn.epoch().expect("an epoch");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let got = b
            .receipt_in(&alice, &epoch)
            .await
            .expect("the store answers");
        if got == (Seq(seq), Seq(seq)) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "node B never saw node A's ack: {got:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        a.get_stats().receipt_flush_failures >= 1,
        "the failed writes are counted and retried"
    );
    assert_eq!(
        b.receipt(&alice).epoch,
        None,
        "node B's own sockets did nothing"
    );
}

#[tokio::test(start_paused = true)]
async fn a_receipt_past_its_ttl_is_kept_until_its_change_is_written_to_the_store() {
    let store = InMemoryReceipts::new(Duration::from_secs(600), 100);
    let flaky = FlakyReceipts::new(&store, u32::MAX, false);
    let m = node_with_receipts(flaky.clone());
    let alice = user("alice");
    let seq = ack_one_and_leave(&m, &alice, 1).await;
    tokio::time::advance(Duration::from_secs(3)).await;
    m.sweep();
    assert!(m.get_stats().receipt_flush_failures >= 1);
    assert_eq!(
        m.receipt(&alice).acked_seq,
        Seq(seq),
        "its change never reached the store"
    );
    assert_eq!(m.get_stats().receipts_expired, 0);

    flaky.failures.store(0, Ordering::SeqCst);
    tokio::time::advance(Duration::from_secs(2)).await;
    settle().await;
    written_then_forgotten(&store, &m, &alice, seq).await;
}

/// The store has `user`'s ack of `seq`, and the node, once it swept, forgets the receipt.
async fn written_then_forgotten(
    store: &InMemoryReceipts,
    m: &UnifiedWebSocketManager,
    user: &UserId,
    seq: u64,
) {
    let stored = store.read(user).await.expect("read").expect("written");
    assert_eq!(stored.acked_seq, Seq(seq));
    m.sweep();
    assert_eq!(m.receipt(user).epoch, None, "written, then forgotten");
    assert_eq!(m.get_stats().receipts_expired, 1);
}

/// A node with `receipt_ttl` zero, writing its receipts to `store`.
fn node_with_receipts(store: Arc<dyn ReceiptStore>) -> UnifiedWebSocketManager {
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
            receipts: Some(store),
        },
    )
}

/// Connects, takes event `n` and acks it, then leaves: the ack's seq.
async fn ack_one_and_leave(m: &UnifiedWebSocketManager, u: &UserId, n: u64) -> u64 {
    let mut client = connect(m, u, live_only()).await;
    let seq = emit(m, u, n).await;
    client.until_seq(seq).await;
    client.conn.ack(Seq(seq));
    drop(client);
    settle().await;
    seq
}

/// A node whose user `alice` acked event 1 and left, and whose flush has taken that ack
/// and waits at the store's gate with it (the write failing once let through, when
/// `fail_first`): the store, the gated store, the node, alice and the seq.
async fn a_write_under_way(
    fail_first: bool,
) -> (
    InMemoryReceipts,
    Arc<FlakyReceipts>,
    UnifiedWebSocketManager,
    UserId,
    u64,
) {
    let store = InMemoryReceipts::new(Duration::from_secs(600), 100);
    let gated = FlakyReceipts::new(&store, u32::from(fail_first), true);
    let m = node_with_receipts(gated.clone());
    let alice = user("alice");
    let seq = ack_one_and_leave(&m, &alice, 1).await;
    tokio::time::advance(agentwire_manager::RECEIPT_FLUSH_INTERVAL * 2).await;
    settle().await;
    assert_eq!(gated.calls.load(Ordering::SeqCst), 1, "a write under way");
    (store, gated, m, alice, seq)
}

#[tokio::test(start_paused = true)]
async fn a_receipt_whose_flush_is_under_way_outlives_the_sweep_until_it_is_written() {
    let (store, gated, m, alice, seq) = a_write_under_way(true).await;
    m.sweep();
    assert_eq!(
        m.get_stats().receipts_expired,
        0,
        "a receipt whose change is not yet in the store is kept"
    );
    // That write fails; the next flush writes the change.
    gated.open_gate(100);
    settle().await;
    tokio::time::advance(agentwire_manager::RECEIPT_FLUSH_INTERVAL * 2).await;
    settle().await;
    written_then_forgotten(&store, &m, &alice, seq).await;
}

#[tokio::test(start_paused = true)]
async fn a_receipt_that_moved_while_its_write_was_under_way_waits_for_the_next_write() {
    let (store, gated, m, alice, first) = a_write_under_way(false).await;
    // Alice comes back and acks another event while that write waits.
    let second = ack_one_and_leave(&m, &alice, 2).await;
    assert!(second > first);
    // The write of the first ack succeeds; the second is not in the store yet.
    gated.open_gate(1);
    settle().await;
    let stored = store.read(&alice).await.expect("read").expect("written");
    assert_eq!(stored.acked_seq, Seq(first));
    m.sweep();
    assert_eq!(
        m.get_stats().receipts_expired,
        0,
        "the second ack waits for its write"
    );
    gated.open_gate(100);
    tokio::time::advance(agentwire_manager::RECEIPT_FLUSH_INTERVAL * 2).await;
    settle().await;
    let stored = store.read(&alice).await.expect("read").expect("written");
    assert_eq!(stored.acked_seq, Seq(second));
    m.sweep();
    assert_eq!(m.get_stats().receipts_expired, 1, "written, then forgotten");
}
