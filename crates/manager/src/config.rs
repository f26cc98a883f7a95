//! The manager's bounds and intervals, each with its default.

use std::time::Duration;

/// What happens when a user opens one connection more than `max_connections_per_user`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LimitPolicy {
    /// Close the user's oldest connection with 4003 and accept the new one (default).
    #[default]
    EvictOldest,
    /// Refuse the new connection with 4004.
    Reject,
}

/// Bounds of one connection's outbound queue. Frames are shared (`Bytes`), so the byte
/// bound limits what a connection can hold back, not a copy per connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueLimits {
    /// Most frames waiting for the writer (default 1,024).
    pub max_frames: usize,
    /// Most bytes of frames waiting for the writer (default 4 MiB).
    pub max_bytes: usize,
}

impl Default for QueueLimits {
    fn default() -> Self {
        QueueLimits {
            max_frames: 1_024,
            max_bytes: 4 * 1024 * 1024,
        }
    }
}

/// How connections prove they are alive.
///
/// The server pings every `interval`; a connection from which nothing (a frame, a pong)
/// arrived for `interval + timeout` is dead. The manager's sweeper closes such connections
/// even when their I/O task is stuck.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeartbeatPolicy {
    /// Time between pings (default 30 s).
    pub interval: Duration,
    /// How long after a missed ping a connection is given (default 10 s).
    pub timeout: Duration,
}

impl HeartbeatPolicy {
    /// How long a connection may stay silent before it is considered dead.
    pub fn deadline(&self) -> Duration {
        self.interval + self.timeout
    }

    /// Whether a connection silent for `silent_for` is dead.
    pub fn is_expired(&self, silent_for: Duration) -> bool {
        silent_for > self.deadline()
    }
}

impl Default for HeartbeatPolicy {
    fn default() -> Self {
        HeartbeatPolicy {
            interval: Duration::from_secs(30),
            timeout: Duration::from_secs(10),
        }
    }
}

/// Configuration of a [`crate::UnifiedWebSocketManager`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManagerConfig {
    /// Most connections one user may hold on this node (default 3).
    pub max_connections_per_user: usize,
    /// What a connection over `max_connections_per_user` does (default evict the oldest).
    pub limit_policy: LimitPolicy,
    /// Most connections on this node (default 10,000); more are refused with 1013.
    pub max_connections: usize,
    /// Bounds of each connection's outbound queue; a connection that exceeds them is a
    /// slow consumer and is closed with 1013. Live events that arrive while a connection
    /// replays history wait under the same bounds.
    pub queue: QueueLimits,
    /// Heartbeat interval and timeout.
    pub heartbeat: HeartbeatPolicy,
    /// Largest event accepted, in bytes of JSON (default 256 KiB).
    pub max_event_bytes: usize,
    /// Events read from history per broker call while replaying (default 256).
    pub replay_page: usize,
    /// How often the sweeper looks for dead connections and trims history (default 5 s).
    pub sweep_interval: Duration,
    /// How long a catch-up keeps reading history that does not (yet) reach an event the
    /// broker already delivered, or that fails with a transient error, before it closes
    /// the connection with 1011 (default 2 s). Under the broker contract history always
    /// holds a delivered event, so this bounds only a broker that breaks it, or a broker
    /// outage during a replay. Reads are retried with backoff from 1 ms doubling to
    /// 100 ms; each close is counted in `ManagerStats::catch_up_failures`.
    pub catch_up_wait: Duration,
    /// How long a run in progress may go without an event or a heartbeat before the
    /// watchdog ends it with an `agent_error` whose code is `stalled` (default 120 s;
    /// [`Duration::ZERO`] turns the watchdog off). A run's `agent_started` may set its own
    /// (`stall_timeout_ms`). The watchdog watches the runs whose guarded events this
    /// manager published; the broker decides, atomically, whether a run really stalled.
    pub run_stall_timeout: Duration,
    /// Most runs the watchdog watches at once (default 100,000); a run beyond it is not
    /// watched by this manager, counted in `ManagerStats::runs_unwatched`.
    pub max_watched_runs: usize,
    /// Most users whose delivery receipt (`UnifiedWebSocketManager::receipt`) this node
    /// keeps (default 100,000); the least recently updated is forgotten first, counted in
    /// `ManagerStats::receipts_evicted`.
    pub max_receipt_users: usize,
    /// How long a receipt that nothing moved is kept once its user has no connection on
    /// this node (default 1 hour, as long as a finished run is remembered): the sweeper
    /// forgets it then, counted in `ManagerStats::receipts_expired`. A receipt whose last
    /// change the cluster's store does not have yet (its write waits, is under way, or
    /// failed; the sweeper marks it for the next flush again), or that a caller waits on,
    /// is kept. [`Duration::ZERO`] forgets receipts at the first sweep after their user
    /// left.
    pub receipt_ttl: Duration,
}

impl Default for ManagerConfig {
    fn default() -> Self {
        ManagerConfig {
            max_connections_per_user: 3,
            limit_policy: LimitPolicy::EvictOldest,
            max_connections: 10_000,
            queue: QueueLimits::default(),
            heartbeat: HeartbeatPolicy::default(),
            max_event_bytes: agentwire_protocol::DEFAULT_MAX_EVENT_BYTES,
            replay_page: 256,
            sweep_interval: Duration::from_secs(5),
            catch_up_wait: Duration::from_secs(2),
            run_stall_timeout: Duration::from_secs(120),
            max_watched_runs: 100_000,
            max_receipt_users: 100_000,
            receipt_ttl: Duration::from_secs(3600),
        }
    }
}
