//! The manager's counters, shared by the registry, the connections and `get_stats()`.

use std::sync::atomic::AtomicU64;

#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) opened: AtomicU64,
    pub(crate) closed: AtomicU64,
    pub(crate) emitted: AtomicU64,
    pub(crate) emitted_by_type: [AtomicU64; agentwire_protocol::EventType::ALL.len()],
    pub(crate) delivered: AtomicU64,
    pub(crate) replayed: AtomicU64,
    pub(crate) replay_gaps: AtomicU64,
    pub(crate) deduplicated: AtomicU64,
    pub(crate) emit_failures: AtomicU64,
    pub(crate) evictions: AtomicU64,
    pub(crate) rejections_user_limit: AtomicU64,
    pub(crate) rejections_node_full: AtomicU64,
    pub(crate) slow_consumer_closes: AtomicU64,
    pub(crate) deltas_merged: AtomicU64,
    pub(crate) heartbeat_timeouts: AtomicU64,
    pub(crate) catch_up_failures: AtomicU64,
    pub(crate) catch_up_rereads: AtomicU64,
    pub(crate) resyncs: AtomicU64,
    pub(crate) conflicts: AtomicU64,
    pub(crate) lease_failures: AtomicU64,
    pub(crate) leases_lost: AtomicU64,
    pub(crate) runs_stalled: [AtomicU64; 2],
    pub(crate) runs_unwatched: AtomicU64,
    pub(crate) receipts_evicted: AtomicU64,
    pub(crate) receipts_expired: AtomicU64,
    pub(crate) receipts_unflushed: AtomicU64,
    pub(crate) receipt_flush_failures: AtomicU64,
}
