//! The watchdog: ends runs that went silent. It watches the runs whose guarded events this
//! manager published, each until a deadline (its last event plus its stall timeout), and
//! at the deadline publishes the run's `agent_error` (code `stalled`, retryable) as a
//! stall claim (rule 12 of [`crate::Broker`]): the broker ends the run only if it really
//! had no event or heartbeat for its timeout, atomically, so of every node watching the
//! run exactly one ends it, and a run kept alive elsewhere is answered with when it would
//! stall next.
//!
//! The task holds only a weak reference and ends when the manager is dropped.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use agentwire_protocol::{AgentError, Event, RunId, RunStep, STALLED_CODE, ThreadId, UserId};
use foldhash::HashMap;
use tokio::sync::Notify;
use tokio::time::Instant;

use super::{EmitError, PreparedEvent, UnifiedWebSocketManager};
use crate::broker::BrokerError;
use crate::runs::{PublisherId, RunPresence, StallReason};

/// How long the watchdog waits to claim a run again after the broker failed transiently.
pub(crate) const STALL_CLAIM_RETRY: Duration = Duration::from_secs(1);

/// The longest the watchdog's task sleeps, so it notices the manager is gone.
const IDLE_WAKE: Duration = Duration::from_secs(1);

type RunKey = (UserId, RunId);

#[derive(Debug)]
struct Watch {
    thread_id: Option<ThreadId>,
    owner: PublisherId,
    /// The run's own stall timeout, when this manager saw its `agent_started` set one.
    own_timeout: Option<Duration>,
    /// When the run is to be claimed: its last event or heartbeat here plus its timeout,
    /// or what the broker's answer to a claim set.
    deadline: Instant,
    /// Its place in `due` (tick `u64::MAX`: not filed, while its claim is out). Never
    /// later than `deadline`: a later deadline — every event of a running run sets one —
    /// leaves the entry where it is, and the run is re-filed at its deadline when the
    /// entry comes due, so an event costs no move in `due`.
    due: (Instant, u64),
}

impl Watch {
    fn is_filed(&self) -> bool {
        self.due.1 != u64::MAX
    }
}

#[derive(Debug, Default)]
struct Watched {
    runs: HashMap<RunKey, Watch>,
    due: BTreeMap<(Instant, u64), RunKey>,
    next: u64,
}

impl Watched {
    /// Sets `key`'s deadline to `at`, and files it there unless it is filed no later
    /// already. Returns whether it went first in `due`.
    fn schedule(&mut self, key: &RunKey, at: Instant) -> bool {
        let Some(w) = self.runs.get_mut(key) else {
            return false;
        };
        w.deadline = at;
        if w.is_filed() && w.due.0 <= at {
            return false;
        }
        let earliest = self.due.first_key_value().is_none_or(|(d, _)| at < d.0);
        let tick = self.next;
        self.next += 1;
        self.due.remove(&w.due);
        w.due = (at, tick);
        self.due.insert((at, tick), key.clone());
        earliest
    }

    fn remove(&mut self, key: &RunKey) {
        if let Some(w) = self.runs.remove(key) {
            self.due.remove(&w.due);
        }
    }
}

/// The runs one manager watches.
#[derive(Debug, Default)]
pub(crate) struct Watchdog {
    watched: Mutex<Watched>,
    wake: Arc<Notify>,
    started: AtomicBool,
}

impl Watchdog {
    fn lock(&self) -> MutexGuard<'_, Watched> {
        self.watched.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs watched now.
    pub(crate) fn len(&self) -> usize {
        self.lock().runs.len()
    }
}

/// A stall claim to publish: the run, and what the watchdog knew of it.
struct Claim {
    key: RunKey,
    thread_id: Option<ThreadId>,
    owner: PublisherId,
    own_timeout: Option<Duration>,
}

impl UnifiedWebSocketManager {
    fn stall_timeout(&self) -> Duration {
        self.inner.config.run_stall_timeout
    }

    /// Watches (or stops watching) the run of an accepted, guarded event.
    pub(super) fn watch(&self, event: &PreparedEvent) {
        let default = self.stall_timeout();
        if default.is_zero() {
            return;
        }
        let (Some(run_id), Some(step), Some(owner)) =
            (event.run_id(), event.run_step(), event.owner())
        else {
            return;
        };
        let key = (event.user_id().clone(), run_id.clone());
        let dog = &self.inner.watchdog;
        let mut guard = dog.lock();
        let w = &mut *guard;
        if matches!(step, RunStep::End(_)) {
            w.remove(&key);
            return;
        }
        let at = match w.runs.get_mut(&key) {
            Some(r) => {
                let own_timeout = match step {
                    RunStep::Start => event.stall_timeout(),
                    _ => r.own_timeout,
                };
                if own_timeout == Some(Duration::ZERO) {
                    w.remove(&key);
                    return;
                }
                r.own_timeout = own_timeout;
                let at = Instant::now() + own_timeout.unwrap_or(default);
                if r.is_filed() && r.due.0 <= at {
                    // The usual event of a running run: only its deadline moves.
                    r.deadline = at;
                    drop(guard);
                    self.start_watchdog();
                    return;
                }
                at
            }
            None => {
                let own_timeout = match step {
                    RunStep::Start => event.stall_timeout(),
                    _ => None,
                };
                if own_timeout == Some(Duration::ZERO) {
                    return;
                }
                if w.runs.len() >= self.inner.config.max_watched_runs {
                    self.inner
                        .counters
                        .runs_unwatched
                        .fetch_add(1, Ordering::Relaxed);
                    return;
                }
                let now = Instant::now();
                let at = now + own_timeout.unwrap_or(default);
                w.runs.insert(
                    key.clone(),
                    Watch {
                        thread_id: event.thread_id().cloned(),
                        owner: owner.clone(),
                        own_timeout,
                        deadline: at,
                        due: (now, u64::MAX),
                    },
                );
                at
            }
        };
        let earliest = w.schedule(&key, at);
        drop(guard);
        if earliest {
            dog.wake.notify_one();
        }
        self.start_watchdog();
    }

