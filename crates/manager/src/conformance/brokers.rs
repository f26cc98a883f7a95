//! Test brokers that wrap another: late deliveries, planned faults, broken subscriptions.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use agentwire_protocol::{EventId, RunId, Seq, UserId};
use async_trait::async_trait;
use tokio::sync::mpsc;

use crate::broker::{
    Accepted, BatchError, Broker, BrokerError, BrokerStats, History, NewEvent, StoredEvent,
    Subscriber, same_subscriber,
};
use crate::runs::RunPresence;

/// A test broker around another that behaves as if it sat across a network: every call
/// waits a little (a random short sleep, or a yield) before and after the inner call, so
/// concurrent calls complete in random order; and deliveries go through one ordered
/// queue per subscriber, drained by a task that sleeps randomly, so they arrive late
/// relative to `publish` returning. Per-user delivery order — the [`Broker`] contract —
/// is kept.
///
/// Running the manager over it proves nothing assumes one process. Its delivery queues
/// are unbounded and one per distinct subscriber stays for the broker's lifetime: it is a
/// test tool, not a production broker.
pub struct LatencyBroker<B> {
    inner: B,
    max_delay: Duration,
    relays: Mutex<Vec<Arc<Relay>>>,
}

impl<B> std::fmt::Debug for LatencyBroker<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LatencyBroker")
            .field("max_delay", &self.max_delay)
            .finish_non_exhaustive()
    }
}

impl<B: Broker> LatencyBroker<B> {
    /// Wraps `inner` with delays of up to 2 ms.
    pub fn new(inner: B) -> Self {
        Self::with_max_delay(inner, Duration::from_millis(2))
    }

    /// Wraps `inner` with delays of up to `max_delay`.
    pub fn with_max_delay(inner: B, max_delay: Duration) -> Self {
        LatencyBroker {
            inner,
            max_delay,
            relays: Mutex::new(Vec::new()),
        }
    }

    /// The broker inside.
    pub fn inner(&self) -> &B {
        &self.inner
    }

    fn relays(&self) -> MutexGuard<'_, Vec<Arc<Relay>>> {
        self.relays.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn relay_of(&self, subscriber: &Arc<dyn Subscriber>) -> Option<Arc<dyn Subscriber>> {
        self.relays()
            .iter()
            .find(|r| same_subscriber(&r.target, subscriber))
            .map(|r| r.clone() as Arc<dyn Subscriber>)
    }
}

/// Waits a random short while, or only yields, or not at all.
async fn jitter(max_delay: Duration) {
    let max_micros = u64::try_from(max_delay.as_micros())
        .unwrap_or(u64::MAX)
        .max(1);
    let (kind, micros) = (
        rand::random_range(0..4u8),
        rand::random_range(0..max_micros),
    );
    match kind {
        0 => {}
        1 => tokio::task::yield_now().await,
        _ => tokio::time::sleep(Duration::from_micros(micros)).await,
    }
}

/// Stands for one subscriber inside the wrapped broker: queues what it is given, in
/// order, for a task that hands it over late.
struct Relay {
    target: Arc<dyn Subscriber>,
    queue: mpsc::UnboundedSender<(UserId, StoredEvent)>,
}

impl Subscriber for Relay {
    fn deliver(&self, user: &UserId, event: &StoredEvent) {
        // The drain task ends only with the relay, so the receiver is alive.
        let _ = self.queue.send((user.clone(), event.clone()));
    }
}

#[async_trait]
impl<B: Broker> Broker for LatencyBroker<B> {
    async fn publish(&self, user: &UserId, event: NewEvent) -> Result<Accepted, BrokerError> {
        jitter(self.max_delay).await;
        let result = self.inner.publish(user, event).await;
        jitter(self.max_delay).await;
        result
    }

    async fn subscribe(
        &self,
        user: &UserId,
        subscriber: Arc<dyn Subscriber>,
    ) -> Result<(), BrokerError> {
        jitter(self.max_delay).await;
        let relay = match self.relay_of(&subscriber) {
            Some(r) => r,
            None => {
                let (tx, mut rx) = mpsc::unbounded_channel::<(UserId, StoredEvent)>();
                let target = subscriber.clone();
                let max_delay = self.max_delay;
                tokio::spawn(async move {
                    while let Some((user, event)) = rx.recv().await {
                        jitter(max_delay).await;
                        target.deliver(&user, &event);
                    }
                });
                let relay = Arc::new(Relay {
                    target: subscriber,
                    queue: tx,
                });
                let mut relays = self.relays();
                // A concurrent subscribe may have made one meanwhile: keep only one, so
                // the inner broker counts both subscriptions against the same relay.
                match relays
                    .iter()
                    .find(|r| same_subscriber(&r.target, &relay.target))
                {
                    Some(existing) => existing.clone() as Arc<dyn Subscriber>,
                    None => {
                        relays.push(relay.clone());
                        relay as Arc<dyn Subscriber>
                    }
                }
            }
        };
        let result = self.inner.subscribe(user, relay).await;
        jitter(self.max_delay).await;
        result
    }

