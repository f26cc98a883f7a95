//! `UnifiedWebSocketManager`: the registry of live connections and the single point every
//! event passes.

use foldhash::HashMap;
use foldhash::fast::RandomState;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};

use agentwire_protocol::{
    CloseCode, ConnectionEstablished, ConnectionId, DecodeError, Epoch, Event, EventId, EventType,
    RunId, RunStep, RunViolation, Seq, ServerFrame, UserId,
};
use bytes::Bytes;
use tokio::sync::OnceCell;
use tokio::time::Instant;

use crate::broker::{
    Accepted, Broker, BrokerError, EventDigest, NewEvent, StoredEvent, Subscriber,
};
use crate::config::{LimitPolicy, ManagerConfig};
use crate::connection::{ConnShared, Connection, GoLive, Pushed};
use crate::memory::InMemoryBroker;
use crate::runs::{PublisherId, RunGuard, RunLimit};

const REGISTRY_SHARDS: usize = 64;

/// Where a new connection's stream starts.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Resume {
    /// Everything history still holds, then live events (default: events published while
    /// the user had no connection arrive on connect).
    #[default]
    FromHistoryStart,
    /// Events after `last_seq` of `epoch`, then live events; a `replay_gap` first when
    /// history cannot serve that.
    After {
        /// The newest `seq` the client has.
        last_seq: Seq,
        /// The epoch that `last_seq` belongs to.
        epoch: Epoch,
    },
    /// Only events accepted from now on.
    LiveOnly,
}

/// Options of [`UnifiedWebSocketManager::connect_user`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ConnectOptions {
    /// Where the stream starts.
    pub resume: Resume,
}

/// Why a connection was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// The node holds `max_connections` connections.
    #[error("node connection limit of {limit} reached")]
    NodeFull {
        /// The limit.
        limit: usize,
    },
    /// The user holds `max_connections_per_user` connections and the policy is `reject`.
    #[error("user connection limit of {limit} reached")]
    UserLimit {
        /// The limit.
        limit: usize,
    },
    /// The broker could not subscribe or read history.
    #[error(transparent)]
    Broker(#[from] BrokerError),
}

impl ConnectError {
    /// The close code that tells the client what happened.
    pub fn close_code(&self) -> CloseCode {
        match self {
            ConnectError::NodeFull { .. } => CloseCode::TryAgainLater,
            ConnectError::UserLimit { .. } => CloseCode::Rejected,
            ConnectError::Broker(_) => CloseCode::InternalError,
        }
    }
}

/// Why an event was not emitted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EmitError {
    /// The event is invalid (e.g. a run event without `run_id`).
    #[error("invalid event: {0}")]
    Invalid(#[from] DecodeError),
    /// The serialized event is larger than `max_event_bytes`.
    #[error("event is {size} bytes; the limit is {limit}")]
    TooLarge {
        /// Its size in bytes.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// The `event_id` was already accepted (as `seq`) for a different event: ids name one
    /// event each. Nothing was stored; retrying cannot help.
    #[error("event_id {event_id} was already accepted as seq {} for a different event", seq.get())]
    Conflict {
        /// The reused id.
        event_id: EventId,
        /// Where the id's first event sits in the stream.
        seq: Seq,
    },
    /// The event breaks its run's lifecycle, as the broker found it with the event's run
    /// guard ([`PreparedEvent::guarded`]). Nothing was stored; retrying cannot help.
    #[error("run lifecycle violation: {0}")]
    Violation(RunViolation),
    /// The event's run does not fit the broker's run-state bounds (see
    /// [`crate::RunLimits`]). Nothing was stored; it may fit once other runs have ended.
    #[error("no room for the run's state: {0}")]
    TooManyRuns(RunLimit),
    /// Not published because another event of the same user in the same
    /// [`UnifiedWebSocketManager::emit_prepared_many`] call — the one at `index` — was
    /// refused: the broker takes a user's events all or nothing.
    #[error("not published: event [{index}] of the same user was refused")]
    BatchRefused {
        /// Where the refused event sits among the events of the call.
        index: usize,
    },
    /// The broker did not accept it.
    #[error(transparent)]
    Broker(BrokerError),
}

impl From<BrokerError> for EmitError {
    fn from(e: BrokerError) -> Self {
        match e {
            BrokerError::Conflict { event_id, seq } => EmitError::Conflict { event_id, seq },
            BrokerError::Violation(v) => EmitError::Violation(v),
            BrokerError::TooManyRuns(limit) => EmitError::TooManyRuns(limit),
            other => EmitError::Broker(other),
        }
    }
}

impl EmitError {
    /// Whether retrying the same event may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, EmitError::Broker(e) if e.is_transient())
    }
}

