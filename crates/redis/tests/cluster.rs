//! Connection leases, the control channel, the publish rate limiter and the receipt store on
//! Redis: the lease and receipt contracts (the conformance properties) on a
//! standalone Redis and on a 3-master cluster, and three managers — three nodes, each with
//! its own broker — holding one user to the limit together.

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use agentwire_manager::conformance::{
    self, ClusterHarness, LeaseHarness, RatesHarness, ReceiptHarness,
};
use agentwire_manager::{
    Cluster, ConnectError, ConnectOptions, ConnectionLeases, LimitPolicy,
    MAX_EVICTED_LEASES_PER_USER, ManagerConfig, Outbound, PublishRates, ReceiptStore,
    UnifiedWebSocketManager,
};
use agentwire_protocol::{CloseCode, ConnectionId, EventId};
use agentwire_redis::testing::{self, RedisCluster};
use async_trait::async_trait;
use support::{RedisHarness, user};

/// Hands out nodes on a fresh key prefix per call, remembering each harness to clean up.
struct Leases {
    base: RedisHarness,
    made: Mutex<Vec<RedisHarness>>,
}

impl Leases {
    fn new(base: RedisHarness) -> Self {
        Leases {
            base,
            made: Mutex::new(Vec::new()),
        }
    }

    fn fresh(&self) -> RedisHarness {
        RedisHarness {
            target: self.base.target.clone(),
            prefix: format!(
                "{}l{:06x}:",
                self.base.prefix,
                rand::random::<u32>() & 0xff_ffff
            ),
            nodes: self.base.nodes.clone(),
            tls: self.base.tls.clone(),
        }
    }

    async fn clean(&self) {
        let made: Vec<RedisHarness> = std::mem::take(&mut *self.made.lock().expect("lock"));
        for h in made {
            h.delete_keys().await;
        }
    }
}

