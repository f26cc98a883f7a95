//! `get_stats()`: the manager's counters and sizes as a plain snapshot.

use std::sync::atomic::{AtomicU64, Ordering};

use super::UnifiedWebSocketManager;

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
    /// Events emitted, by type, in [`EventType::ALL`](agentwire_protocol::EventType::ALL) order.
    pub events_emitted_by_type: [u64; agentwire_protocol::EventType::ALL.len()],
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
    /// Live `message_delta`s merged into the delta before them in a full queue, rather
    /// than the connection being closed as a slow consumer.
    pub deltas_merged: u64,
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
    /// Times a connection catching up, its queue less than half full, let go of the live
    /// events it held aside past its queue's bounds and read them from history instead.
    pub catch_up_rereads: u64,
    /// Resync signals from the broker (each catches a user's connections up from history).
    pub resyncs: u64,
    /// Emits refused because their `event_id` was already accepted for another event.
    pub event_id_conflicts: u64,
    /// Lease store calls (admit, renew) that failed: a connect refused, or leases left to
    /// run until the next renewal (only with a lease store).
    pub lease_failures: u64,
    /// Connections closed with 4003 because a renewal found their lease gone: taken by a
    /// newer connection on another node, or expired while the user's limit was full.
    pub leases_lost: u64,
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
    /// Stalled runs this manager's watchdog ended, by reason, in the order of
    /// [`StallReason::ALL`](crate::StallReason::ALL).
    pub runs_stalled: [u64; 2],
    /// Runs the watchdog watches now.
    pub watched_runs: u64,
    /// Runs the watchdog did not watch because `ManagerConfig::max_watched_runs` were
    /// watched.
    pub runs_unwatched: u64,
    /// Users whose delivery receipt this node holds (at most
    /// `ManagerConfig::max_receipt_users`).
    pub receipt_users: u64,
    /// Receipts forgotten to make room at `ManagerConfig::max_receipt_users`.
    pub receipts_evicted: u64,
    /// Receipts forgotten after `ManagerConfig::receipt_ttl` without a change while their
    /// user had no connection on this node.
    pub receipts_expired: u64,
    /// Receipt changes not written to the cluster's receipt store because
    /// `ManagerConfig::max_receipt_users` users were waiting for the next flush.
    pub receipts_unflushed: u64,
    /// Writes to the cluster's receipt store that failed (each retried at the next flush).
    pub receipt_flush_failures: u64,
    /// The share of the last [`LOAD_PROBE_INTERVAL`](crate::LOAD_PROBE_INTERVAL) the
    /// runtime's workers were busy, in thousandths (probed once a connection was made).
    pub runtime_busy_permille: u64,
    /// Times direct writes were paused (a trial, or a pause kept) because that share
    /// exceeded [`DIRECT_WRITES_PAUSE_ABOVE`](crate::DIRECT_WRITES_PAUSE_ABOVE).
    pub direct_write_pauses: u64,
    /// Trials of the other way of writing live events (pausing direct writes, or resuming
    /// them) made while the runtime was that busy.
    pub write_mode_trials: u64,
    /// The trials whose way was kept, because deliveries cost less busy time under it.
    pub write_mode_switches: u64,
}

impl UnifiedWebSocketManager {
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
        let (write_mode_trials, write_mode_switches) = self.inner.load.trials();
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
            deltas_merged: load(&c.deltas_merged),
            heartbeat_timeouts: load(&c.heartbeat_timeouts),
            history_events: b.history_events,
            history_bytes: b.history_bytes,
            history_users: b.users,
            history_trimmed: b.history_trimmed,
            catch_up_failures: load(&c.catch_up_failures),
            catch_up_rereads: load(&c.catch_up_rereads),
            resyncs: load(&c.resyncs),
            event_id_conflicts: load(&c.conflicts),
            lease_failures: load(&c.lease_failures),
            leases_lost: load(&c.leases_lost),
            dedupe_ids: b.dedupe_ids,
            queued_frames,
            queued_bytes,
            runs: b.runs,
            runs_stalled: std::array::from_fn(|i| load(&c.runs_stalled[i])),
            watched_runs: self.inner.watchdog.len() as u64,
            runs_unwatched: load(&c.runs_unwatched),
            receipt_users: self.inner.receipts.len() as u64,
            receipts_evicted: load(&c.receipts_evicted),
            receipts_expired: load(&c.receipts_expired),
            receipts_unflushed: load(&c.receipts_unflushed),
            receipt_flush_failures: load(&c.receipt_flush_failures),
            runtime_busy_permille: self.inner.load.busy(),
            direct_write_pauses: self.inner.load.pauses(),
            write_mode_trials,
            write_mode_switches,
        }
    }
}