/// An event validated and serialized once, with its `event_id` fixed, ready to publish —
/// and to publish again after a transient failure without risk of a duplicate.
#[derive(Debug, Clone)]
pub struct PreparedEvent {
    user: UserId,
    event_type: EventType,
    event_id: EventId,
    body: Bytes,
    digest: EventDigest,
    /// The event's run and the step it takes, for a run event.
    run: Option<(RunId, RunStep)>,
    /// Who a run the event starts counts against, when the broker checks its run.
    owner: Option<PublisherId>,
}

impl PreparedEvent {
    /// Whose stream it goes to.
    pub fn user_id(&self) -> &UserId {
        &self.user
    }

    /// Its type.
    pub fn event_type(&self) -> EventType {
        self.event_type
    }

    /// Its id; every publish attempt uses it.
    pub fn event_id(&self) -> &EventId {
        &self.event_id
    }

    /// Its digest: what an `event_id` reused for another event is told apart by.
    pub fn digest(&self) -> EventDigest {
        self.digest
    }

    /// The step the event takes in its run (`None` for a `custom` event).
    pub fn run_step(&self) -> Option<&RunStep> {
        self.run.as_ref().map(|(_, step)| step)
    }

    /// The same event, checked by the broker against its run's lifecycle atomically with
    /// its append (rule 11 of [`Broker`]); a run it starts counts against `owner`. A
    /// `custom` event stays unchecked.
    #[must_use]
    pub fn guarded(mut self, owner: PublisherId) -> Self {
        self.owner = Some(owner);
        self
    }

    /// The guard the broker checks the event with, if it is guarded.
    pub fn run_guard(&self) -> Option<RunGuard> {
        let (run_id, step) = self.run.as_ref()?;
        let owner = self.owner.as_ref()?;
        Some(RunGuard::new(run_id.clone(), step.clone(), owner.clone()))
    }

    fn to_new_event(&self) -> NewEvent {
        NewEvent::with_digest(
            self.event_type,
            Some(self.event_id.clone()),
            self.body.clone(),
            self.digest,
            self.run_guard(),
        )
    }
}

/// A snapshot of the manager's counters and sizes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ManagerStats {
    /// Live connections on this node.
    pub connections: usize,
    /// Users with at least one live connection.
    pub users: usize,
    /// The most connections any one user holds.
    pub max_connections_of_a_user: usize,
    /// Connections accepted since start.
    pub connections_opened: u64,
    /// Connections removed since start.
    pub connections_closed: u64,
    /// Events accepted by the broker through this manager (duplicates excluded).
    pub events_emitted: u64,
    /// Events emitted, by type, in [`EventType::ALL`] order.
    pub events_emitted_by_type: [u64; 7],
    /// Live events queued to connections (one per connection reached).
    pub events_delivered: u64,
    /// History events queued to resuming connections.
    pub events_replayed: u64,
    /// `replay_gap` frames sent.
    pub replay_gaps: u64,
    /// Emits answered as duplicates of an earlier `event_id`.
    pub events_deduplicated: u64,
    /// Emits that failed.
    pub emit_failures: u64,
    /// Connections closed with 4003 to make room for a newer one of the same user.
    pub evictions: u64,
    /// Connections refused with 4004 (user limit, policy `reject`).
    pub rejections_user_limit: u64,
    /// Connections refused with 1013 (node limit).
    pub rejections_node_full: u64,
    /// Connections closed with 1013 because their queue overflowed.
    pub slow_consumer_closes: u64,
    /// Connections closed because their peer went silent.
    pub heartbeat_timeouts: u64,
    /// Events held in the broker's history.
    pub history_events: u64,
    /// Bytes held in the broker's history.
    pub history_bytes: u64,
    /// Users whose stream the broker holds.
    pub history_users: u64,
    /// Events trimmed from history by its bounds.
    pub history_trimmed: u64,
    /// Connections closed with 1011 because their catch-up could not read history, or
    /// history did not reach events the broker had delivered, within
    /// `ManagerConfig::catch_up_wait`.
    pub catch_up_failures: u64,
    /// Resync signals from the broker (each catches a user's connections up from history).
    pub resyncs: u64,
    /// Emits refused because their `event_id` was already accepted for another event.
    pub event_id_conflicts: u64,
    /// Event ids the broker remembers for deduplication (in history or its dedupe window).
    pub dedupe_ids: u64,
    /// Frames waiting in connection queues, over all connections.
    pub queued_frames: u64,
    /// Bytes waiting in connection queues, over all connections (each connection's at most
    /// its queue bound, `QueueLimits::max_bytes`).
    pub queued_bytes: u64,
    /// The broker's run state for guarded events, and what it refused (see
    /// [`crate::RunLimits`]).
    pub runs: crate::RunStats,
}

