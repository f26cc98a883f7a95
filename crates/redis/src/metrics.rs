//! Counters of the Redis broker and the snapshot a server exports ([`RedisMetrics`]).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use agentwire_protocol::RunViolation;

/// Upper bounds of the round-trip histogram's buckets, in microseconds (the last bucket,
/// above the largest bound, is implied).
pub const ROUND_TRIP_BUCKETS_MICROS: [u64; 14] = [
    100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000, 2_500_000,
];

/// Round trips to Redis by duration: a cumulative-free histogram (each count is its own
/// bucket's), as a plain snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct LatencyHistogram {
    /// Round trips whose duration was at most the bound of the same index in
    /// [`ROUND_TRIP_BUCKETS_MICROS`] (and above the previous one); the last element counts
    /// those above every bound.
    pub counts: Vec<u64>,
    /// Round trips counted.
    pub count: u64,
    /// Sum of their durations.
    pub sum: Duration,
}

/// What the Redis broker of this process counted since it connected. Counters only grow;
/// the two gauges say what is pending now.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct RedisMetrics {
    /// Round trips of commands and script calls (publish, history, lookup, health), by
    /// duration; failed ones included.
    pub round_trip: LatencyHistogram,
    /// Times the pub/sub connection was lost and made again.
    pub reconnects: u64,
    /// Attempts to make the pub/sub connection again that failed (each followed by a
    /// backoff).
    pub reconnect_failures: u64,
    /// `Subscriber::resync` calls made after a subscription was restored.
    pub resyncs: u64,
    /// Script calls Redis answered with an error (other than an unknown script, which is
    /// loaded and retried).
    pub script_errors: u64,
    /// Commands that did not answer within the command timeout.
    pub timeouts: u64,
    /// Commands that failed for want of a connection.
    pub unavailable: u64,
    /// Events trimmed from history by a count or age bound, by this node's calls.
    pub history_trimmed: u64,
    /// Dedupe entries forgotten by the window or the per-user count bound.
    pub dedupe_forgotten: u64,
    /// Streams that started a new epoch in this node's calls (new users, expired streams,
    /// or a Redis that lost its data).
    pub epochs_created: u64,
    /// Publishes answered as duplicates of an earlier `event_id`.
    pub duplicates: u64,
    /// Publishes refused because their `event_id` was accepted with another digest.
    pub conflicts: u64,
    /// `publish_many` calls refused for holding more than `max_batch_events` events.
    pub batches_refused: u64,
    /// `SSUBSCRIBE`/`SUBSCRIBE` commands sent (each for up to `subscribe_batch` channels).
    pub subscribe_commands: u64,
    /// `SUNSUBSCRIBE`/`UNSUBSCRIBE` commands sent.
    pub unsubscribe_commands: u64,
    /// `subscribe` calls refused because `max_pending_subscriptions` changes were waiting.
    pub subscribes_refused: u64,
    /// Published messages handed to subscribers.
    pub messages_delivered: u64,
    /// Pub/sub messages that could not be decoded (dropped; the user is resynced).
    pub malformed_messages: u64,
    /// Pub/sub health checks (`PING`) that failed.
    pub ping_failures: u64,
    /// Gauge: channels this node is subscribed to in Redis.
    pub subscribed_channels: u64,
    /// Gauge: channel changes waiting for the subscription task.
    pub pending_subscriptions: u64,
    /// Guarded events refused for breaking their run, by kind, in the order of
    /// `agentwire_protocol::RunViolation::NAMES`.
    pub run_violations: [u64; RunViolation::NAMES.len()],
    /// Guarded events refused at a run-state bound, by bound, in the order of
    /// `agentwire_manager::RunLimit::ALL`.
    pub runs_refused: [u64; 4],
    /// Finished runs the registry forgot to make room, in this node's calls.
    pub runs_evicted: u64,
    /// Runs the registry forgot past their ttl, in this node's calls (their state keys
    /// expire in Redis by themselves).
    pub runs_expired: u64,
    /// Calls to the run registry (reserve, grow, finish, refresh, release).
    pub run_registry_calls: u64,
    /// Registry calls after an accepted publish (finish, refresh, release, and deleting
    /// evicted runs' state) that failed: their counts stay until the registry's own
    /// expiry corrects them.
    pub run_registry_failures: u64,
    /// Gauge: runs the registry holds (in progress and finished), as of this node's last
    /// registry call.
    pub runs_held: u64,
    /// Gauge: runs in progress, as of this node's last registry call.
    pub runs_in_progress: u64,
    /// Gauge: bytes of run state reserved, as of this node's last registry call.
    pub run_bytes: u64,
    /// Connection leases this node's admissions evicted (another connection of the user,
    /// on any node, closed with 4003) to stay within the per-user limit.
    pub lease_evictions: u64,
    /// Connections this node refused (4004) because the user held the limit in leases.
    pub lease_rejections: u64,
    /// This node's connections whose lease a renewal found gone (closed with 4003).
    pub leases_lost: u64,
    /// This node's connections whose expired lease a renewal took again.
    pub leases_restored: u64,
    /// Lease calls (admit, renew, release) that failed.
    pub lease_failures: u64,
    /// Evicted leases forgotten because a user had more than
    /// `agentwire_manager::MAX_EVICTED_LEASES_PER_USER` (a renewal of one treats it as
    /// expired instead of closing it), in this node's calls.
    pub evicted_leases_forgotten: u64,
    /// Messages this node published on the control channel (requests, answers, evictions).
    pub control_sent: u64,
    /// Messages this node received on the control channel.
    pub control_received: u64,
    /// Control messages this node could not read (ignored).
    pub control_malformed: u64,
    /// Control calls that failed (the channel down, a command failed or timed out).
    pub control_failures: u64,
    /// Control requests refused because `MAX_PENDING_CONTROL_REQUESTS` were waiting.
    pub control_refused: u64,
    /// Control requests that some live node did not answer within `control_wait`.
    pub control_unanswered: u64,
    /// Times the control channel's connection was lost and made again.
    pub control_reconnects: u64,
    /// Gauge: 1 while the control channel's subscription is up (the node hears the
    /// admin's disconnects and other nodes' evictions), else 0.
    pub control_up: u64,
    /// Publish requests the shared rate limiter refused (a wait, or more than the burst).
    pub rate_refused: u64,
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    buckets: [AtomicU64; ROUND_TRIP_BUCKETS_MICROS.len() + 1],
    round_trip_micros: AtomicU64,
    pub(crate) reconnects: AtomicU64,
    pub(crate) reconnect_failures: AtomicU64,
    pub(crate) resyncs: AtomicU64,
    pub(crate) script_errors: AtomicU64,
    pub(crate) timeouts: AtomicU64,
    pub(crate) unavailable: AtomicU64,
    pub(crate) history_trimmed: AtomicU64,
    pub(crate) dedupe_forgotten: AtomicU64,
    pub(crate) epochs_created: AtomicU64,
    pub(crate) duplicates: AtomicU64,
    pub(crate) conflicts: AtomicU64,
    pub(crate) batches_refused: AtomicU64,
    pub(crate) subscribe_commands: AtomicU64,
    pub(crate) unsubscribe_commands: AtomicU64,
    pub(crate) subscribes_refused: AtomicU64,
    pub(crate) messages_delivered: AtomicU64,
    pub(crate) malformed_messages: AtomicU64,
    pub(crate) ping_failures: AtomicU64,
    pub(crate) subscribed_channels: AtomicU64,
    pub(crate) pending_subscriptions: AtomicU64,
    pub(crate) run_violations: [AtomicU64; RunViolation::NAMES.len()],
    pub(crate) runs_refused: [AtomicU64; 4],
    pub(crate) runs_evicted: AtomicU64,
    pub(crate) runs_expired: AtomicU64,
    pub(crate) run_registry_calls: AtomicU64,
    pub(crate) run_registry_failures: AtomicU64,
    pub(crate) runs_held: AtomicU64,
    pub(crate) runs_in_progress: AtomicU64,
    pub(crate) run_bytes: AtomicU64,
    pub(crate) lease_evictions: AtomicU64,
    pub(crate) lease_rejections: AtomicU64,
    pub(crate) leases_lost: AtomicU64,
    pub(crate) leases_restored: AtomicU64,
    pub(crate) lease_failures: AtomicU64,
    pub(crate) evicted_leases_forgotten: AtomicU64,
    pub(crate) control_sent: AtomicU64,
    pub(crate) control_received: AtomicU64,
    pub(crate) control_malformed: AtomicU64,
    pub(crate) control_failures: AtomicU64,
    pub(crate) control_refused: AtomicU64,
    pub(crate) control_unanswered: AtomicU64,
    pub(crate) control_reconnects: AtomicU64,
    pub(crate) control_up: AtomicU64,
    pub(crate) rate_refused: AtomicU64,
}

