//! `UnifiedWebSocketManager`: the registry of live connections and the single point every
//! event passes. One concept per file: `registry` (who is connected, limits, fan-out),
//! `connect` (a new connection and where its stream starts), `catch_up` (replaying
//! history, paced by the writer, and resyncs), `emit` (validate, serialize once, publish),
//! `reads` (history, event lookup, broker health), `stats`, `counters`,
//! `load` (how busy the runtime is, which pauses direct writes), `sweeper`
//! (heartbeat deadlines, history trimming), `watchdog` (ending stalled runs), `receipts` (how far each user's clients got), `run_ends` (the observer of runs' terminal events), `singleton` (the process-wide manager) and
//! `connection` (one connection's queue and handle).

use foldhash::HashMap;
use foldhash::fast::RandomState;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use agentwire_protocol::UserId;
use tokio::sync::OnceCell;

use crate::broker::{Broker, Subscriber};
use crate::config::ManagerConfig;
use crate::control::{Cluster, ClusterControl};
use crate::leases::{ConnectionLeases, NodeId};
use crate::memory::InMemoryBroker;
use crate::receipt_store::ReceiptStore;

mod catch_up;
mod cluster;
mod connect;
mod connection;
mod counters;
mod emit;
mod held;
mod load;
mod reads;
mod receipts;
mod registry;
mod run_ends;
mod singleton;
mod stats;
mod sweeper;
mod watchdog;

pub use connect::{ConnectError, ConnectOptions, Resume};
pub(crate) use connection::ConnShared;
pub use connection::{Connection, DirectSink, FanOutTime, MAX_MERGED_DELTA_BYTES, Outbound};
pub(crate) use counters::Counters;
pub use emit::{EmitError, PreparedEvent};
pub use load::{
    DIRECT_WRITES_PAUSE_ABOVE, DIRECT_WRITES_RESUME_BELOW, LOAD_PROBE_INTERVAL, WRITE_MODE_DWELL,
    WRITE_MODE_MAX_DWELL, WRITE_MODE_TRIAL,
};
pub use receipts::DeliveryReceipt;
use registry::Router;
pub use run_ends::{ObserverTaken, RunEnded};
pub use stats::ManagerStats;

const REGISTRY_SHARDS: usize = 64;

#[derive(Debug)]
struct UserEntry {
    /// Oldest first.
    conns: Vec<Arc<ConnShared>>,
    subscription: Arc<OnceCell<()>>,
}

pub(crate) struct Inner {
    config: ManagerConfig,
    broker: Arc<dyn Broker>,
    /// This node's name in a cluster (its leases', its control channel's).
    node: NodeId,
    /// The per-user limit across a cluster; `None` counts this node's connections only.
    leases: Option<Arc<dyn ConnectionLeases>>,
    /// The channel to the other nodes; `None` for a node on its own.
    control: Option<Arc<dyn ClusterControl>>,
    shards: Box<[Mutex<HashMap<UserId, UserEntry>>]>,
    hasher: RandomState,
    total: AtomicUsize,
    pub(crate) counters: Counters,
    router: OnceLock<Arc<dyn Subscriber>>,
    sweeper_started: AtomicBool,
    /// How busy the runtime is, which pauses direct writes while the node is saturated.
    load: load::RuntimeLoad,
    watchdog: watchdog::Watchdog,
    receipts: receipts::Receipts,
    /// The users' receipts across the cluster; `None` for a node on its own.
    receipt_store: Option<Arc<dyn ReceiptStore>>,
    run_end_observer: OnceLock<run_ends::RunEndObserver>,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UnifiedWebSocketManager")
            .field("connections", &self.total.load(Ordering::Relaxed))
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// A handle on a manager that does not keep it alive ([`UnifiedWebSocketManager::downgrade`]).
#[derive(Debug, Clone)]
pub struct WeakManager(std::sync::Weak<Inner>);

impl WeakManager {
    /// The manager, while something else keeps it alive.
    pub fn upgrade(&self) -> Option<UnifiedWebSocketManager> {
        self.0
            .upgrade()
            .map(|inner| UnifiedWebSocketManager { inner })
    }
}

/// The one manager of a node: who is connected, and the single point every event passes.
///
/// A cheap handle (`Clone` shares it). Create one per server with [`Self::new`], or reach
/// the process-wide instance with [`Self::global`].
#[derive(Debug, Clone)]
pub struct UnifiedWebSocketManager {
    pub(crate) inner: Arc<Inner>,
}

impl UnifiedWebSocketManager {
    /// A manager over `broker`. The per-user connection limit counts this node's
    /// connections (one node: the whole deployment).
    pub fn new(config: ManagerConfig, broker: Arc<dyn Broker>) -> Self {
        Self::build(config, broker, None)
    }

    /// A manager over `broker` that is one node of a cluster: its per-user connection
    /// limit holds across every node sharing `cluster.leases` (each connection holds a
    /// lease there, taken before it is registered, renewed every third of the lease time
    /// and dropped when it is removed; a connection whose lease a newer one took closes
    /// with 4003), `cluster.control` carries evictions and the admin's requests to the
    /// other nodes, and `cluster.receipts` shares the users' delivery receipts.
    pub fn clustered(config: ManagerConfig, broker: Arc<dyn Broker>, cluster: Cluster) -> Self {
        Self::build(config, broker, Some(cluster))
    }

    fn build(config: ManagerConfig, broker: Arc<dyn Broker>, cluster: Option<Cluster>) -> Self {
        let (node, leases, control, receipt_store) = match cluster {
            Some(c) => (
                c.leases.node().clone(),
                Some(c.leases),
                c.control,
                c.receipts,
            ),
            None => (NodeId::random(), None, None, None),
        };
        let inner = Arc::new(Inner {
            config,
            broker,
            node,
            leases,
            control,
            shards: (0..REGISTRY_SHARDS)
                .map(|_| Mutex::new(HashMap::default()))
                .collect(),
            hasher: RandomState::default(),
            total: AtomicUsize::new(0),
            counters: Counters::default(),
            router: OnceLock::new(),
            sweeper_started: AtomicBool::new(false),
            load: load::RuntimeLoad::default(),
            watchdog: watchdog::Watchdog::default(),
            receipts: receipts::Receipts::default(),
            receipt_store,
            run_end_observer: OnceLock::new(),
        });
        let router: Arc<dyn Subscriber> = Arc::new(Router {
            inner: Arc::downgrade(&inner),
        });
        let _ = inner.router.set(router);
        let manager = UnifiedWebSocketManager { inner };
        manager.attach_control();
        manager
    }

    /// A manager with the default configuration over a fresh in-memory broker.
    pub fn in_memory() -> Self {
        Self::new(
            ManagerConfig::default(),
            Arc::new(InMemoryBroker::default()),
        )
    }

    /// A handle that does not keep the manager alive: for a task that should end with it.
    pub fn downgrade(&self) -> WeakManager {
        WeakManager(Arc::downgrade(&self.inner))
    }

    /// Whether two handles are the same manager.
    pub fn same_as(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }

    /// The configuration in force.
    pub fn config(&self) -> &ManagerConfig {
        &self.inner.config
    }
}
