//! How busy the runtime is, and what it decides: while the node is saturated, live events
//! may be queued for the connections' writers rather than written directly
//! ([`DirectSink`](super::DirectSink)).
//!
//! A direct write saves a writer's wake-up, which is most of what a delivery costs in user
//! space while the node has time to spare. A saturated node can be the other case: a woken
//! writer runs only after the tasks ahead of it, by when frames may have queued for its
//! connection, and it sends them in one write; and the deliverer, freed of the system
//! calls, gets through the publishes queued behind it sooner. Which of the two costs less
//! near saturation depends on the host and the load (docs/performance.md, *Paused while
//! the node is saturated*: on one host, pausing cost 1–11 % more per delivery at a load
//! that kept the node 85–95 % busy, and at one it could not keep up with, from 2 % more
//! to 12 % less), so the probe measures it rather than assume it.
//!
//! A probe reads the runtime's busy time (tokio's `worker_total_busy_duration`, over every
//! worker) and the deliveries made each [`LOAD_PROBE_INTERVAL`]; an interval's *cost* is
//! its busy time per delivery. While the workers were busy less than
//! [`DIRECT_WRITES_RESUME_BELOW`] of an interval, writes are direct. Once they were busy
//! more than [`DIRECT_WRITES_PAUSE_ABOVE`] of one, the probe tries the other way (pausing
//! direct writes, or resuming them) for [`WRITE_MODE_TRIAL`] intervals, and keeps it if
//! the trial's intervals cost less per delivery than the ones before it (the trial's first
//! interval, a transition, is not judged). The next trial comes after
//! [`WRITE_MODE_DWELL`]; each trial that loses doubles that wait, up to
//! [`WRITE_MODE_MAX_DWELL`], so a node whose choice is settled spends little time trying
//! the worse way.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, Weak};
use std::time::Duration;

use tokio::time::Instant;

use super::{Inner, UnifiedWebSocketManager};

/// How often the probe reads the runtime's busy time.
pub const LOAD_PROBE_INTERVAL: Duration = Duration::from_millis(50);

/// The share of an interval, in thousandths, the runtime's workers were busy above which
/// the probe tries the other way of writing live events (pausing direct writes, or
/// resuming them) and keeps the one that costs less per delivery.
pub const DIRECT_WRITES_PAUSE_ABOVE: u64 = 850;

/// The share of an interval, in thousandths, the runtime's workers were busy below which
/// live events are written directly, paused or not, and no trial is made.
pub const DIRECT_WRITES_RESUME_BELOW: u64 = 700;

/// How many probe intervals a trial of the other way of writing lasts (its first, a
/// transition, not judged).
pub const WRITE_MODE_TRIAL: u32 = 4;

/// How many probe intervals pass, at least, between two trials.
pub const WRITE_MODE_DWELL: u32 = 20;

/// The most probe intervals between two trials (the wait doubles from
/// [`WRITE_MODE_DWELL`] with each trial lost).
pub const WRITE_MODE_MAX_DWELL: u32 = 160;

/// The intervals of the way in force, before a trial, the trial is judged against.
const KEPT_COSTS: usize = WRITE_MODE_TRIAL as usize - 1;

// A trial judges at least one interval after its transition.
const _: () = assert!(WRITE_MODE_TRIAL >= 2);

/// The probe's findings; [`RuntimeLoad::paused`] is read on every live delivery.
#[derive(Debug, Default)]
pub(crate) struct RuntimeLoad {
    paused: AtomicBool,
    /// The share of the last interval the workers were busy, in thousandths.
    busy: AtomicU64,
    /// Written by the probe; read by it and by the stats.
    chooser: Mutex<Chooser>,
}

/// The probe's state: the way in force, a trial under way, and the costs it is judged by.
#[derive(Debug)]
struct Chooser {
    /// The way kept (outside a trial, the way in force).
    kept_paused: bool,
    trial: Option<Trial>,
    /// The last intervals' costs under the kept way, newest last.
    kept: Vec<u64>,
    /// Whether the next interval follows a change of way (not judged).
    switched: bool,
    /// Intervals since the last trial ended.
    since_trial: u32,
    /// Intervals to wait between trials, doubled by each trial lost.
    dwell: u32,
    /// The delivery count at the last probe (none before the first).
    delivered: Option<u64>,
    /// How many times direct writes were paused (a trial, or a pause kept).
    pauses: u64,
    /// How many trials of the other way were made.
    trials: u64,
    /// How many trials won, and their way was kept.
    switches: u64,
}

impl Default for Chooser {
    fn default() -> Self {
        Chooser {
            kept_paused: false,
            trial: None,
            kept: Vec::with_capacity(KEPT_COSTS),
            switched: false,
            since_trial: WRITE_MODE_DWELL,
            dwell: WRITE_MODE_DWELL,
            delivered: None,
            pauses: 0,
            trials: 0,
            switches: 0,
        }
    }
}