/// Adds one to a counter.
pub(crate) fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// Adds `n` to a counter.
pub(crate) fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

impl Counters {
    pub(crate) fn record_round_trip(&self, took: Duration) {
        let micros = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        let bucket = ROUND_TRIP_BUCKETS_MICROS
            .iter()
            .position(|&bound| micros <= bound)
            .unwrap_or(ROUND_TRIP_BUCKETS_MICROS.len());
        bump(&self.buckets[bucket]);
        add(&self.round_trip_micros, micros);
    }

    pub(crate) fn snapshot(&self) -> RedisMetrics {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let counts: Vec<u64> = self.buckets.iter().map(get).collect();
        RedisMetrics {
            round_trip: LatencyHistogram {
                count: counts.iter().sum(),
                counts,
                sum: Duration::from_micros(get(&self.round_trip_micros)),
            },
            reconnects: get(&self.reconnects),
            reconnect_failures: get(&self.reconnect_failures),
            resyncs: get(&self.resyncs),
            script_errors: get(&self.script_errors),
            timeouts: get(&self.timeouts),
            unavailable: get(&self.unavailable),
            history_trimmed: get(&self.history_trimmed),
            dedupe_forgotten: get(&self.dedupe_forgotten),
            epochs_created: get(&self.epochs_created),
            duplicates: get(&self.duplicates),
            conflicts: get(&self.conflicts),
            batches_refused: get(&self.batches_refused),
            subscribe_commands: get(&self.subscribe_commands),
            unsubscribe_commands: get(&self.unsubscribe_commands),
            subscribes_refused: get(&self.subscribes_refused),
            messages_delivered: get(&self.messages_delivered),
            malformed_messages: get(&self.malformed_messages),
            ping_failures: get(&self.ping_failures),
            subscribed_channels: get(&self.subscribed_channels),
            pending_subscriptions: get(&self.pending_subscriptions),
            run_violations: self.run_violations.each_ref().map(get),
            runs_refused: self.runs_refused.each_ref().map(get),
            runs_evicted: get(&self.runs_evicted),
            runs_expired: get(&self.runs_expired),
            run_registry_calls: get(&self.run_registry_calls),
            run_registry_failures: get(&self.run_registry_failures),
            runs_held: get(&self.runs_held),
            runs_in_progress: get(&self.runs_in_progress),
            run_bytes: get(&self.run_bytes),
            lease_evictions: get(&self.lease_evictions),
            lease_rejections: get(&self.lease_rejections),
            leases_lost: get(&self.leases_lost),
            leases_restored: get(&self.leases_restored),
            lease_failures: get(&self.lease_failures),
            evicted_leases_forgotten: get(&self.evicted_leases_forgotten),
            control_sent: get(&self.control_sent),
            control_received: get(&self.control_received),
            control_malformed: get(&self.control_malformed),
            control_failures: get(&self.control_failures),
            control_refused: get(&self.control_refused),
            control_unanswered: get(&self.control_unanswered),
            control_reconnects: get(&self.control_reconnects),
            control_up: get(&self.control_up),
            rate_refused: get(&self.rate_refused),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_land_in_their_bucket() {
        let c = Counters::default();
        c.record_round_trip(Duration::from_micros(100));
        c.record_round_trip(Duration::from_micros(101));
        c.record_round_trip(Duration::from_secs(10));
        let m = c.snapshot();
        assert_eq!(m.round_trip.counts[0], 1);
        assert_eq!(m.round_trip.counts[1], 1);
        assert_eq!(m.round_trip.counts[ROUND_TRIP_BUCKETS_MICROS.len()], 1);
        assert_eq!(m.round_trip.count, 3);
        assert_eq!(m.round_trip.sum, Duration::from_micros(10_000_201));
    }
}
