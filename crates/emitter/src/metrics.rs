//! Emitter metrics: lock-free counters per emitter and per factory (the aggregate), read
//! as a plain snapshot the server exports on `/metrics` and in its stats.
//!
//! What it is not: an exporter. Nothing here knows Prometheus; the snapshot is data.

use std::sync::atomic::{AtomicU64, Ordering};

use agentwire_protocol::{EventType, Timestamp};

/// Counters of one emitter or of every emitter of a factory.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    by_type: [AtomicU64; EventType::ALL.len()],
    attempts: AtomicU64,
    retries: AtomicU64,
    failures: AtomicU64,
    violations: AtomicU64,
    settled: AtomicU64,
    /// Epoch milliseconds of the last accepted event; 0 before the first.
    last_emit_ms: AtomicU64,
}

fn type_index(ty: EventType) -> usize {
    EventType::ALL.iter().position(|t| *t == ty).unwrap_or(0)
}

impl Counters {
    pub(crate) fn attempt(&self) {
        self.attempts.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn retry(&self) {
        self.retries.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn failure(&self) {
        self.failures.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn settled(&self) {
        self.settled.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn violation(&self) {
        self.violations.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn emitted(&self, ty: EventType, at: Timestamp) {
        self.by_type[type_index(ty)].fetch_add(1, Ordering::Relaxed);
        self.last_emit_ms
            .fetch_max(at.as_millis(), Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self) -> EmitterMetrics {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let last = load(&self.last_emit_ms);
        EmitterMetrics {
            events_by_type: std::array::from_fn(|i| load(&self.by_type[i])),
            attempts: load(&self.attempts),
            retries: load(&self.retries),
            failures: load(&self.failures),
            violations: load(&self.violations),
            settled: load(&self.settled),
            last_emit: (last > 0).then_some(Timestamp(last)),
        }
    }
}

/// A snapshot of an emitter's counters, or of all emitters of a factory.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct EmitterMetrics {
    /// Events accepted by the broker, by type, in [`EventType::ALL`] order.
    pub events_by_type: [u64; EventType::ALL.len()],
    /// Publish attempts, retries included.
    pub attempts: u64,
    /// Attempts after the first, i.e. retries after a transient error.
    pub retries: u64,
    /// Emits and settles that ended in an error other than a violation: refused by the
    /// manager, refused by the broker, or retries exhausted (the event then stays
    /// unsettled). Events refused for a run-lifecycle violation are counted in
    /// `violations` instead.
    pub failures: u64,
    /// Events refused because they broke the run lifecycle.
    pub violations: u64,
    /// Unsettled events (an emit failed transiently or was cancelled) that a later call
    /// published and the broker accepted; they count in `events_by_type` then.
    pub settled: u64,
    /// Wall-clock time of the newest accepted event.
    pub last_emit: Option<Timestamp>,
}

impl EmitterMetrics {
    /// Events of type `ty` accepted.
    pub fn events(&self, ty: EventType) -> u64 {
        self.events_by_type[type_index(ty)]
    }

    /// Events accepted, all types.
    pub fn events_total(&self) -> u64 {
        self.events_by_type.iter().sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_reads_every_counter() {
        let c = Counters::default();
        assert_eq!(c.snapshot(), EmitterMetrics::default());
        c.attempt();
        c.attempt();
        c.retry();
        c.failure();
        c.violation();
        c.settled();
        c.emitted(EventType::ToolCompleted, Timestamp(20));
        c.emitted(EventType::ToolCompleted, Timestamp(10));
        let s = c.snapshot();
        assert_eq!(s.attempts, 2);
        assert_eq!(s.retries, 1);
        assert_eq!(s.failures, 1);
        assert_eq!(s.violations, 1);
        assert_eq!(s.settled, 1);
        assert_eq!(s.events(EventType::ToolCompleted), 2);
        assert_eq!(s.events(EventType::AgentStarted), 0);
        assert_eq!(s.events_total(), 2);
        assert_eq!(s.last_emit, Some(Timestamp(20)));
    }
}
