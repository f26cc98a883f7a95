//! `WebSocketEmitterPool`: one shared emitter per run, so that every part of an agent
//! runtime reporting on a run shares its state. A live run is never evicted; a finished
//! run leaves the pool at its terminal event and is remembered as finished; at most
//! `max_emitters` runs are held, and a new run is refused rather than a live one dropped.
//!
//! What it is not: a cache of its live runs. A cache evicts what it likes when full, and
//! evicting a run that is still going splits its state in two — the next report on it
//! starts from `NotStarted` and is refused, and the user never sees the run end (issue
//! 15). So the live runs are in a plain `HashMap` bounded by count, not in `lru`,
//! `quick_cache` or `moka`: those choose victims by recency or frequency, pinning them
//! would be fighting the crate, and the only entries the pool may drop — emitters that
//! carry nothing (not started, nothing unsettled, held by no one else) — hold no state,
//! so which of them goes first does not matter. The finished runs it remembers *are* a
//! cache (forgetting the oldest costs little) and live in `lru::LruCache`.

use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use agentwire_protocol::{RunOutcome, RunState};
use lru::LruCache;
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::context::{RunContext, RunKey};
use crate::emitter::{FinishedRuns, UnifiedWebSocketEmitter};
use crate::error::TooManyRuns;
use crate::factory::WebSocketEmitterFactory;

/// Bounds and intervals of a [`WebSocketEmitterPool`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolConfig {
    /// Most runs held at once (default 100). A live run — started and not finished,
    /// holding an unsettled event, or held outside the pool — is never evicted: getting a
    /// new run's emitter when full first drops the emitters that carry nothing
    /// ([`PoolStats::evicted_full`]), and if every place still holds a live run the new
    /// run is refused with [`TooManyRuns`] ([`PoolStats::refused`]). `0` is treated as
    /// `1`.
    pub max_emitters: usize,
    /// An emitter that carries nothing (run not started, nothing unsettled, no one else
    /// holding it) and was not used for this long is dropped by the cleanup task (default
    /// 300 s). A running run is never dropped for being quiet: a tool call takes as long
    /// as it takes (as long as the broker keeps the run: `RunLimits::ttl` after its last
    /// event, default 1 h).
    pub idle_ttl: Duration,
    /// How often the background task drops idle emitters and settles unsettled events
    /// (default 30 s), so an idle emitter goes at most `idle_ttl + cleanup_interval`
    /// after its last use.
    pub cleanup_interval: Duration,
    /// How many finished runs the pool remembers (default 1024), so that a late report on
    /// one is refused as `AfterTerminal` instead of starting the run again. The oldest is
    /// forgotten first ([`PoolStats::finished_forgotten`]). `0` is treated as `1`.
    pub max_finished_runs: usize,
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            max_emitters: 100,
            idle_ttl: Duration::from_secs(300),
            cleanup_interval: Duration::from_secs(30),
            max_finished_runs: 1024,
        }
    }
}

/// A snapshot of a pool's size and counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PoolStats {
    /// Emitters held now (runs not finished).
    pub size: usize,
    /// The bound on `size`.
    pub max_emitters: usize,
    /// Emitters made because the run had none in the pool.
    pub created: u64,
    /// Gets answered with the run's existing emitter.
    pub reused: u64,
    /// Emitters that carried nothing, dropped to make room for a new run.
    pub evicted_full: u64,
    /// Emitters that carried nothing, dropped for being idle longer than `idle_ttl`.
    pub evicted_idle: u64,
    /// New runs refused with [`TooManyRuns`] because every place held a live run: the
    /// count to watch for `max_emitters` being too small.
    pub refused: u64,
    /// Runs that left the pool at their terminal event.
    pub finished: u64,
    /// Finished runs remembered now.
    pub finished_remembered: usize,
    /// Finished runs forgotten, oldest first, beyond `max_finished_runs`.
    pub finished_forgotten: u64,
}

#[derive(Debug)]
struct State {
    /// The runs not finished, at most `max_emitters`.
    runs: HashMap<RunKey, UnifiedWebSocketEmitter>,
    /// How each remembered finished run ended.
    finished: LruCache<RunKey, RunOutcome>,
}

#[derive(Debug)]
struct Inner {
    factory: WebSocketEmitterFactory,
    config: PoolConfig,
    state: Mutex<State>,
    created: AtomicU64,
    reused: AtomicU64,
    evicted_full: AtomicU64,
    evicted_idle: AtomicU64,
    refused: AtomicU64,
    finished: AtomicU64,
    finished_forgotten: AtomicU64,
    /// Dropping it (with the pool, or in `shutdown`) ends the cleanup task.
    stop: Mutex<Option<oneshot::Sender<()>>>,
}