/// A trial of the way that is not kept.
#[derive(Debug, Default)]
struct Trial {
    intervals: u32,
    cost_sum: u64,
    costs: u64,
}

impl Chooser {
    /// Whether direct writes are paused now.
    fn paused(&self) -> bool {
        self.kept_paused ^ self.trial.is_some()
    }

    /// Takes one interval's findings (the share of it the workers were busy, in
    /// thousandths, and the deliveries counted so far) and decides the way of writing for
    /// the next, counting a pause when one begins.
    fn measured(&mut self, busy: u64, delivered_total: u64) {
        let was_paused = self.paused();
        self.next(busy, delivered_total);
        if self.paused() && !was_paused {
            self.pauses += 1;
        }
    }

    fn next(&mut self, busy: u64, delivered_total: u64) {
        let delivered = self
            .delivered
            .replace(delivered_total)
            .map_or(0, |before| delivered_total.wrapping_sub(before));
        // Busy time per delivery, in millionths of a thousandth of the interval.
        let cost = (delivered > 0).then(|| busy.saturating_mul(1_000_000) / delivered);
        let judged = !std::mem::take(&mut self.switched);
        if busy < DIRECT_WRITES_RESUME_BELOW {
            let was_paused = self.paused();
            if self.kept_paused || self.trial.is_some() {
                // The costs were another way's.
                self.kept.clear();
            }
            self.trial = None;
            self.kept_paused = false;
            self.since_trial = self.dwell;
            if was_paused {
                self.switched = true;
            } else {
                self.note_kept(cost.filter(|_| judged));
            }
            return;
        }
        if let Some(trial) = self.trial.as_mut() {
            trial.intervals += 1;
            if let Some(cost) = cost.filter(|_| judged) {
                trial.cost_sum += cost;
                trial.costs += 1;
            }
            if trial.intervals < WRITE_MODE_TRIAL {
                return;
            }
            let tried = (trial.costs > 0).then(|| trial.cost_sum / trial.costs);
            let kept = (!self.kept.is_empty())
                .then(|| self.kept.iter().sum::<u64>() / self.kept.len() as u64);
            self.trial = None;
            self.since_trial = 0;
            self.kept.clear();
            match (tried, kept) {
                (Some(tried), Some(kept)) if tried < kept => {
                    self.kept_paused = !self.kept_paused;
                    self.dwell = WRITE_MODE_DWELL;
                    self.switches += 1;
                }
                _ => {
                    self.switched = true;
                    self.dwell = (self.dwell * 2).min(WRITE_MODE_MAX_DWELL);
                }
            }
            return;
        }
        self.note_kept(cost.filter(|_| judged));
        self.since_trial = self.since_trial.saturating_add(1);
        if busy > DIRECT_WRITES_PAUSE_ABOVE && self.since_trial >= self.dwell {
            self.trial = Some(Trial::default());
            self.switched = true;
            self.trials += 1;
        }
    }

    /// Keeps the last [`KEPT_COSTS`] costs of the kept way.
    fn note_kept(&mut self, cost: Option<u64>) {
        if let Some(cost) = cost {
            if self.kept.len() == KEPT_COSTS {
                self.kept.remove(0);
            }
            self.kept.push(cost);
        }
    }
}

impl RuntimeLoad {
    /// Whether direct writes are paused.
    pub(crate) fn paused(&self) -> bool {
        self.paused.load(Ordering::Relaxed)
    }

    /// Records the share of one interval (in thousandths) the workers were busy, and the
    /// deliveries counted so far, and decides the way of writing for the next.
    pub(crate) fn measured(&self, busy: u64, delivered_total: u64) {
        self.busy.store(busy, Ordering::Relaxed);
        let mut chooser = self.chooser();
        chooser.measured(busy, delivered_total);
        self.paused.store(chooser.paused(), Ordering::Relaxed);
    }

    fn chooser(&self) -> std::sync::MutexGuard<'_, Chooser> {
        self.chooser
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Pauses or resumes direct writes at once, as a trial would (for tests of what a
    /// pause does).
    #[cfg(test)]
    pub(crate) fn set_paused(&self, paused: bool) {
        self.paused.store(paused, Ordering::Relaxed);
    }

    /// The share of the last interval the workers were busy, in thousandths.
    pub(crate) fn busy(&self) -> u64 {
        self.busy.load(Ordering::Relaxed)
    }

    /// How many times direct writes were paused.
    pub(crate) fn pauses(&self) -> u64 {
        self.chooser().pauses
    }

    /// How many trials of the other way of writing were made, and how many were kept.
    pub(crate) fn trials(&self) -> (u64, u64) {
        let chooser = self.chooser();
        (chooser.trials, chooser.switches)
    }
}

impl UnifiedWebSocketManager {
    /// Whether live events are queued for the writers rather than written directly,
    /// because the runtime's workers are busy and the probe found (or is trying whether)
    /// deliveries cost less that way (see the module docs and
    /// [`DIRECT_WRITES_PAUSE_ABOVE`]). A writer that sees it lends nothing while it waits.
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
        inner.load.measured(
            busy_share(now.1 - last.1, (now.0 - last.0) * workers as u32),
            inner.counters.delivered.load(Ordering::Relaxed),
        );
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