    /// A sign of life from `user`'s run `run_id`'s publisher: the broker counts it for
    /// the run's stall timeout on every node (rule 12 of [`crate::Broker`]); nothing is
    /// appended or delivered.
    ///
    /// # Errors
    /// [`BrokerError`] when the broker could not be asked.
    pub async fn heartbeat_run(
        &self,
        user: &UserId,
        run_id: &RunId,
    ) -> Result<RunPresence, BrokerError> {
        let presence = self.inner.broker.heartbeat_run(user, run_id).await?;
        let key = (user.clone(), run_id.clone());
        let mut w = self.inner.watchdog.lock();
        match presence {
            RunPresence::Running => {
                let own = w.runs.get(&key).map(|r| r.own_timeout);
                if let Some(own) = own {
                    let at = Instant::now() + own.unwrap_or(self.stall_timeout());
                    w.schedule(&key, at);
                }
            }
            _ => w.remove(&key),
        }
        Ok(presence)
    }

    /// Claims every watched run whose deadline has passed. The watchdog's task calls it;
    /// returns how many runs it ended.
    pub(crate) async fn end_stalled_runs(&self) -> usize {
        let now = Instant::now();
        let claims: Vec<Claim> = {
            let mut w = self.inner.watchdog.lock();
            let mut claims = Vec::new();
            while let Some((&(at, _), _)) = w.due.first_key_value() {
                if at > now {
                    break;
                }
                let Some((_, key)) = w.due.pop_first() else {
                    break;
                };
                let w = &mut *w;
                if let Some(r) = w.runs.get_mut(&key) {
                    if r.deadline > now {
                        // Events came since it was filed: filed again at its deadline.
                        let tick = w.next;
                        w.next += 1;
                        r.due = (r.deadline, tick);
                        w.due.insert(r.due, key);
                        continue;
                    }
                    // Not due again until the claim's answer reschedules it.
                    r.due = (now, u64::MAX);
                    claims.push(Claim {
                        thread_id: r.thread_id.clone(),
                        owner: r.owner.clone(),
                        own_timeout: r.own_timeout,
                        key,
                    });
                }
            }
            claims
        };
        let mut ended = 0;
        for claim in claims {
            if self.claim(claim).await {
                ended += 1;
            }
        }
        ended
    }

    /// Publishes one stall claim; whether it ended the run.
    async fn claim(&self, claim: Claim) -> bool {
        let default = self.stall_timeout();
        let timeout = claim.own_timeout.unwrap_or(default);
        let (user, run_id) = &claim.key;
        let event = Event::new(
            claim.thread_id.clone(),
            Some(run_id.clone()),
            AgentError {
                message: format!(
                    "the run went silent: no event or heartbeat within its stall timeout \
                     of {} ms",
                    timeout.as_millis()
                ),
                code: Some(STALLED_CODE.to_owned()),
                retryable: true,
                extra: Default::default(),
            },
        );
        let result = match self.prepare_event(user, &event, None) {
            Ok(p) => {
                let p = p.guarded(claim.owner.clone()).if_stalled(default);
                self.emit_prepared(&p).await
            }
            Err(e) => Err(e),
        };
        let mut w = self.inner.watchdog.lock();
        match result {
            Ok(_) => {
                w.remove(&claim.key);
                let reason = if claim.own_timeout.is_some() {
                    StallReason::RunTimeout
                } else {
                    StallReason::Timeout
                };
                self.inner.counters.runs_stalled[reason.index()].fetch_add(1, Ordering::Relaxed);
                tracing::info!(%user, run_id = %run_id, reason = reason.name(), "ended a stalled run");
                true
            }
            Err(EmitError::Broker(BrokerError::NotStalled { due_in: Some(d) })) => {
                w.schedule(&claim.key, Instant::now() + d);
                false
            }
            Err(e) if e.is_transient() => {
                w.schedule(&claim.key, Instant::now() + STALL_CLAIM_RETRY);
                false
            }
            // Ended elsewhere, forgotten, or never stalls: nothing to watch.
            Err(e) => {
                if !matches!(
                    e,
                    EmitError::Violation(_) | EmitError::Broker(BrokerError::NotStalled { .. })
                ) {
                    tracing::warn!(%user, run_id = %run_id, error = %e, "a stall claim failed");
                }
                w.remove(&claim.key);
                false
            }
        }
    }

    /// Starts the watchdog's task once, inside a runtime.
    fn start_watchdog(&self) {
        let dog = &self.inner.watchdog;
        if dog.started.load(Ordering::Relaxed) {
            return;
        }
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if dog.started.swap(true, Ordering::AcqRel) {
            return;
        }
        let weak = Arc::downgrade(&self.inner);
        let wake = dog.wake.clone();
        handle.spawn(async move {
            loop {
                let next = {
                    let Some(inner) = weak.upgrade() else { break };
                    let w = inner.watchdog.lock();
                    w.due.first_key_value().map(|(d, _)| d.0)
                };
                let nap = next
                    .map_or(IDLE_WAKE, |at| at.saturating_duration_since(Instant::now()))
                    .min(IDLE_WAKE);
                tokio::select! {
                    () = tokio::time::sleep(nap) => {}
                    () = wake.notified() => {}
                }
                let Some(inner) = weak.upgrade() else { break };
                UnifiedWebSocketManager { inner }.end_stalled_runs().await;
            }
        });
    }
}
