//! How busy the runtime is, and what it decides: while the node is saturated, live events
//! are queued for the connections' writers rather than written directly
//! ([`DirectSink`](super::DirectSink)).
//!
//! A direct write saves a writer's wake-up, which is most of what a delivery costs in user
//! space while the node has time to spare. A saturated node is the other case: a woken
//! writer runs only after the tasks ahead of it, by when several frames have queued for its
//! connection, and it sends them in one write; written directly, each frame would take a
//! system call of its own, and the node would serve fewer deliveries at more CPU each. A
//! probe reads the runtime's busy time (tokio's `worker_total_busy_duration`, over every
//! worker) each [`LOAD_PROBE_INTERVAL`]: direct writes pause once the workers were busy
//! more than [`DIRECT_WRITES_PAUSE_ABOVE`] of the interval, and resume once they were busy
//! less than [`DIRECT_WRITES_RESUME_BELOW`] of it (the gap keeps a node near the bound from
//! switching at every probe).

use std::sync::Weak;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use super::{Inner, UnifiedWebSocketManager};

/// How often the probe reads the runtime's busy time.
pub const LOAD_PROBE_INTERVAL: Duration = Duration::from_millis(50);

/// The share of an interval, in thousandths, the runtime's workers were busy above which
/// direct writes pause.
pub const DIRECT_WRITES_PAUSE_ABOVE: u64 = 850;

/// The share of an interval, in thousandths, the runtime's workers were busy below which
/// paused direct writes resume.
pub const DIRECT_WRITES_RESUME_BELOW: u64 = 700;

/// The probe's findings; [`RuntimeLoad::paused`] is read on every live delivery.
#[derive(Debug, Default)]
pub(crate) struct RuntimeLoad {
    paused: AtomicBool,
    /// The share of the last interval the workers were busy, in thousandths.
    busy: AtomicU64,
    /// How many times direct writes were paused.
    pauses: AtomicU64,
}

impl RuntimeLoad {
    /// Whether direct writes are paused.
    pub(crate) fn paused(&self) -> bool {
        self.paused.load(Ordering::Relaxed)
    }

    /// Records the share of one interval (in thousandths) the workers were busy.
    pub(crate) fn measured(&self, busy: u64) {
        self.busy.store(busy, Ordering::Relaxed);
        let paused = self.paused();
        if !paused && busy > DIRECT_WRITES_PAUSE_ABOVE {
            self.paused.store(true, Ordering::Relaxed);
            self.pauses.fetch_add(1, Ordering::Relaxed);
        } else if paused && busy < DIRECT_WRITES_RESUME_BELOW {
            self.paused.store(false, Ordering::Relaxed);
        }
    }

    /// The share of the last interval the workers were busy, in thousandths.
    pub(crate) fn busy(&self) -> u64 {
        self.busy.load(Ordering::Relaxed)
    }

    /// How many times direct writes were paused.
    pub(crate) fn pauses(&self) -> u64 {
        self.pauses.load(Ordering::Relaxed)
    }
}

impl UnifiedWebSocketManager {
    /// Whether live events are queued for the writers rather than written directly,
    /// because the runtime's workers are busy (see [`DIRECT_WRITES_PAUSE_ABOVE`]). A
    /// writer that sees it lends nothing while it waits.
    pub fn direct_writes_paused(&self) -> bool {
        self.inner.load.paused()
    }

    /// Starts the probe (with the sweeper): a task that holds only a weak reference and
    /// ends once the manager is dropped.
    pub(super) fn start_load_probe(&self, handle: &tokio::runtime::Handle) {
        handle.spawn(probe(
            handle.metrics(),
            std::sync::Arc::downgrade(&self.inner),
        ));
    }
}

async fn probe(metrics: tokio::runtime::RuntimeMetrics, inner: Weak<Inner>) {
    let workers = metrics.num_workers().max(1);
    let busy_time = || -> Duration {
        (0..workers)
            .map(|w| metrics.worker_total_busy_duration(w))
            .sum()
    };
    let mut tick = tokio::time::interval(LOAD_PROBE_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last = (Instant::now(), busy_time());
    loop {
        tick.tick().await;
        let now = (Instant::now(), busy_time());
        let Some(inner) = inner.upgrade() else { break };
        inner.load.measured(busy_share(
            now.1 - last.1,
            (now.0 - last.0) * workers as u32,
        ));
        last = now;
    }
}

/// `busy` as a share of `of`, in thousandths (at most 1,000).
fn busy_share(busy: Duration, of: Duration) -> u64 {
    if of.is_zero() {
        return 0;
    }
    let share = busy.as_nanos().saturating_mul(1_000) / of.as_nanos();
    u64::try_from(share).unwrap_or(u64::MAX).min(1_000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn direct_writes_pause_above_the_upper_share_and_resume_below_the_lower() {
        let load = RuntimeLoad::default();
        load.measured(DIRECT_WRITES_PAUSE_ABOVE);
        assert!(!load.paused(), "at the bound, not above it");
        load.measured(DIRECT_WRITES_PAUSE_ABOVE + 1);
        assert!(load.paused());
        assert_eq!(load.busy(), DIRECT_WRITES_PAUSE_ABOVE + 1);
        load.measured(DIRECT_WRITES_RESUME_BELOW);
        assert!(load.paused(), "between the bounds it stays as it was");
        load.measured(990);
        assert_eq!(load.pauses(), 1, "a pause is counted when it starts");
        load.measured(DIRECT_WRITES_RESUME_BELOW - 1);
        assert!(!load.paused());
        load.measured(DIRECT_WRITES_PAUSE_ABOVE);
        assert!(!load.paused(), "between the bounds it stays as it was");
        load.measured(1_000);
        assert_eq!(load.pauses(), 2);
    }

    #[test]
    fn the_busy_share_is_in_thousandths_and_bounded() {
        let ms = Duration::from_millis;
        assert_eq!(busy_share(ms(25), ms(100)), 250);
        assert_eq!(busy_share(ms(0), ms(100)), 0);
        assert_eq!(busy_share(ms(150), ms(100)), 1_000);
        assert_eq!(busy_share(ms(5), Duration::ZERO), 0);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn the_probe_finds_a_runtime_kept_busy() {
        let manager = UnifiedWebSocketManager::in_memory();
        manager.start_load_probe(&tokio::runtime::Handle::current());
        // This task holds the worker for six intervals, a few milliseconds at a time,
        // yielding in between so the probe runs: the worker is never idle.
        let until = std::time::Instant::now() + LOAD_PROBE_INTERVAL * 6;
        while std::time::Instant::now() < until {
            std::thread::sleep(Duration::from_millis(5));
            tokio::task::yield_now().await;
        }
        assert!(
            manager.inner.load.busy() > DIRECT_WRITES_PAUSE_ABOVE,
            "busy {}",
            manager.inner.load.busy()
        );
        assert!(manager.direct_writes_paused());
        // Idle for four intervals: the workers park.
        tokio::time::sleep(LOAD_PROBE_INTERVAL * 4).await;
        assert!(
            !manager.direct_writes_paused(),
            "busy {}",
            manager.inner.load.busy()
        );
    }
}