    async fn unsubscribe(
        &self,
        user: &UserId,
        subscriber: &Arc<dyn Subscriber>,
    ) -> Result<(), BrokerError> {
        jitter(self.max_delay).await;
        let result = match self.relay_of(subscriber) {
            Some(relay) => self.inner.unsubscribe(user, &relay).await,
            None => Ok(()),
        };
        jitter(self.max_delay).await;
        result
    }

    async fn history(
        &self,
        user: &UserId,
        after: Seq,
        limit: usize,
    ) -> Result<History, BrokerError> {
        jitter(self.max_delay).await;
        let result = self.inner.history(user, after, limit).await;
        jitter(self.max_delay).await;
        result
    }

    async fn publish_many(
        &self,
        user: &UserId,
        events: Vec<NewEvent>,
    ) -> Result<Vec<Accepted>, BatchError> {
        jitter(self.max_delay).await;
        let result = self.inner.publish_many(user, events).await;
        jitter(self.max_delay).await;
        result
    }

    async fn lookup(
        &self,
        user: &UserId,
        event_id: &EventId,
    ) -> Result<Option<Accepted>, BrokerError> {
        jitter(self.max_delay).await;
        let result = self.inner.lookup(user, event_id).await;
        jitter(self.max_delay).await;
        result
    }

    async fn heartbeat_run(
        &self,
        user: &UserId,
        run_id: &RunId,
    ) -> Result<RunPresence, BrokerError> {
        jitter(self.max_delay).await;
        let result = self.inner.heartbeat_run(user, run_id).await;
        jitter(self.max_delay).await;
        result
    }

    async fn health(&self) -> Result<(), BrokerError> {
        jitter(self.max_delay).await;
        self.inner.health().await
    }

    fn stats(&self) -> BrokerStats {
        self.inner.stats()
    }

    fn sweep(&self) {
        self.inner.sweep();
    }
}

/// What a [`FaultyBroker`] does with one publish.
#[derive(Debug, Clone)]
pub enum Fault {
    /// Refuse it with this error; the inner broker never sees it.
    Refuse(BrokerError),
    /// Let the inner broker accept it, then answer with this error: a success whose answer
    /// was lost on the way back.
    LoseAnswer(BrokerError),
}

/// The plan of a [`FaultyBroker`]: given the number of a publish attempt (from 0), the
/// fault to inject, if any.
type FaultPlan = Box<dyn Fn(u64) -> Option<Fault> + Send + Sync>;

/// A broker over another that fails publishes as its plan says, and records when each
/// publish was attempted; everything else goes to the inner broker unchanged.
///
/// `publish_many` is the trait's default, a loop over `publish`: the plan is asked once
/// per event of a batch, and a fault in the middle leaves the events before it accepted.
pub struct FaultyBroker<B> {
    inner: B,
    plan: FaultPlan,
    attempts: Mutex<Vec<tokio::time::Instant>>,
}

impl<B: std::fmt::Debug> std::fmt::Debug for FaultyBroker<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FaultyBroker")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<B: Broker> FaultyBroker<B> {
    /// Wraps `inner`; `plan` is asked once per publish attempt.
    pub fn new(inner: B, plan: impl Fn(u64) -> Option<Fault> + Send + Sync + 'static) -> Self {
        FaultyBroker {
            inner,
            plan: Box::new(plan),
            attempts: Mutex::new(Vec::new()),
        }
    }

    fn attempts_lock(&self) -> MutexGuard<'_, Vec<tokio::time::Instant>> {
        self.attempts.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// When each publish was attempted (tokio's clock, so paused tests see their time).
    pub fn attempts(&self) -> Vec<tokio::time::Instant> {
        self.attempts_lock().clone()
    }
}

#[async_trait]
impl<B: Broker> Broker for FaultyBroker<B> {
    async fn publish(&self, user: &UserId, event: NewEvent) -> Result<Accepted, BrokerError> {
        let attempt = {
            let mut attempts = self.attempts_lock();
            attempts.push(tokio::time::Instant::now());
            attempts.len() as u64 - 1
        };
        match (self.plan)(attempt) {
            None => self.inner.publish(user, event).await,
            Some(Fault::Refuse(e)) => Err(e),
            Some(Fault::LoseAnswer(e)) => {
                self.inner.publish(user, event).await?;
                Err(e)
            }
        }
    }