    /// Feeds a `RuntimeLoad` one probe interval at a time.
    struct Feed {
        load: RuntimeLoad,
        delivered: u64,
    }

    impl Feed {
        fn new() -> Feed {
            Feed {
                load: RuntimeLoad::default(),
                delivered: 0,
            }
        }

        /// One interval: busy `busy` thousandths of it, with `deliveries` made. Returns
        /// whether direct writes are paused for the next.
        fn interval(&mut self, busy: u64, deliveries: u64) -> bool {
            self.delivered += deliveries;
            self.load.measured(busy, self.delivered);
            self.load.paused()
        }

        /// `n` intervals alike; whether direct writes were paused after each.
        fn intervals(&mut self, n: u32, busy: u64, deliveries: u64) -> Vec<bool> {
            (0..n).map(|_| self.interval(busy, deliveries)).collect()
        }

        /// A fresh feed whose first busy interval has just begun a trial of pausing,
        /// judged against direct writes costing 800,000, 800,000 and 900,000 (a mean of
        /// about 833,333 a delivery).
        fn trial_of_pausing() -> Feed {
            let mut feed = Feed::new();
            feed.intervals(3, 800, 1_000);
            assert!(
                feed.interval(900, 1_000),
                "the first busy interval begins a trial"
            );
            feed
        }

        /// [`Feed::trial_of_pausing`], the trial won at 750,000 a delivery: paused.
        fn pause_kept() -> Feed {
            let mut feed = Feed::trial_of_pausing();
            feed.intervals(WRITE_MODE_TRIAL, 900, 1_200);
            assert!(feed.load.paused());
            feed
        }
    }

    #[test]
    fn writes_stay_direct_while_the_runtime_is_not_busier_than_the_upper_share() {
        let mut feed = Feed::new();
        assert!(!feed.intervals(100, 500, 1_000).contains(&true));
        assert!(
            !feed
                .intervals(100, DIRECT_WRITES_PAUSE_ABOVE, 1_000)
                .contains(&true),
            "at the bound, not above it"
        );
        assert_eq!(feed.load.trials(), (0, 0));
        assert_eq!(feed.load.pauses(), 0);
        assert_eq!(feed.load.busy(), DIRECT_WRITES_PAUSE_ABOVE);
    }

    #[test]
    fn a_busy_runtime_tries_a_pause_and_keeps_it_when_deliveries_cost_less() {
        // Direct: 900 thousandths for 1,000 deliveries.
        let mut feed = Feed::trial_of_pausing();
        assert_eq!(feed.load.trials(), (1, 0));
        // Paused: the same busy share buys 1,200 deliveries.
        let trial = feed.intervals(WRITE_MODE_TRIAL, 900, 1_200);
        assert!(trial.iter().all(|&paused| paused), "{trial:?}");
        assert_eq!(feed.load.trials(), (1, 1), "the pause was kept");
        assert!(!feed.intervals(10, 900, 1_200).contains(&false));
        assert_eq!(feed.load.pauses(), 1, "a pause is counted when it starts");
    }

    #[test]
    fn a_trial_that_costs_more_is_given_up_and_the_next_waits_twice_as_long() {
        let mut feed = Feed::trial_of_pausing();
        // Paused: 800 deliveries for the same busy share.
        let trial = feed.intervals(WRITE_MODE_TRIAL - 1, 900, 800);
        assert!(trial.iter().all(|&paused| paused), "{trial:?}");
        assert!(!feed.interval(900, 800), "lost: direct writes again");
        assert_eq!(feed.load.trials(), (1, 0));
        let waiting = feed.intervals(2 * WRITE_MODE_DWELL - 1, 900, 1_000);
        assert!(!waiting.contains(&true), "{waiting:?}");
        assert!(feed.interval(900, 1_000), "the next trial");
        feed.intervals(WRITE_MODE_TRIAL, 900, 800);
        assert_eq!(feed.load.trials(), (2, 0));
        assert_eq!(feed.load.pauses(), 2);
        let waiting = feed.intervals(4 * WRITE_MODE_DWELL - 1, 900, 1_000);
        assert!(!waiting.contains(&true));
        assert!(feed.interval(900, 1_000));
    }