#[async_trait]
impl LeaseHarness for Leases {
    async fn nodes(&self, nodes: usize, lease_time: Duration) -> Vec<Arc<dyn ConnectionLeases>> {
        let h = self.fresh();
        let mut out: Vec<Arc<dyn ConnectionLeases>> = Vec::new();
        for _ in 0..nodes {
            let broker = h.connect(h.config().connection_lease(lease_time)).await;
            out.push(Arc::new(broker.leases()));
        }
        self.made.lock().expect("lock").push(h);
        out
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_keeps_the_lease_contract() {
    let Some(url) = testing::require("leases on Redis", testing::shared_redis()) else {
        return;
    };
    let h = Leases::new(RedisHarness::standalone(&url, "leases"));
    conformance::run_lease_properties(&h).await;
    h.clean().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_cluster_keeps_the_lease_contract() {
    let Some(cluster) = testing::require("leases on a cluster", RedisCluster::start(3)) else {
        return;
    };
    let h = Leases::new(RedisHarness::cluster(cluster.urls(), "leases-cluster"));
    conformance::run_lease_properties(&h).await;
    drop(cluster);
}

/// A user evicted in a loop: Redis remembers `MAX_EVICTED_LEASES_PER_USER` evicted leases
/// and counts each one it forgets past them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn evicted_leases_forgotten_past_the_bound_are_counted() {
    let Some(url) = testing::require("leases on Redis", testing::shared_redis()) else {
        return;
    };
    let h = RedisHarness::standalone(&url, "leases-forgotten");
    let broker = h
        .connect(h.config().connection_lease(Duration::from_secs(60)))
        .await;
    let leases = broker.leases();
    let u = user("evicted-loop");
    let extra = 5;
    for i in 0..=MAX_EVICTED_LEASES_PER_USER + extra {
        let c = ConnectionId::new(format!("c_{i}")).expect("a valid id");
        leases
            .admit(&u, &c, 1, LimitPolicy::EvictOldest)
            .await
            .expect("admit");
    }
    // The bound is applied at the start of each call: one more call forgets the last one.
    leases
        .release(&u, &ConnectionId::new("c_none").expect("a valid id"))
        .await
        .expect("release");
    assert_eq!(broker.metrics().evicted_leases_forgotten, extra as u64);
    h.delete_keys().await;
}

/// 30 concurrent connects of one user over three managers, each on its own broker:
/// exactly 3 stay open; the rest are closed with 4003 (evict-oldest) or refused with 4004
/// (reject).
async fn thirty_connects(h: &RedisHarness, policy: LimitPolicy) {
    let config = ManagerConfig {
        limit_policy: policy,
        ..ManagerConfig::default()
    };
    let mut nodes = Vec::new();
    for _ in 0..3 {
        let broker = h
            .connect(h.config().connection_lease(Duration::from_millis(600)))
            .await;
        let cluster = Cluster {
            leases: Arc::new(broker.leases()),
            control: None,
            receipts: None,
        };
        nodes.push(UnifiedWebSocketManager::clustered(
            config.clone(),
            Arc::new(broker),
            cluster,
        ));
    }
    let u = user(&format!("thirty-{}", EventId::generate()));
    let tasks: Vec<_> = (0..30)
        .map(|i| {
            let (node, u) = (nodes[i % 3].clone(), u.clone());
            tokio::spawn(async move { node.connect_user(u, ConnectOptions::default()).await })
        })
        .collect();
    let mut open = Vec::new();
    let mut refused = 0;
    for t in tasks {
        match t.await.expect("connect task") {
            Ok(c) => open.push(c),
            Err(ConnectError::UserLimit { limit: 3 }) => refused += 1,
            Err(e) => panic!("{e}"),
        }
    }
    // Evicted connections on other nodes close at their node's next renewal.
    let mut closed = 0;
    let mut frames = Vec::new();
    let mut still_open = Vec::new();
    for c in open {
        let code = loop {
            frames.clear();
            match tokio::time::timeout(Duration::from_secs(5), c.next_frames(&mut frames, 64)).await
            {
                Ok(Outbound::Close(code)) => break Some(code),
                Ok(Outbound::Frames) => continue,
                Err(_) => break None,
            }
        };
        match code {
            Some(code) => {
                assert_eq!(code, CloseCode::Replaced);
                closed += 1;
            }
            None => still_open.push(c),
        }
    }
    assert_eq!(
        still_open.len(),
        3,
        "{policy:?}: {closed} closed, {refused} refused"
    );
    match policy {
        LimitPolicy::EvictOldest => assert_eq!((closed, refused), (27, 0)),
        LimitPolicy::Reject => assert_eq!((closed, refused), (0, 27)),
    }
    let open_now: usize = nodes
        .iter()
        .map(UnifiedWebSocketManager::connection_count)
        .sum();
    assert_eq!(open_now, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_connects_over_three_nodes_leave_three_open() {
    let Some(url) = testing::require("leases on Redis", testing::shared_redis()) else {
        return;
    };
    let h = RedisHarness::standalone(&url, "leases-thirty");
    thirty_connects(&h, LimitPolicy::EvictOldest).await;
    thirty_connects(&h, LimitPolicy::Reject).await;
    h.delete_keys().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_connects_over_three_nodes_on_a_cluster_leave_three_open() {
    let Some(cluster) = testing::require("leases on a cluster", RedisCluster::start(3)) else {
        return;
    };
    let h = RedisHarness::cluster(cluster.urls(), "leases-thirty-cluster");
    thirty_connects(&h, LimitPolicy::EvictOldest).await;
    thirty_connects(&h, LimitPolicy::Reject).await;
    drop(cluster);
}

/// Managers on brokers of their own, one Redis, each a node of the cluster through
/// `RedisBroker::cluster` (leases and the control channel).
struct Nodes(Leases);

#[async_trait]
impl ClusterHarness for Nodes {
    async fn managers(
        &self,
        nodes: usize,
        config: ManagerConfig,
        lease: Duration,
    ) -> Vec<UnifiedWebSocketManager> {
        let h = self.0.fresh();
        let mut out = Vec::new();
        let mut brokers = Vec::new();
        for _ in 0..nodes {
            let broker = h.connect(h.config().connection_lease(lease)).await;
            let cluster = broker.cluster();
            brokers.push(broker.clone());
            out.push(UnifiedWebSocketManager::clustered(
                config.clone(),
                Arc::new(broker),
                cluster,
            ));
        }
        // Every node's control channel is up and present before a request counts on it.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !brokers.iter().all(|b| b.control_up()) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "control channels down"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.0.made.lock().expect("lock").push(h);
        out
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_nodes_evict_list_and_disconnect_across_the_cluster() {
    let Some(url) = testing::require("control on Redis", testing::shared_redis()) else {
        return;
    };
    let h = Nodes(Leases::new(RedisHarness::standalone(&url, "control")));
    conformance::cluster_evictions_and_admin(&h).await;
    h.0.clean().await;
}

/// The same over mutual TLS: leases, the control channel's own pub/sub connection and
/// its requests, all on `rediss://`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_nodes_over_tls_evict_list_and_disconnect_across_the_cluster() {
    let Some(redis) = testing::require("control over TLS", testing::TlsRedis::start(true)) else {
        return;
    };
    let h = Nodes(Leases::new(support::tls_harness(
        &redis,
        "control-tls",
        redis.client_tls(),
    )));
    conformance::cluster_evictions_and_admin(&h).await;
    h.0.clean().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cluster_nodes_evict_list_and_disconnect_across_the_cluster() {
    let Some(cluster) = testing::require("control on a cluster", RedisCluster::start(3)) else {
        return;
    };
    let h = Nodes(Leases::new(RedisHarness::cluster(
        cluster.urls(),
        "control-cluster",
    )));
    conformance::cluster_evictions_and_admin(&h).await;
    drop(cluster);
}

/// Limiters on brokers of their own, one Redis.
struct Rates(Leases);

#[async_trait]
impl RatesHarness for Rates {
    async fn limiters(&self, nodes: usize) -> Vec<Arc<dyn PublishRates>> {
        let h = self.0.fresh();
        let mut out: Vec<Arc<dyn PublishRates>> = Vec::new();
        for _ in 0..nodes {
            out.push(Arc::new(h.connect(h.config()).await.rates()));
        }
        self.0.made.lock().expect("lock").push(h);
        out
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_keeps_the_rate_contract() {
    let Some(url) = testing::require("rates on Redis", testing::shared_redis()) else {
        return;
    };
    let h = Rates(Leases::new(RedisHarness::standalone(&url, "rates")));
    conformance::run_rate_properties(&h).await;
    h.0.clean().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_cluster_keeps_the_rate_contract() {
    let Some(cluster) = testing::require("rates on a cluster", RedisCluster::start(3)) else {
        return;
    };
    let h = Rates(Leases::new(RedisHarness::cluster(
        cluster.urls(),
        "rates-cluster",
    )));
    conformance::run_rate_properties(&h).await;
    drop(cluster);
}

/// Receipt stores on brokers of their own, one Redis.
struct Receipts(Leases);

#[async_trait]
impl ReceiptHarness for Receipts {
    async fn stores(&self, handles: usize, ttl: Duration) -> Vec<Arc<dyn ReceiptStore>> {
        let h = self.0.fresh();
        let mut out: Vec<Arc<dyn ReceiptStore>> = Vec::new();
        for _ in 0..handles {
            out.push(Arc::new(
                h.connect(
                    h.config()
                        .max_age(ttl)
                        .dedupe_window(ttl)
                        .stream_idle_ttl(ttl),
                )
                .await
                .receipts(),
            ));
        }
        self.0.made.lock().expect("lock").push(h);
        out
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_keeps_the_receipt_contract() {
    let Some(url) = testing::require("receipts on Redis", testing::shared_redis()) else {
        return;
    };
    let h = Receipts(Leases::new(RedisHarness::standalone(&url, "receipts")));
    conformance::run_receipt_properties(&h).await;
    h.0.clean().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_cluster_keeps_the_receipt_contract() {
    let Some(cluster) = testing::require("receipts on a cluster", RedisCluster::start(3)) else {
        return;
    };
    let h = Receipts(Leases::new(RedisHarness::cluster(
        cluster.urls(),
        "receipts-cluster",
    )));
    conformance::run_receipt_properties(&h).await;
    drop(cluster);
}