    async fn subscribe(
        &self,
        user: &UserId,
        subscriber: Arc<dyn Subscriber>,
    ) -> Result<(), BrokerError> {
        self.inner.subscribe(user, subscriber).await
    }

    async fn unsubscribe(
        &self,
        user: &UserId,
        subscriber: &Arc<dyn Subscriber>,
    ) -> Result<(), BrokerError> {
        self.inner.unsubscribe(user, subscriber).await
    }

    async fn history(
        &self,
        user: &UserId,
        after: Seq,
        limit: usize,
    ) -> Result<History, BrokerError> {
        self.inner.history(user, after, limit).await
    }

    async fn lookup(
        &self,
        user: &UserId,
        event_id: &EventId,
    ) -> Result<Option<Accepted>, BrokerError> {
        self.inner.lookup(user, event_id).await
    }

    async fn heartbeat_run(
        &self,
        user: &UserId,
        run_id: &RunId,
    ) -> Result<RunPresence, BrokerError> {
        self.inner.heartbeat_run(user, run_id).await
    }

    async fn health(&self) -> Result<(), BrokerError> {
        self.inner.health().await
    }

    fn stats(&self) -> BrokerStats {
        self.inner.stats()
    }

    fn sweep(&self) {
        self.inner.sweep();
    }
}

/// A test broker over a broker that sits, as it were, across one connection that can
/// drop: [`SeverableBroker::sever`] loses every delivery until
/// [`SeverableBroker::restore`], which then calls [`Subscriber::resync`] for every
/// subscribed user, as a networked broker does after reconnecting; and
/// [`SeverableBroker::restart_empty`] replaces the broker beneath with a fresh one from its
/// factory, as a store that restarted empty (subscriptions are made again on the new one,
/// then resynced).
///
/// It gives brokers that cannot lose a delivery (the in-memory one) the failures the
/// contract's resync rule is about, for the conformance suite's [`super::Harness`] and
/// for tests of the manager's recovery. A test tool: `restart_empty` expects no
/// `subscribe`/`unsubscribe` under way.
pub struct SeverableBroker<B> {
    shared: Arc<Severable<B>>,
}

struct Severable<B> {
    make: Box<dyn Fn() -> B + Send + Sync>,
    state: Mutex<SeverableState<B>>,
    severed: Arc<AtomicBool>,
}

struct SeverableState<B> {
    inner: Arc<B>,
    /// One gate per distinct subscriber.
    gates: Vec<Arc<Gate>>,
    /// (user, gate, count) of every subscription in force.
    subscriptions: Vec<(UserId, Arc<Gate>, usize)>,
}

/// Stands for one subscriber inside the broker beneath: passes deliveries on unless the
/// connection is severed.
struct Gate {
    target: Arc<dyn Subscriber>,
    severed: Arc<AtomicBool>,
}

impl Subscriber for Gate {
    fn deliver(&self, user: &UserId, event: &StoredEvent) {
        if !self.severed.load(Ordering::Acquire) {
            self.target.deliver(user, event);
        }
    }

    fn resync(&self, user: &UserId) {
        self.target.resync(user);
    }
}

impl<B> std::fmt::Debug for SeverableBroker<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SeverableBroker")
            .field("severed", &self.shared.severed.load(Ordering::Acquire))
            .finish_non_exhaustive()
    }
}

impl<B: Broker> SeverableBroker<B> {
    /// A broker over `make()`; `make` is called again by each
    /// [`SeverableBroker::restart_empty`].
    pub fn new(make: impl Fn() -> B + Send + Sync + 'static) -> Self {
        let inner = Arc::new(make());
        SeverableBroker {
            shared: Arc::new(Severable {
                make: Box::new(make),
                state: Mutex::new(SeverableState {
                    inner,
                    gates: Vec::new(),
                    subscriptions: Vec::new(),
                }),
                severed: Arc::new(AtomicBool::new(false)),
            }),
        }
    }

    fn state(&self) -> MutexGuard<'_, SeverableState<B>> {
        self.shared.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn inner(&self) -> Arc<B> {
        self.state().inner.clone()
    }

    /// Whether deliveries are being lost.
    pub fn is_severed(&self) -> bool {
        self.shared.severed.load(Ordering::Acquire)
    }

    /// Loses every delivery from now until [`SeverableBroker::restore`].
    pub fn sever(&self) {
        self.shared.severed.store(true, Ordering::Release);
    }