impl Inner {
    fn state(&self) -> MutexGuard<'_, State> {
        // Every mutation of `State` completes before anything that can panic.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl FinishedRuns for Inner {
    fn run_finished(&self, emitter: &UnifiedWebSocketEmitter, outcome: RunOutcome) {
        let key = emitter.context().key();
        let mut state = self.state();
        // Only this emitter: after `remove`, the run may have a new one.
        if state.runs.get(&key).is_some_and(|e| e.same_as(emitter)) {
            state.runs.remove(&key);
            self.finished.fetch_add(1, Ordering::Relaxed);
        }
        let known = state.finished.contains(&key);
        if state.finished.push(key, outcome).is_some() && !known {
            self.finished_forgotten.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Keeps one [`UnifiedWebSocketEmitter`] per run, so every part of an agent runtime that
/// reports on a run shares its emitter and its run state.
///
/// The pool's rules:
/// - a run that is live — started and not finished, holding an unsettled event, or held
///   outside the pool — is never evicted, neither to make room nor for being quiet;
/// - a run leaves the pool at its terminal event, and the pool remembers how it ended
///   (up to `max_finished_runs`): getting a finished run's emitter again hands out one in
///   that finished state, so a late report is refused as `AfterTerminal`;
/// - a new run when `max_emitters` live runs are held is refused with [`TooManyRuns`];
/// - the cleanup task drops idle emitters that carry nothing and settles unsettled events
///   (see [`UnifiedWebSocketEmitter::settle`]), so a run whose last event failed while the
///   broker was away reaches the user once the broker is back, even if no one reports on
///   the run any more.
///
/// A cheap handle: clones share the pool. The cleanup task holds only a weak reference and
/// ends when the last handle is dropped or [`Self::shutdown`] is called; both, and calling
/// `shutdown` or [`Self::clear`] twice, are safe.
#[derive(Debug, Clone)]
pub struct WebSocketEmitterPool {
    inner: Arc<Inner>,
}

impl WebSocketEmitterPool {
    /// A pool making its emitters with `factory`. Inside a tokio runtime it starts the
    /// cleanup task; outside one, idle emitters are dropped only by [`Self::cleanup_idle`]
    /// and unsettled events settled only by [`Self::settle_unsettled`] (or by the runs'
    /// own next emit).
    pub fn new(factory: WebSocketEmitterFactory, config: PoolConfig) -> Self {
        let (stop_tx, stop_rx) = oneshot::channel();
        let finished = NonZeroUsize::new(config.max_finished_runs).unwrap_or(NonZeroUsize::MIN);
        let inner = Arc::new(Inner {
            factory,
            config,
            state: Mutex::new(State {
                runs: HashMap::new(),
                finished: LruCache::new(finished),
            }),
            created: AtomicU64::new(0),
            reused: AtomicU64::new(0),
            evicted_full: AtomicU64::new(0),
            evicted_idle: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            finished: AtomicU64::new(0),
            finished_forgotten: AtomicU64::new(0),
            stop: Mutex::new(Some(stop_tx)),
        });
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(cleanup_task(Arc::downgrade(&inner), stop_rx));
        }
        WebSocketEmitterPool { inner }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.inner.state()
    }

    /// The emitter of `context`'s run: the pooled one; for a run the pool remembers as
    /// finished, an emitter in that finished state (not pooled); otherwise a new one.
    ///
    /// # Errors
    /// [`TooManyRuns`] when the run is new and the pool holds `max_emitters` live runs
    /// even after dropping the emitters that carry nothing. Nothing is evicted for it.
    pub fn get_emitter(
        &self,
        context: &RunContext,
    ) -> Result<UnifiedWebSocketEmitter, TooManyRuns> {
        let key = context.key();
        let mut state = self.state();
        if let Some(emitter) = state.runs.get(&key) {
            emitter.touch();
            self.inner.reused.fetch_add(1, Ordering::Relaxed);
            return Ok(emitter.clone());
        }
        if let Some(outcome) = state.finished.peek(&key).copied() {
            drop(state);
            return Ok(self.inner.factory.create(
                context.clone(),
                RunState::Finished(outcome),
                None,
            ));
        }
        let limit = self.inner.config.max_emitters.max(1);
        if state.runs.len() >= limit {
            let before = state.runs.len();
            state.runs.retain(|_, e| !e.carries_nothing());
            let dropped = before - state.runs.len();
            self.inner
                .evicted_full
                .fetch_add(dropped as u64, Ordering::Relaxed);
            if state.runs.len() >= limit {
                drop(state);
                self.inner.refused.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    user = %context.user_id(), run = %context.run_id(), limit,
                    "new run refused: the emitter pool is full of live runs"
                );
                return Err(TooManyRuns { limit });
            }
        }
        let weak = Arc::downgrade(&self.inner);
        let pool: Weak<dyn FinishedRuns> = weak;
        let emitter = self
            .inner
            .factory
            .create(context.clone(), RunState::NotStarted, Some(pool));
        state.runs.insert(key, emitter.clone());
        self.inner.created.fetch_add(1, Ordering::Relaxed);
        Ok(emitter)
    }

    /// Forgets the emitter of `context`'s run, live or not, and returns it if it was
    /// pooled; removing twice returns `None` the second time. A handle still held keeps
    /// working, but the pool no longer shares it: the next [`Self::get_emitter`] for the
    /// run starts from `NotStarted`. Runs leave by themselves at their terminal event;
    /// this is for a run its runtime abandoned without one.
    pub fn remove(&self, context: &RunContext) -> Option<UnifiedWebSocketEmitter> {
        self.state().runs.remove(&context.key())
    }

    /// Drops every emitter that carries nothing and was idle for `idle_ttl` or longer, and
    /// returns how many. The cleanup task calls it every `cleanup_interval`.
    pub fn cleanup_idle(&self) -> usize {
        let ttl = self.inner.config.idle_ttl;
        let now = Instant::now();
        let mut state = self.state();
        let before = state.runs.len();
        state.runs.retain(|_, e| {
            !(e.carries_nothing() && now.saturating_duration_since(e.last_active()) >= ttl)
        });
        let removed = before - state.runs.len();
        drop(state);
        if removed > 0 {
            self.inner
                .evicted_idle
                .fetch_add(removed as u64, Ordering::Relaxed);
            tracing::debug!(removed, "idle emitters dropped");
        }
        removed
    }

    /// Settles the unsettled event of every pooled emitter that has one and no emit under
    /// way ([`UnifiedWebSocketEmitter::settle`]), one emitter after the other, and returns
    /// how many the broker accepted. The cleanup task calls it every `cleanup_interval`.
    ///
    /// # Cancel safety
    /// Cancel safe: an event whose settle is cancelled stays unsettled.
    pub async fn settle_unsettled(&self) -> usize {
        settle_all(self.needing_settlement()).await
    }

    fn needing_settlement(&self) -> Vec<UnifiedWebSocketEmitter> {
        self.state()
            .runs
            .values()
            .filter(|e| e.needs_settling())
            .cloned()
            .collect()
    }

    /// Forgets every emitter, live or not, and every finished run, and returns how many
    /// emitters there were. Safe to call again.
    pub fn clear(&self) -> usize {
        let mut state = self.state();
        let n = state.runs.len();
        state.runs.clear();
        state.finished.clear();
        n
    }

    /// Stops the cleanup task and forgets everything, as [`Self::clear`]. The pool stays
    /// usable (idle emitters are then dropped only by [`Self::cleanup_idle`], unsettled
    /// events settled only by [`Self::settle_unsettled`] or the runs' next emit).
    /// Idempotent.
    pub fn shutdown(&self) {
        let stop = self
            .inner
            .stop
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        drop(stop);
        self.clear();
    }

    /// Emitters held now.
    pub fn len(&self) -> usize {
        self.state().runs.len()
    }

    /// Whether the pool holds no emitter.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The configuration in force.
    pub fn config(&self) -> &PoolConfig {
        &self.inner.config
    }

    /// The factory that makes the pool's emitters (and sums their metrics).
    pub fn factory(&self) -> &WebSocketEmitterFactory {
        &self.inner.factory
    }

    /// A snapshot of size and counters.
    pub fn stats(&self) -> PoolStats {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let (size, finished_remembered) = {
            let state = self.state();
            (state.runs.len(), state.finished.len())
        };
        PoolStats {
            size,
            max_emitters: self.inner.config.max_emitters.max(1),
            created: load(&self.inner.created),
            reused: load(&self.inner.reused),
            evicted_full: load(&self.inner.evicted_full),
            evicted_idle: load(&self.inner.evicted_idle),
            refused: load(&self.inner.refused),
            finished: load(&self.inner.finished),
            finished_remembered,
            finished_forgotten: load(&self.inner.finished_forgotten),
        }
    }
}

/// Settles each emitter's unsettled event in turn; returns how many were accepted.
async fn settle_all(emitters: Vec<UnifiedWebSocketEmitter>) -> usize {
    let mut settled = 0;
    for emitter in emitters {
        // A failure is logged and counted by the emitter; the next round tries again.
        if let Ok(Some(_)) = emitter.settle().await {
            settled += 1;
        }
    }
    settled
}

/// Every `cleanup_interval`, drops idle emitters and settles unsettled events, until the
/// pool is gone or shut down.
async fn cleanup_task(pool: Weak<Inner>, mut stop: oneshot::Receiver<()>) {
    let every = match pool.upgrade() {
        Some(inner) => inner.config.cleanup_interval.max(Duration::from_millis(1)),
        None => return,
    };
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = &mut stop => return,
            _ = tick.tick() => {}
        }
        let Some(inner) = pool.upgrade() else { return };
        let pool_now = WebSocketEmitterPool { inner };
        pool_now.cleanup_idle();
        let unsettled = pool_now.needing_settlement();
        // No strong handle across the settles: the pool may go meanwhile.
        drop(pool_now);
        tokio::select! {
            _ = &mut stop => return,
            _ = settle_all(unsettled) => {}
        }
    }
}