/// What one live connection looks like from outside.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionInfo {
    /// Its id.
    pub connection_id: ConnectionId,
    /// How long it has been connected.
    pub connected_for: std::time::Duration,
    /// The newest `seq` the client acknowledged.
    pub acked_seq: Seq,
    /// Frames waiting for the writer.
    pub queued_frames: usize,
    /// Bytes waiting for the writer.
    pub queued_bytes: usize,
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) opened: AtomicU64,
    pub(crate) closed: AtomicU64,
    pub(crate) emitted: AtomicU64,
    pub(crate) emitted_by_type: [AtomicU64; 7],
    pub(crate) delivered: AtomicU64,
    pub(crate) replayed: AtomicU64,
    pub(crate) replay_gaps: AtomicU64,
    pub(crate) deduplicated: AtomicU64,
    pub(crate) emit_failures: AtomicU64,
    pub(crate) evictions: AtomicU64,
    pub(crate) rejections_user_limit: AtomicU64,
    pub(crate) rejections_node_full: AtomicU64,
    pub(crate) slow_consumer_closes: AtomicU64,
    pub(crate) heartbeat_timeouts: AtomicU64,
    pub(crate) catch_up_failures: AtomicU64,
    pub(crate) resyncs: AtomicU64,
    pub(crate) conflicts: AtomicU64,
}

#[derive(Debug)]
struct UserEntry {
    /// Oldest first.
    conns: Vec<Arc<ConnShared>>,
    subscription: Arc<OnceCell<()>>,
}

pub(crate) struct Inner {
    config: ManagerConfig,
    broker: Arc<dyn Broker>,
    shards: Box<[Mutex<HashMap<UserId, UserEntry>>]>,
    hasher: RandomState,
    total: AtomicUsize,
    pub(crate) counters: Counters,
    router: OnceLock<Arc<dyn Subscriber>>,
    sweeper_started: AtomicBool,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UnifiedWebSocketManager")
            .field("connections", &self.total.load(Ordering::Relaxed))
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// Routes the broker's deliveries to this node's connections.
struct Router {
    inner: Weak<Inner>,
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

/// The wait of a catch-up whose history reads make no progress: backoff from
/// [`STALL_FIRST`] doubling to [`STALL_MAX`], for at most `ManagerConfig::catch_up_wait`
/// in a row.
struct Stall {
    limit: std::time::Duration,
    waited: std::time::Duration,
    next: std::time::Duration,
}

/// The first wait of a stalled catch-up.
const STALL_FIRST: std::time::Duration = std::time::Duration::from_millis(1);
/// The longest single wait of a stalled catch-up.
const STALL_MAX: std::time::Duration = std::time::Duration::from_millis(100);

impl Stall {
    fn new(limit: std::time::Duration) -> Self {
        Stall {
            limit,
            waited: std::time::Duration::ZERO,
            next: STALL_FIRST,
        }
    }

    /// Progress was made: the next stall starts from scratch.
    fn reset(&mut self) {
        self.waited = std::time::Duration::ZERO;
        self.next = STALL_FIRST;
    }

