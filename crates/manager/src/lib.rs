//! `agentwire-manager`: the connection registry, the per-user event streams and the broker
//! seam of agentwire.
//!
//! What it is: [`UnifiedWebSocketManager`], which knows who is connected and routes every
//! event to its user's connections, and the [`Broker`] trait that owns each user's ordered,
//! resumable stream, with [`InMemoryBroker`] as the embedded default.
//!
//! What it is not: it holds bounded queues, never sockets, and knows nothing of HTTP. The
//! server drains each [`Connection`]'s queue into its socket.
//!
//! Key decision: events reach connections only through the broker subscription, never
//! straight from `emit`, so one node and many nodes deliver the same way; each connection
//! tracks the newest `seq` it was given, which makes the switch from replay to live free of
//! gaps and duplicates.
//!
//! Dependencies beyond tokio and serde: `foldhash` hashes the user and event ids every
//! event looks up (several times faster than SipHash on short strings, seeded per process);
//! `futures-util` for the `AtomicWaker` that wakes a connection's writer; `hashbrown`
//! (its `HashTable` only, no default features) for a stream's dedupe index, which keeps
//! each id's hash beside its `seq` and finds entries by hash with no key of its own (the
//! id stays in the stream's entry, and growing the index reads no id); `xxhash-rust`
//! (XXH3-64, its `xxh3` feature only) for the [`EventDigest`] of every event: a specified,
//! seedless hash with the same value on every platform and build, so nodes sharing a
//! broker agree on it, and fast enough to run once per published event.
//!
//! ```
//! use agentwire_manager::{ConnectOptions, Outbound, UnifiedWebSocketManager};
//! use agentwire_protocol::{AgentStarted, Event, ServerFrame};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let manager = UnifiedWebSocketManager::in_memory();
//! let alice = "alice".parse().unwrap();
//! let conn = manager.connect_user(alice, ConnectOptions::default()).await.unwrap();
//!
//! let event = Event::new(None, Some("r1".parse().unwrap()), AgentStarted::default());
//! let accepted = manager.emit_critical_event(conn.user_id(), event).await.unwrap();
//! assert_eq!(accepted.seq.get(), 1);
//!
//! let mut frames = Vec::new();
//! while frames.len() < 2 {
//!     assert_eq!(conn.next_frames(&mut frames, 64).await, Outbound::Frames);
//! }
//! assert!(matches!(ServerFrame::decode(&frames[0]), Ok(ServerFrame::ConnectionEstablished(_))));
//! assert!(matches!(ServerFrame::decode(&frames[1]), Ok(ServerFrame::Event(e)) if e.seq.get() == 1));
//! # }
//! ```

mod broker;
mod capacity;
mod config;
mod control;
mod leases;
mod manager;
mod memory;
mod rates;
mod receipt_store;
mod run_table;
mod runs;

#[cfg(feature = "conformance")]
pub mod conformance;

pub use broker::{
    Accepted, BatchError, Broker, BrokerError, BrokerStats, Cause, DigestParseError, EventDigest,
    History, NewEvent, StoredEvent, Subscriber, compose_frame,
};
pub use config::{HeartbeatPolicy, LimitPolicy, ManagerConfig, QueueLimits};
pub use control::{
    Answers, Cluster, ClusterControl, ConnectionInfo, ControlHandler, InMemoryControl,
};
pub use leases::{
    Admission, ConnectionLeases, InMemoryLeases, Lease, MAX_EVICTED_LEASES_PER_USER, NodeId,
    NodeIdError, Renewal,
};
pub use manager::{
    ConnectError, ConnectOptions, Connection, DIRECT_WRITES_PAUSE_ABOVE,
    DIRECT_WRITES_RESUME_BELOW, DeliveryReceipt, DirectSink, EmitError, FanOutTime,
    LOAD_PROBE_INTERVAL, MAX_MERGED_DELTA_BYTES, ManagerStats, ObserverTaken, Outbound,
    PreparedEvent, Resume, RunEnded, UnifiedWebSocketManager, WRITE_MODE_DWELL,
    WRITE_MODE_MAX_DWELL, WRITE_MODE_TRIAL, WeakManager,
};
pub use memory::{ENTRY_OVERHEAD_BYTES, HistoryConfig, InMemoryBroker, STREAM_OVERHEAD_BYTES};
pub use rates::{InMemoryRates, PublishRate, PublishRates, RateDecision};
pub use receipt_store::{InMemoryReceipts, RECEIPT_FLUSH_INTERVAL, ReceiptStore, StoredReceipt};
pub use runs::{
    PublisherId, RUN_OVERHEAD_BYTES, RunGuard, RunLimit, RunLimits, RunPresence, RunStats,
    StallReason, TOOL_CALL_OVERHEAD_BYTES, run_base_bytes, tool_call_bytes,
};
