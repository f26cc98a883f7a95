//! `WebSocketEmitterPool`: one shared emitter per run, at most `max_emitters` of them, the
//! least recently used evicted when full and idle ones removed by a background task.
//!
//! What it is not: the owner of the emitters it hands out. An emitter evicted or removed
//! while someone still holds it keeps working for that holder; the pool only forgets it,
//! and the next [`WebSocketEmitterPool::get_emitter`] for that run makes a new one, whose
//! run state starts over. Size `max_emitters` above the number of concurrent runs.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::context::{RunContext, RunKey};
use crate::emitter::UnifiedWebSocketEmitter;
use crate::factory::WebSocketEmitterFactory;

/// Bounds and intervals of a [`WebSocketEmitterPool`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolConfig {
    /// Most emitters held (default 100). Getting a new run's emitter when full evicts the
    /// least recently used one. `0` is treated as `1`.
    pub max_emitters: usize,
    /// An emitter neither handed out nor used to emit for this long is removed (default
    /// 300 s).
    pub idle_ttl: Duration,
    /// How often the background task looks for idle emitters (default 30 s), so an idle
    /// emitter goes at most `idle_ttl + cleanup_interval` after its last use.
    pub cleanup_interval: Duration,
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            max_emitters: 100,
            idle_ttl: Duration::from_secs(300),
            cleanup_interval: Duration::from_secs(30),
        }
    }
}

/// A snapshot of a pool's size and counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PoolStats {
    /// Emitters held now.
    pub size: usize,
    /// The bound on `size`.
    pub max_emitters: usize,
    /// Emitters made because the run had none in the pool.
    pub created: u64,
    /// Gets answered with the run's existing emitter.
    pub reused: u64,
    /// Emitters evicted, least recently used first, to make room.
    pub evicted_lru: u64,
    /// Emitters removed for being idle longer than `idle_ttl`.
    pub evicted_idle: u64,
}

#[derive(Debug)]
struct Entry {
    emitter: UnifiedWebSocketEmitter,
    /// Value of `State::clock` at the last get: orders entries for LRU eviction, also
    /// when the (paused) clock shows the same instant for several gets.
    used: u64,
}

#[derive(Debug, Default)]
struct State {
    entries: HashMap<RunKey, Entry>,
    clock: u64,
}

#[derive(Debug)]
struct Inner {
    factory: WebSocketEmitterFactory,
    config: PoolConfig,
    state: Mutex<State>,
    created: AtomicU64,
    reused: AtomicU64,
    evicted_lru: AtomicU64,
    evicted_idle: AtomicU64,
    /// Dropping it (with the pool, or in `shutdown`) ends the cleanup task.
    stop: Mutex<Option<oneshot::Sender<()>>>,
}

/// Keeps one [`UnifiedWebSocketEmitter`] per run, so every part of an agent runtime that
/// reports on a run shares its emitter and its run state.
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
    /// cleanup task; outside one, idle emitters are removed only by
    /// [`Self::cleanup_idle`].
    pub fn new(factory: WebSocketEmitterFactory, config: PoolConfig) -> Self {
        let (stop_tx, stop_rx) = oneshot::channel();
        let inner = Arc::new(Inner {
            factory,
            config,
            state: Mutex::new(State::default()),
            created: AtomicU64::new(0),
            reused: AtomicU64::new(0),
            evicted_lru: AtomicU64::new(0),
            evicted_idle: AtomicU64::new(0),
            stop: Mutex::new(Some(stop_tx)),
        });
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(cleanup_task(Arc::downgrade(&inner), stop_rx));
        }
        WebSocketEmitterPool { inner }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // Every mutation of `State` completes before anything that can panic.
        self.inner.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The emitter of `context`'s run: the pooled one, or a new one (evicting the least
    /// recently used emitter when the pool is full).
    pub fn get_emitter(&self, context: &RunContext) -> UnifiedWebSocketEmitter {
        let key = context.key();
        let mut state = self.state();
        state.clock += 1;
        let now = state.clock;
        if let Some(entry) = state.entries.get_mut(&key) {
            entry.used = now;
            entry.emitter.touch();
            self.inner.reused.fetch_add(1, Ordering::Relaxed);
            return entry.emitter.clone();
        }
        let max = self.inner.config.max_emitters.max(1);
        while state.entries.len() >= max {
            let Some(lru) = state
                .entries
                .iter()
                .min_by_key(|(_, e)| e.used)
                .map(|(k, _)| k.clone())
            else {
                break;
            };
            state.entries.remove(&lru);
            self.inner.evicted_lru.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(user = %lru.user_id, run = %lru.run_id, "emitter evicted (pool full)");
        }
        let emitter = self.inner.factory.create_emitter(context.clone());
        state.entries.insert(
            key,
            Entry {
                emitter: emitter.clone(),
                used: now,
            },
        );
        self.inner.created.fetch_add(1, Ordering::Relaxed);
        emitter
    }

    /// Removes the emitter of `context`'s run from the pool, e.g. when the run ended.
    /// Returns it if it was pooled; removing twice returns `None` the second time.
    pub fn remove(&self, context: &RunContext) -> Option<UnifiedWebSocketEmitter> {
        self.state()
            .entries
            .remove(&context.key())
            .map(|e| e.emitter)
    }

    /// Removes every emitter idle for `idle_ttl` or longer, and returns how many. The
    /// cleanup task calls it every `cleanup_interval`.
    pub fn cleanup_idle(&self) -> usize {
        let ttl = self.inner.config.idle_ttl;
        let now = Instant::now();
        let mut state = self.state();
        let before = state.entries.len();
        state
            .entries
            .retain(|_, e| now.saturating_duration_since(e.emitter.last_active()) < ttl);
        let removed = before - state.entries.len();
        drop(state);
        if removed > 0 {
            self.inner
                .evicted_idle
                .fetch_add(removed as u64, Ordering::Relaxed);
            tracing::debug!(removed, "idle emitters removed");
        }
        removed
    }

    /// Removes every emitter and returns how many there were. Safe to call again.
    pub fn clear(&self) -> usize {
        let mut state = self.state();
        let n = state.entries.len();
        state.entries.clear();
        n
    }

    /// Stops the cleanup task and removes every emitter. The pool stays usable (idle
    /// emitters are then removed only by [`Self::cleanup_idle`]). Idempotent.
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
        self.state().entries.len()
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
        PoolStats {
            size: self.len(),
            max_emitters: self.inner.config.max_emitters.max(1),
            created: load(&self.inner.created),
            reused: load(&self.inner.reused),
            evicted_lru: load(&self.inner.evicted_lru),
            evicted_idle: load(&self.inner.evicted_idle),
        }
    }
}

/// Removes idle emitters every `cleanup_interval` until the pool is gone or shut down.
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
        WebSocketEmitterPool { inner }.cleanup_idle();
    }
}
