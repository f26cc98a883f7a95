//! The run-lifecycle states the publish API remembers, so it can refuse an event that
//! breaks its run's order (docs/protocol.md §7) with 409.
//!
//! A bounded map keyed by (user, run): at most `--max-runs` entries, each forgotten
//! `--run-ttl` after its last event, and at the bound the least recently used one is
//! forgotten to make room (counted in `agentwire_run_state_evictions_total`). A forgotten
//! run starts over: its next event must be `agent_started`.
//!
//! Each run's state sits behind its own async lock. A request locks the runs it touches,
//! in key order (so two requests cannot wait on each other), and holds them from the check
//! until its events are published: two requests for one run are checked one after the
//! other, never both against the same state.
//!
//! Why not an LRU/TTL crate (`lru`, `moka`, `quick_cache`): these few lines are exactly
//! what the table needs — eviction and expiry counted apart for their metrics, and each
//! entry handed out as a shared async lock that a request keeps across its publishes even
//! if the run is evicted meanwhile — and the table is to move beneath the broker trait,
//! where its bounds change (a byte bound, a share per publisher), so a dependency picked
//! for today's shape would not outlive the move.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use agentwire_protocol::{RunId, RunState, UserId};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::OwnedMutexGuard;
use tokio::time::Instant;

/// A run: whose stream it is in, and its id (run ids are the publisher's, so two users'
/// runs may share one).
pub(crate) type RunKey = (UserId, RunId);

/// The metrics of the run table.
#[derive(Debug, Clone, Default)]
pub(crate) struct RunMetrics {
    /// Runs remembered now.
    pub(crate) runs: Gauge,
    /// Runs forgotten at the `--max-runs` bound.
    pub(crate) evictions: Counter,
    /// Runs forgotten `--run-ttl` after their last event.
    pub(crate) expired: Counter,
}

#[derive(Debug)]
struct Slot {
    state: Arc<tokio::sync::Mutex<RunState>>,
    /// Position in `Runs::order`.
    tick: u64,
    touched: Instant,
}

#[derive(Debug, Default)]
struct Runs {
    map: foldhash::HashMap<RunKey, Slot>,
    /// Every key by when it was last touched, oldest first; ticks grow with time, so the
    /// front is both the least recently used run and the first to expire.
    order: BTreeMap<u64, RunKey>,
    next_tick: u64,
}

/// The remembered run states.
#[derive(Debug)]
pub(crate) struct RunTable {
    max_runs: usize,
    ttl: Duration,
    runs: Mutex<Runs>,
    metrics: RunMetrics,
}

/// The states of the runs one request touches, locked until it is dropped.
#[derive(Debug)]
pub(crate) struct LockedRuns {
    guards: BTreeMap<RunKey, OwnedMutexGuard<RunState>>,
}

impl LockedRuns {
    /// Copies of the locked states, to check a batch against before anything is
    /// published.
    pub(crate) fn snapshot(&self) -> HashMap<RunKey, RunState> {
        self.guards
            .iter()
            .map(|(k, g)| (k.clone(), (**g).clone()))
            .collect()
    }

    /// The state of a locked run.
    pub(crate) fn state_mut(&mut self, key: &RunKey) -> Option<&mut RunState> {
        self.guards.get_mut(key).map(|g| &mut **g)
    }
}

impl RunTable {
    /// A table of at most `max_runs` runs (at least 1), each forgotten `ttl` after its
    /// last event.
    pub(crate) fn new(max_runs: usize, ttl: Duration, metrics: RunMetrics) -> Self {
        RunTable {
            max_runs: max_runs.max(1),
            ttl,
            runs: Mutex::new(Runs::default()),
            metrics,
        }
    }