    #[test]
    fn the_wait_between_trials_is_bounded() {
        let mut feed = Feed::trial_of_pausing();
        // Every trial loses; the waits double up to the most.
        let mut waits = Vec::new();
        for _ in 0..6 {
            feed.intervals(WRITE_MODE_TRIAL, 900, 500);
            let mut wait = 0;
            while !feed.interval(900, 1_000) {
                wait += 1;
                assert!(wait < 10 * WRITE_MODE_MAX_DWELL as usize);
            }
            waits.push(wait);
        }
        let dwell = |n: u32| (WRITE_MODE_DWELL << n).min(WRITE_MODE_MAX_DWELL) as usize - 1;
        assert_eq!(waits, (1..7).map(dwell).collect::<Vec<_>>());
    }

    #[test]
    fn a_trial_that_wins_is_kept_and_may_itself_be_given_up_later() {
        let mut feed = Feed::pause_kept();
        // Paused now; the next trial (of direct writes) comes after the shortest wait,
        // and wins if direct writes cost less by then.
        let waiting = feed.intervals(WRITE_MODE_DWELL - 1, 900, 1_000);
        assert!(waiting.iter().all(|&paused| paused), "{waiting:?}");
        assert!(!feed.interval(900, 1_000), "a trial of direct writes");
        feed.intervals(WRITE_MODE_TRIAL, 900, 1_300);
        assert!(!feed.load.paused());
        assert_eq!(feed.load.trials(), (2, 2));
    }

    #[test]
    fn deliveries_counted_before_the_first_probe_are_not_judged() {
        let mut feed = Feed::new();
        // A manager that delivered a million events before its first connection.
        feed.delivered = 1_000_000;
        feed.intervals(2, 800, 1_000);
        assert!(feed.interval(900, 1_000));
        // The pause costs less than the intervals measured, though not less than the
        // first probe's count would have made it seem.
        feed.intervals(WRITE_MODE_TRIAL, 900, 1_200);
        assert!(feed.load.paused());
        assert_eq!(feed.load.trials(), (1, 1));
    }

    #[test]
    fn the_costs_of_a_way_no_longer_kept_are_not_judged_against() {
        let mut feed = Feed::trial_of_pausing();
        // Pausing kept, at 500,000 a delivery.
        feed.intervals(WRITE_MODE_TRIAL, 900, 1_800);
        feed.intervals(WRITE_MODE_DWELL - 1, 900, 1_800);
        assert!(!feed.interval(900, 1_800), "a trial of direct writes");
        // Time to spare, during the trial: direct writes are kept.
        assert!(!feed.interval(600, 1_000));
        assert!(feed.interval(900, 1_000), "busy again: a trial of pausing");
        // Judged against the direct interval (900,000), not the pause's old costs.
        feed.intervals(WRITE_MODE_TRIAL, 900, 1_300);
        assert!(feed.load.paused());
        assert_eq!(feed.load.trials(), (3, 2));
    }

    #[test]
    fn the_first_interval_of_a_trial_is_not_judged() {
        let mut feed = Feed::trial_of_pausing();
        // The transition: hardly any deliveries while the writers catch up.
        feed.interval(900, 10);
        feed.intervals(WRITE_MODE_TRIAL - 1, 900, 1_200);
        assert!(feed.load.paused());
        assert_eq!(feed.load.trials(), (1, 1));
    }

    #[test]
    fn a_trial_without_deliveries_to_judge_is_given_up() {
        let mut feed = Feed::new();
        let paused = feed.intervals(WRITE_MODE_TRIAL, 1_000, 0);
        assert_eq!(paused, [true; WRITE_MODE_TRIAL as usize]);
        assert!(!feed.interval(1_000, 0));
        assert_eq!(feed.load.trials(), (1, 0));
    }

    #[test]
    fn a_runtime_with_time_to_spare_writes_directly_at_once() {
        let mut feed = Feed::pause_kept();
        assert!(
            feed.interval(DIRECT_WRITES_RESUME_BELOW, 1_000),
            "at the bound"
        );
        assert!(!feed.interval(DIRECT_WRITES_RESUME_BELOW - 1, 1_000));
        // Busy again: a trial of pausing begins with the first busy interval.
        assert!(!feed.interval(800, 1_000));
        assert!(feed.interval(900, 1_000));
        assert_eq!(feed.load.trials(), (2, 1));
        // A trial under way ends too.
        assert!(!feed.interval(0, 0));
        assert_eq!(feed.load.pauses(), 2);
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
        // A trial of pausing began (without deliveries to judge, it is given up).
        assert!(manager.inner.load.trials().0 >= 1);
        assert!(manager.inner.load.pauses() >= 1);
        // Idle for four intervals: the workers park.
        tokio::time::sleep(LOAD_PROBE_INTERVAL * 4).await;
        assert!(
            !manager.direct_writes_paused(),
            "busy {}",
            manager.inner.load.busy()
        );
    }
}