    /// Waits before the next read; `false` once the limit is spent.
    async fn wait(&mut self) -> bool {
        if self.waited >= self.limit {
            return false;
        }
        let d = self.next.min(self.limit - self.waited);
        tokio::time::sleep(d).await;
        self.waited += d;
        self.next = (self.next * 2).min(STALL_MAX);
        true
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

static GLOBAL: OnceLock<UnifiedWebSocketManager> = OnceLock::new();

/// The event body a broker stores: the event's JSON without `type` and stream fields.
pub(crate) fn serialize_body(event: &Event) -> Bytes {
    Bytes::from(event.body_json())
}

impl UnifiedWebSocketManager {
    /// A manager over `broker`.
    pub fn new(config: ManagerConfig, broker: Arc<dyn Broker>) -> Self {
        let inner = Arc::new(Inner {
            config,
            broker,
            shards: (0..REGISTRY_SHARDS)
                .map(|_| Mutex::new(HashMap::default()))
                .collect(),
            hasher: RandomState::default(),
            total: AtomicUsize::new(0),
            counters: Counters::default(),
            router: OnceLock::new(),
            sweeper_started: AtomicBool::new(false),
        });
        let router: Arc<dyn Subscriber> = Arc::new(Router {
            inner: Arc::downgrade(&inner),
        });
        let _ = inner.router.set(router);
        UnifiedWebSocketManager { inner }
    }

    /// A manager with the default configuration over a fresh in-memory broker.
    pub fn in_memory() -> Self {
        Self::new(
            ManagerConfig::default(),
            Arc::new(InMemoryBroker::default()),
        )
    }

    /// The process-wide manager: the one a server installed with
    /// [`Self::install_global`], or else an in-memory one created on first use.
    /// Initialisation is thread-safe and needs no runtime.
    pub fn global() -> Self {
        GLOBAL.get_or_init(Self::in_memory).clone()
    }

    /// Makes `manager` the process-wide instance, so code written against the singleton
    /// reaches the server's connections.
    ///
    /// # Errors
    /// Hands `manager` back when a global instance already exists.
    pub fn install_global(manager: Self) -> Result<(), Self> {
        let mut candidate = Some(manager);
        let installed = GLOBAL.get_or_init(|| candidate.take().unwrap_or_else(Self::in_memory));
        match candidate {
            None => Ok(()),
            Some(m) if Arc::ptr_eq(&m.inner, &installed.inner) => Ok(()),
            Some(m) => Err(m),
        }
    }

    /// Whether two handles are the same manager.
    pub fn same_as(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }

    /// The configuration in force.
    pub fn config(&self) -> &ManagerConfig {
        &self.inner.config
    }

    fn shard(&self, user: &UserId) -> MutexGuard<'_, HashMap<UserId, UserEntry>> {
        let i = (self.inner.hasher.hash_one(user) as usize) % REGISTRY_SHARDS;
        // Registry mutations complete before anything that can panic.
        self.inner.shards[i]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    fn router(&self) -> Arc<dyn Subscriber> {
        match self.inner.router.get() {
            Some(r) => r.clone(),
            None => Arc::new(Router {
                inner: Arc::downgrade(&self.inner),
            }),
        }
    }

    /// Connects `user`: registers a connection under the limits, subscribes the node to
    /// the user's stream, queues `connection_established` and starts the stream at the
    /// requested point. History is replayed in the background, paced by the writer.
    ///
    /// # Errors
    /// [`ConnectError`]; its [`ConnectError::close_code`] is what to tell the client.
    ///
    /// # Cancel safety
    /// Cancelling drops the half-made connection, which removes it. A broker subscribe
    /// already under way completes in its own task and is undone once the user has no
    /// connection left, so nothing stays subscribed.
    pub async fn connect_user(
        &self,
        user: UserId,
        options: ConnectOptions,
    ) -> Result<Connection, ConnectError> {
        self.start_sweeper();
        let config = &self.inner.config;
        let counters = &self.inner.counters;
        let shared = Arc::new(ConnShared::new(user.clone(), config.queue));
        shared.touch();
        let (subscription, evicted) = {
            let mut shard = self.shard(&user);
            let entry = shard.entry(user.clone()).or_insert_with(|| UserEntry {
                conns: Vec::new(),
                subscription: Arc::new(OnceCell::new()),
            });
            let mut evicted = None;
            if entry.conns.len() >= config.max_connections_per_user {
                match config.limit_policy {
                    LimitPolicy::Reject => {
                        if entry.conns.is_empty() {
                            shard.remove(&user);
                        }
                        drop(shard);
                        counters
                            .rejections_user_limit
                            .fetch_add(1, Ordering::Relaxed);
                        return Err(ConnectError::UserLimit {
                            limit: config.max_connections_per_user,
                        });
                    }
                    LimitPolicy::EvictOldest => {
                        let oldest = entry.conns.remove(0);
                        // A `remove` of that connection may be under way (it unregisters
                        // before it takes this lock): then it frees the slot and counts the
                        // close, and this is no eviction.
                        if oldest.registered.swap(false, Ordering::AcqRel) {
                            evicted = Some(oldest);
                        }
                    }
                }
            }
            // An eviction hands its slot to the new connection, so only a connection that
            // adds to the node's count is checked against the node cap.
            if evicted.is_none()
                && self.inner.total.fetch_add(1, Ordering::AcqRel) >= config.max_connections
            {
                self.inner.total.fetch_sub(1, Ordering::AcqRel);
                if entry.conns.is_empty() {
                    shard.remove(&user);
                }
                drop(shard);
                counters
                    .rejections_node_full
                    .fetch_add(1, Ordering::Relaxed);
                return Err(ConnectError::NodeFull {
                    limit: config.max_connections,
                });
            }
            entry.conns.push(shared.clone());
            (entry.subscription.clone(), evicted)
        };
        if let Some(old) = evicted {
            counters.closed.fetch_add(1, Ordering::Relaxed);
            counters.evictions.fetch_add(1, Ordering::Relaxed);
            old.close(CloseCode::Replaced);
        }
        counters.opened.fetch_add(1, Ordering::Relaxed);
        let connection = Connection {
            shared: shared.clone(),
            manager: self.clone(),
        };

        if !subscription.initialized() {
            match self.subscribe_entry(&user, subscription).await {
                Ok(result) => result?,
                Err(e) if e.is_cancelled() => return Err(BrokerError::Closed.into()),
                Err(e) => {
                    return Err(BrokerError::unavailable("subscribe task failed", e).into());
                }
            }
        }
        let broker = &self.inner.broker;

        let page = config.replay_page.max(1);
        let first = match &options.resume {
            Resume::FromHistoryStart => broker.history(&user, Seq::ZERO, page).await?,
            Resume::LiveOnly => broker.history(&user, Seq(u64::MAX), 0).await?,
            Resume::After { last_seq, epoch } => {
                let h = broker.history(&user, *last_seq, page).await?;
                if h.epoch == *epoch {
                    h
                } else {
                    broker.history(&user, Seq::ZERO, page).await?
                }
            }
        };
        // Where the stream starts for this connection, and the gap it must be told of.
        let skip_trimmed = first.gap.map_or(Seq::ZERO, |(_, to)| to);
        let (start, gap, resumed) = match &options.resume {
            Resume::FromHistoryStart => (skip_trimmed, None, false),
            Resume::LiveOnly => (first.last_seq, None, false),
            Resume::After { last_seq, epoch } if first.epoch != *epoch => (
                skip_trimmed,
                (last_seq.get() > 0).then_some((Seq(1), *last_seq)),
                false,
            ),
            Resume::After { last_seq, .. } if *last_seq > first.last_seq => (
                first.last_seq,
                Some((first.last_seq.next(), *last_seq)),
                false,
            ),
            Resume::After { last_seq, .. } => match first.gap {
                Some(g) => (g.1, Some(g), false),
                None => (*last_seq, None, true),
            },
        };
        let hello = ServerFrame::ConnectionEstablished(ConnectionEstablished {
            connection_id: shared.id.clone(),
            user_id: user.clone(),
            epoch: first.epoch.clone(),
            heartbeat_interval_ms: u64::try_from(config.heartbeat.interval.as_millis())
                .unwrap_or(u64::MAX),
            last_seq: first.last_seq,
            resumed,
        });
        shared.push_control(Bytes::from(hello.to_json()), counters);
        if let Some((from, to)) = gap {
            shared.push_gap(from, to, counters);
        }
        shared.begin(first.epoch.clone(), start);
        let first = (start < first.last_seq).then_some(first);
        self.spawn_catch_up(shared, first);
        Ok(connection)
    }

    fn spawn_catch_up(&self, shared: Arc<ConnShared>, first: Option<crate::broker::History>) {
        let manager = self.clone();
        let task = async move { manager.catch_up(shared, first).await };
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => {
                handle.spawn(task);
            }
            Err(_) => tracing::error!(
                "agentwire manager used outside a tokio runtime; stream not started"
            ),
        }
    }

    /// Replays history after what the connection has, then goes live. Runs at connect,
    /// when a live event arrives past a gap, and on a resync — one at a time per
    /// connection: a resync of a connection that is catching up makes the running
    /// catch-up read history once more instead of starting another
    /// (`ConnShared::request_resync`), so replays never interleave.
    async fn catch_up(&self, shared: Arc<ConnShared>, mut page: Option<crate::broker::History>) {
        let counters = &self.inner.counters;
        let limit = self.inner.config.replay_page.max(1);
        let mut stall = Stall::new(self.inner.config.catch_up_wait);
        loop {
            if shared.closing().is_some() {
                return;
            }
            let before = shared.last_sent();
            let history = match page.take() {
                Some(h) => h,
                None => match self.inner.broker.history(&shared.user, before, limit).await {
                    Ok(h) => h,
                    Err(e) if e.is_transient() && stall.wait().await => {
                        tracing::debug!(connection = %shared.id, error = %e, "history read failed; retrying");
                        continue;
                    }
                    Err(e) => {
                        tracing::warn!(connection = %shared.id, error = %e, "history read failed");
                        self.catch_up_failed(&shared);
                        return;
                    }
                },
            };
            if shared.epoch().is_some_and(|e| e != history.epoch) {
                shared.close(CloseCode::TryAgainLater);
                return;
            }
            if let Some((from, to)) = history.gap
                && to > shared.last_sent()
            {
                shared.push_gap(from.max(shared.last_sent().next()), to, counters);
                shared.skip_to(to);
            }
            for event in &history.events {
                if !shared.push_replayed(event, counters).await {
                    return;
                }
            }
            // Go live only once history is read to its end: a replay longer than one page
            // must not wait for the next live event to fetch the rest.
            if shared.last_sent() >= history.last_seq {
                match shared.try_go_live(counters) {
                    GoLive::Done => return,
                    GoLive::ReadAgain => {
                        stall.reset();
                        continue;
                    }
                    GoLive::Behind => {}
                }
            }
            // History has more pages, or pending live events start past what history
            // returned: read again. History holds every delivered event, so progress is
            // certain unless the broker breaks that contract; then wait with backoff, and
            // give up after `catch_up_wait` rather than spin.
            if shared.last_sent() != before {
                stall.reset();
            } else if !stall.wait().await {
                tracing::error!(connection = %shared.id, "history does not reach delivered events");
                self.catch_up_failed(&shared);
                return;
            }
        }
    }

    fn catch_up_failed(&self, shared: &ConnShared) {
        if shared.close(CloseCode::InternalError) {
            self.inner
                .counters
                .catch_up_failures
                .fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Catches every live connection of `user` on this node up from history, as when the
    /// broker may have missed deliveries to them: what the manager does when its broker
    /// subscription calls [`Subscriber::resync`]. A connection already catching up reads
    /// history once more before it goes live. Returns how many catch-ups it started.
    pub fn resync_user(&self, user: &UserId) -> usize {
        self.inner.counters.resyncs.fetch_add(1, Ordering::Relaxed);
        let shard = self.shard(user);
        let Some(entry) = shard.get(user) else {
            return 0;
        };
        let mut started = 0;
        for conn in &entry.conns {
            if conn.request_resync() {
                self.spawn_catch_up(conn.clone(), None);
                started += 1;
            }
        }
        started
    }

    /// Queues an event the broker delivered to every local connection of its user.
    ///
    /// Pushes under the registry shard's lock rather than cloning the user's connection
    /// list for every event: a push only takes the connection's own short lock (never the
    /// other way round) and never waits, so the shard is held for a few pushes.
    fn fan_out(&self, user: &UserId, event: &StoredEvent) {
        let shard = self.shard(user);
        let Some(entry) = shard.get(user) else {
            return;
        };
        for conn in &entry.conns {
            if conn.deliver_live(event, &self.inner.counters) == Pushed::NeedsCatchUp {
                self.spawn_catch_up(conn.clone(), None);
            }
        }
    }

    /// Removes a connection. Idempotent.
    pub(crate) fn remove(&self, shared: &Arc<ConnShared>) {
        if !shared.registered.swap(false, Ordering::AcqRel) {
            return;
        }
        shared.close(CloseCode::Normal);
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
        if let Some(subscription) = released {
            self.release_entry(shared.user.clone(), subscription);
        }
    }

    /// Subscribes the node to `user`'s stream for one registry entry, once. The broker
    /// call runs in a task of its own and records its outcome in the entry's cell, so a
    /// connect cancelled mid-call cannot leave a subscription the entry does not know of,
    /// and a second connect waiting on the cell does not subscribe again.
    fn subscribe_entry(
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
    fn release_entry(&self, user: UserId, subscription: Arc<OnceCell<()>>) {
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

    /// Validates `event` and serializes it once, fixing its `event_id` (a fresh UUIDv7
    /// when `event_id` is `None`).
    ///
    /// # Errors
    /// [`EmitError::Invalid`] or [`EmitError::TooLarge`].
    pub fn prepare_event(
        &self,
        user: &UserId,
        event: &Event,
        event_id: Option<EventId>,
    ) -> Result<PreparedEvent, EmitError> {
        event.validate()?;
        let body = serialize_body(event);
        let limit = self.inner.config.max_event_bytes;
        if body.len() > limit {
            return Err(EmitError::TooLarge {
                size: body.len(),
                limit,
            });
        }
        let event_type = event.event_type();
        // `validate` made sure every run event names its run.
        let run = RunStep::of(&event.data).zip(event.run_id.clone());
        Ok(PreparedEvent {
            user: user.clone(),
            event_type,
            event_id: event_id.unwrap_or_else(EventId::generate),
            digest: EventDigest::of(event_type, &body),
            body,
            run: run.map(|(step, run)| (run, step)),
            owner: None,
        })
    }

    /// The single point every event passes: validates `event`, serializes it once and
    /// publishes it to the broker, whose subscription then fans it out to the user's
    /// connections on every node. A user with no connection is not an error: the event
    /// waits in history.
    ///
    /// # Errors
    /// [`EmitError`]; [`EmitError::is_transient`] says whether a retry can help.
    pub async fn emit_critical_event(
        &self,
        user: &UserId,
        event: Event,
    ) -> Result<Accepted, EmitError> {
        let prepared = self.prepare_event(user, &event, None)?;
        self.emit_prepared(&prepared).await
    }

    /// Publishes a prepared event. Publishing it again (a retry) cannot duplicate it: the
    /// broker answers the first acceptance.
    ///
    /// # Errors
    /// [`EmitError::Broker`].
    pub async fn emit_prepared(&self, event: &PreparedEvent) -> Result<Accepted, EmitError> {
        let result = self
            .inner
            .broker
            .publish(&event.user, event.to_new_event())
            .await;
        match &result {
            Ok(a) => self.count_accepted(event, a),
            Err(e) => self.count_failure(e, 1),
        }
        Ok(result?)
    }

    /// Counts `events` emits that failed with `error` (one refusal).
    fn count_failure(&self, error: &BrokerError, events: u64) {
        let counters = &self.inner.counters;
        counters.emit_failures.fetch_add(events, Ordering::Relaxed);
        if matches!(error, BrokerError::Conflict { .. }) {
            counters.conflicts.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn count_accepted(&self, event: &PreparedEvent, accepted: &Accepted) {
        let counters = &self.inner.counters;
        if accepted.duplicate {
            counters.deduplicated.fetch_add(1, Ordering::Relaxed);
        } else {
            counters.emitted.fetch_add(1, Ordering::Relaxed);
            let i = EventType::ALL
                .iter()
                .position(|t| *t == event.event_type)
                .unwrap_or(0);
            counters.emitted_by_type[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Publishes prepared events, possibly of several users: one
    /// [`Broker::publish_many`] per user, the users' batches concurrently. Per user the
    /// batch is all or nothing under a refusal: the refused event answers why
    /// ([`EmitError::Conflict`], [`EmitError::Violation`], [`EmitError::TooManyRuns`])
    /// and the user's other events [`EmitError::BatchRefused`] naming it. On a transient
    /// error, the events known to be accepted answer `Ok` and the rest the error
    /// (retrying them all with the same ids is safe).
    ///
    /// Answers are in the order of `events`.
    ///
    /// # Cancel safety
    /// Cancelling may leave some users' batches accepted and others not; publishing the
    /// same prepared events again completes them without duplicates.
    pub async fn emit_prepared_many(
        &self,
        events: &[PreparedEvent],
    ) -> Vec<Result<Accepted, EmitError>> {
        // Group by user, keeping each user's events in their order.
        let mut groups: Vec<(&UserId, Vec<usize>)> = Vec::new();
        let mut group_of: HashMap<&UserId, usize> = HashMap::default();
        for (i, e) in events.iter().enumerate() {
            let g = *group_of.entry(&e.user).or_insert_with(|| {
                groups.push((&e.user, Vec::new()));
                groups.len() - 1
            });
            groups[g].1.push(i);
        }
        let broker = &self.inner.broker;
        let calls = groups.iter().map(|(user, idx)| {
            let batch = idx.iter().map(|&i| events[i].to_new_event()).collect();
            broker.publish_many(user, batch)
        });
        let answers = futures_util::future::join_all(calls).await;
        let mut out: Vec<Option<Result<Accepted, EmitError>>> = vec![None; events.len()];
        for ((_, idx), answer) in groups.iter().zip(answers) {
            let (accepted, error, refused) = match answer {
                Ok(accepted) => (accepted, None, None),
                Err(e) => {
                    self.count_failure(&e.error, idx.len().saturating_sub(e.accepted.len()) as u64);
                    // The refused event, as an index into `events`.
                    let refused = e.refused_at.and_then(|at| idx.get(at).copied());
                    (e.accepted, Some(EmitError::from(e.error)), refused)
                }
            };
            let mut accepted = accepted.into_iter();
            for &i in idx {
                out[i] = Some(match (accepted.next(), &error, refused) {
                    (Some(a), _, _) => {
                        self.count_accepted(&events[i], &a);
                        Ok(a)
                    }
                    (None, Some(_), Some(r)) if r != i => Err(EmitError::BatchRefused { index: r }),
                    (None, Some(e), _) => Err(e.clone()),
                    (None, None, _) => Err(EmitError::Broker(BrokerError::Rejected(
                        "the broker answered fewer events than the batch held".into(),
                    ))),
                });
            }
        }
        out.into_iter()
            .map(|r| {
                r.unwrap_or_else(|| {
                    Err(EmitError::Broker(BrokerError::Rejected(
                        "event missing from its batch".into(),
                    )))
                })
            })
            .collect()
    }

    /// Up to `limit` events of `user` with `seq > after`, and the stream's epoch and
    /// newest `seq` (see [`Broker::history`]).
    ///
    /// # Errors
    /// [`BrokerError`] when history could not be read.
    pub async fn history(
        &self,
        user: &UserId,
        after: Seq,
        limit: usize,
    ) -> Result<crate::broker::History, BrokerError> {
        self.inner.broker.history(user, after, limit).await
    }

    /// The first acceptance of `event_id` in `user`'s stream while it is inside the
    /// broker's dedupe window (see [`Broker::lookup`]).
    ///
    /// # Errors
    /// [`BrokerError`] when the broker could not be asked.
    pub async fn lookup_event(
        &self,
        user: &UserId,
        event_id: &EventId,
    ) -> Result<Option<Accepted>, BrokerError> {
        self.inner.broker.lookup(user, event_id).await
    }

    /// Whether the broker can accept events now (for readiness checks).
    ///
    /// # Errors
    /// The [`BrokerError`] that makes it unavailable.
    pub async fn broker_health(&self) -> Result<(), BrokerError> {
        self.inner.broker.health().await
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

    /// The live connections of `user`, oldest first.
    pub fn connections_of(&self, user: &UserId) -> Vec<ConnectionInfo> {
        let conns = self
            .shard(user)
            .get(user)
            .map(|e| e.conns.clone())
            .unwrap_or_default();
        let now = Instant::now();
        conns
            .iter()
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

    /// A snapshot of counters and sizes.
    pub fn get_stats(&self) -> ManagerStats {
        let c = &self.inner.counters;
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let mut users = 0;
        let mut max_per_user = 0;
        let (mut queued_frames, mut queued_bytes) = (0u64, 0u64);
        let mut conns = Vec::new();
        for shard in self.inner.shards.iter() {
            {
                let shard = shard.lock().unwrap_or_else(|p| p.into_inner());
                users += shard.len();
                max_per_user = shard
                    .values()
                    .map(|e| e.conns.len())
                    .fold(max_per_user, usize::max);
                conns.extend(shard.values().flat_map(|e| e.conns.iter().cloned()));
            }
            // Each queue is looked at outside the registry's lock.
            for c in conns.drain(..) {
                let (frames, bytes) = c.queued();
                queued_frames += frames as u64;
                queued_bytes += bytes as u64;
            }
        }
        let b = self.inner.broker.stats();
        ManagerStats {
            connections: self.connection_count(),
            users,
            max_connections_of_a_user: max_per_user,
            connections_opened: load(&c.opened),
            connections_closed: load(&c.closed),
            events_emitted: load(&c.emitted),
            events_emitted_by_type: std::array::from_fn(|i| load(&c.emitted_by_type[i])),
            events_delivered: load(&c.delivered),
            events_replayed: load(&c.replayed),
            replay_gaps: load(&c.replay_gaps),
            events_deduplicated: load(&c.deduplicated),
            emit_failures: load(&c.emit_failures),
            evictions: load(&c.evictions),
            rejections_user_limit: load(&c.rejections_user_limit),
            rejections_node_full: load(&c.rejections_node_full),
            slow_consumer_closes: load(&c.slow_consumer_closes),
            heartbeat_timeouts: load(&c.heartbeat_timeouts),
            history_events: b.history_events,
            history_bytes: b.history_bytes,
            history_users: b.users,
            history_trimmed: b.history_trimmed,
            catch_up_failures: load(&c.catch_up_failures),
            resyncs: load(&c.resyncs),
            event_id_conflicts: load(&c.conflicts),
            dedupe_ids: b.dedupe_ids,
            queued_frames,
            queued_bytes,
            runs: b.runs,
        }
    }

    /// One pass of the sweeper: closes connections whose peer has been silent past the
    /// heartbeat deadline, and lets the broker trim history. Returns how many connections
    /// it closed. The sweeper task calls it every `sweep_interval`.
    pub fn sweep(&self) -> usize {
        let now = Instant::now();
        let policy = self.inner.config.heartbeat;
        let mut closed = 0;
        for shard in self.inner.shards.iter() {
            let silent: Vec<Arc<ConnShared>> = shard
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .values()
                .flat_map(|e| e.conns.iter())
                .filter(|c| policy.is_expired(c.silent_for(now)))
                .cloned()
                .collect();
            for conn in silent {
                if conn.close(CloseCode::GoingAway) {
                    self.inner
                        .counters
                        .heartbeat_timeouts
                        .fetch_add(1, Ordering::Relaxed);
                    closed += 1;
                }
            }
        }
        self.inner.broker.sweep();
        closed
    }

    /// Starts the sweeper once, on the first connect inside a runtime. It holds only a
    /// weak reference and ends when the manager is dropped.
    fn start_sweeper(&self) {
        if self.inner.sweeper_started.load(Ordering::Relaxed) {
            return;
        }
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if self.inner.sweeper_started.swap(true, Ordering::AcqRel) {
            return;
        }
        let weak = Arc::downgrade(&self.inner);
        let every = self.inner.config.sweep_interval;
        handle.spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tick.tick().await;
                let Some(inner) = weak.upgrade() else { break };
                UnifiedWebSocketManager { inner }.sweep();
            }
        });
    }
}