    fn runs(&self) -> MutexGuard<'_, Runs> {
        // Every critical section below leaves the map consistent before anything that can
        // panic, so a poisoned lock holds valid data.
        self.runs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// How many runs are remembered.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.runs().map.len()
    }

    /// Locks the states of `keys`, creating those not remembered (as not started), and
    /// marks them used now.
    ///
    /// # Cancel safety
    /// Dropping the future releases the locks taken so far.
    pub(crate) async fn lock(&self, keys: BTreeSet<RunKey>) -> LockedRuns {
        let states: Vec<(RunKey, Arc<tokio::sync::Mutex<RunState>>)> = {
            let now = Instant::now();
            let mut runs = self.runs();
            self.expire(&mut runs, now);
            let states = keys
                .into_iter()
                .map(|key| {
                    let state = self.touch(&mut runs, &key, now);
                    (key, state)
                })
                .collect();
            self.metrics
                .runs
                .set(i64::try_from(runs.map.len()).unwrap_or(i64::MAX));
            states
        };
        let mut guards = BTreeMap::new();
        // `keys` was a sorted set, so every request takes its locks in the same order.
        for (key, state) in states {
            guards.insert(key, state.lock_owned().await);
        }
        LockedRuns { guards }
    }

    fn touch(
        &self,
        runs: &mut Runs,
        key: &RunKey,
        now: Instant,
    ) -> Arc<tokio::sync::Mutex<RunState>> {
        let tick = runs.next_tick;
        runs.next_tick += 1;
        if let Some(slot) = runs.map.get_mut(key) {
            let old = std::mem::replace(&mut slot.tick, tick);
            slot.touched = now;
            let state = slot.state.clone();
            runs.order.remove(&old);
            runs.order.insert(tick, key.clone());
            return state;
        }
        while runs.map.len() >= self.max_runs {
            let Some((_, oldest)) = runs.order.pop_first() else {
                break;
            };
            runs.map.remove(&oldest);
            self.metrics.evictions.inc();
        }
        let state = Arc::new(tokio::sync::Mutex::new(RunState::NotStarted));
        runs.map.insert(
            key.clone(),
            Slot {
                state: state.clone(),
                tick,
                touched: now,
            },
        );
        runs.order.insert(tick, key.clone());
        state
    }

    /// Forgets every run not touched for the TTL.
    fn expire(&self, runs: &mut Runs, now: Instant) {
        while let Some((_, key)) = runs.order.first_key_value() {
            let stale = runs
                .map
                .get(key)
                .is_none_or(|slot| now.saturating_duration_since(slot.touched) >= self.ttl);
            if !stale {
                break;
            }
            if let Some((_, key)) = runs.order.pop_first() {
                runs.map.remove(&key);
                self.metrics.expired.inc();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use agentwire_protocol::{AgentStarted, EventData};

    fn key(user: &str, run: &str) -> RunKey {
        (
            UserId::new(user).expect("user"),
            run.parse::<RunId>().expect("run"),
        )
    }

    fn one(k: &RunKey) -> BTreeSet<RunKey> {
        BTreeSet::from([k.clone()])
    }

    async fn start(table: &RunTable, k: &RunKey) {
        let mut locked = table.lock(one(k)).await;
        locked
            .state_mut(k)
            .expect("locked")
            .apply(&EventData::AgentStarted(AgentStarted::default()))
            .expect("starts");
    }

    async fn state(table: &RunTable, k: &RunKey) -> RunState {
        table
            .lock(one(k))
            .await
            .snapshot()
            .remove(k)
            .expect("locked")
    }

    #[tokio::test(start_paused = true)]
    async fn states_are_kept_per_user_and_run() {
        let table = RunTable::new(10, Duration::from_secs(60), RunMetrics::default());
        start(&table, &key("alice", "r1")).await;
        assert!(matches!(
            state(&table, &key("alice", "r1")).await,
            RunState::Running { .. }
        ));
        assert_eq!(state(&table, &key("bob", "r1")).await, RunState::NotStarted);
        assert_eq!(table.len(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn the_least_recently_used_run_is_evicted_at_the_bound() {
        let metrics = RunMetrics::default();
        let table = RunTable::new(2, Duration::from_secs(60), metrics.clone());
        let (a, b, c) = (key("u", "a"), key("u", "b"), key("u", "c"));
        start(&table, &a).await;
        start(&table, &b).await;
        // Touch `a`, so `b` is now the least recently used.
        drop(table.lock(one(&a)).await);
        start(&table, &c).await;
        assert_eq!(table.len(), 2);
        assert_eq!(metrics.evictions.get(), 1);
        assert!(matches!(state(&table, &a).await, RunState::Running { .. }));
        // `b` was forgotten: it is not started any more (and looking it up evicts `c`).
        assert_eq!(state(&table, &b).await, RunState::NotStarted);
        assert_eq!(metrics.runs.get(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn idle_runs_expire_after_the_ttl() {
        let metrics = RunMetrics::default();
        let table = RunTable::new(10, Duration::from_secs(60), metrics.clone());
        let (a, b) = (key("u", "a"), key("u", "b"));
        start(&table, &a).await;
        tokio::time::advance(Duration::from_secs(30)).await;
        start(&table, &b).await;
        tokio::time::advance(Duration::from_secs(31)).await;
        // `a` is 61 s idle, `b` 31 s.
        assert!(matches!(state(&table, &b).await, RunState::Running { .. }));
        assert_eq!(metrics.expired.get(), 1);
        assert_eq!(state(&table, &a).await, RunState::NotStarted);
        assert_eq!(metrics.evictions.get(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_second_request_for_a_run_waits_for_the_first() {
        let table = Arc::new(RunTable::new(
            10,
            Duration::from_secs(60),
            RunMetrics::default(),
        ));
        let k = key("u", "r");
        let first = table.lock(one(&k)).await;
        let waiting = tokio::spawn({
            let (table, k) = (table.clone(), k.clone());
            async move { table.lock(one(&k)).await.snapshot().remove(&k) }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        drop(first);
        assert_eq!(waiting.await.expect("task"), Some(RunState::NotStarted));
    }
}