    /// Delivers again, then calls `resync` for every subscription in force.
    pub fn restore(&self) {
        self.shared.severed.store(false, Ordering::Release);
        self.resync_all();
    }

    /// Severs now and restores after `outage`, in a task of its own.
    pub fn sever_for(&self, outage: Duration) {
        self.sever();
        let again = SeverableBroker {
            shared: self.shared.clone(),
        };
        tokio::spawn(async move {
            tokio::time::sleep(outage).await;
            again.restore();
        });
    }

    fn resync_all(&self) {
        let subscriptions: Vec<(UserId, Arc<Gate>)> = self
            .state()
            .subscriptions
            .iter()
            .map(|(user, gate, _)| (user.clone(), gate.clone()))
            .collect();
        for (user, gate) in subscriptions {
            gate.target.resync(&user);
        }
    }

    /// Replaces the broker beneath with a fresh, empty one, subscribes everything in force
    /// to it, and resyncs every subscription.
    ///
    /// # Errors
    /// The [`BrokerError`] of a subscribe to the new broker.
    pub async fn restart_empty(&self) -> Result<(), BrokerError> {
        let fresh = Arc::new((self.shared.make)());
        let subscriptions: Vec<(UserId, Arc<Gate>, usize)> = self.state().subscriptions.clone();
        for (user, gate, count) in &subscriptions {
            for _ in 0..*count {
                fresh.subscribe(user, gate.clone()).await?;
            }
        }
        self.state().inner = fresh;
        self.resync_all();
        Ok(())
    }

    fn gate_of(&self, subscriber: &Arc<dyn Subscriber>) -> Arc<Gate> {
        let mut state = self.state();
        if let Some(g) = state
            .gates
            .iter()
            .find(|g| same_subscriber(&g.target, subscriber))
        {
            return g.clone();
        }
        let gate = Arc::new(Gate {
            target: subscriber.clone(),
            severed: self.shared.severed.clone(),
        });
        state.gates.push(gate.clone());
        gate
    }
}

#[async_trait]
impl<B: Broker> Broker for SeverableBroker<B> {
    async fn publish(&self, user: &UserId, event: NewEvent) -> Result<Accepted, BrokerError> {
        self.inner().publish(user, event).await
    }

    async fn publish_many(
        &self,
        user: &UserId,
        events: Vec<NewEvent>,
    ) -> Result<Vec<Accepted>, BatchError> {
        self.inner().publish_many(user, events).await
    }

    async fn subscribe(
        &self,
        user: &UserId,
        subscriber: Arc<dyn Subscriber>,
    ) -> Result<(), BrokerError> {
        let gate = self.gate_of(&subscriber);
        self.inner()
            .subscribe(user, gate.clone() as Arc<dyn Subscriber>)
            .await?;
        let mut state = self.state();
        match state
            .subscriptions
            .iter_mut()
            .find(|(u, g, _)| u == user && Arc::ptr_eq(g, &gate))
        {
            Some((_, _, count)) => *count += 1,
            None => state.subscriptions.push((user.clone(), gate, 1)),
        }
        Ok(())
    }

    async fn unsubscribe(
        &self,
        user: &UserId,
        subscriber: &Arc<dyn Subscriber>,
    ) -> Result<(), BrokerError> {
        let gate = self.gate_of(subscriber);
        let as_subscriber: Arc<dyn Subscriber> = gate.clone();
        self.inner().unsubscribe(user, &as_subscriber).await?;
        let mut state = self.state();
        if let Some(i) = state
            .subscriptions
            .iter()
            .position(|(u, g, _)| u == user && Arc::ptr_eq(g, &gate))
        {
            state.subscriptions[i].2 -= 1;
            if state.subscriptions[i].2 == 0 {
                state.subscriptions.swap_remove(i);
            }
        }
        Ok(())
    }

    async fn history(
        &self,
        user: &UserId,
        after: Seq,
        limit: usize,
    ) -> Result<History, BrokerError> {
        self.inner().history(user, after, limit).await
    }

    async fn lookup(
        &self,
        user: &UserId,
        event_id: &EventId,
    ) -> Result<Option<Accepted>, BrokerError> {
        self.inner().lookup(user, event_id).await
    }

    async fn heartbeat_run(
        &self,
        user: &UserId,
        run_id: &RunId,
    ) -> Result<RunPresence, BrokerError> {
        self.inner().heartbeat_run(user, run_id).await
    }

    async fn health(&self) -> Result<(), BrokerError> {
        self.inner().health().await
    }

    fn stats(&self) -> BrokerStats {
        self.inner().stats()
    }

    fn sweep(&self) {
        self.inner().sweep();
    }
}
