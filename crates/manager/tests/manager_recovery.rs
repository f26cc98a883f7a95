//! What the manager does when the broker lost deliveries: a resync catches every live
//! connection of the user up from history (issue 12 §1.3), resyncs racing with live events
//! and with each other never duplicate or reorder a stream, and a catch-up waits for
//! history with backoff — ending in a counted 1011 after `catch_up_wait` only when the
//! broker breaks its contract (§1.2).

mod support;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agentwire_manager::conformance::{LatencyBroker, SeverableBroker};
use agentwire_manager::{
    Accepted, Broker, BrokerError, ConnectOptions, History, InMemoryBroker, ManagerConfig,
    NewEvent, StoredEvent, Subscriber, UnifiedWebSocketManager,
};
use agentwire_protocol::{CloseCode, EventId, Seq, UserId};
use async_trait::async_trait;
use support::*;

#[tokio::test(start_paused = true)]
async fn a_resync_catches_every_connection_of_the_user_up_from_history() {
    let broker = Arc::new(SeverableBroker::new(InMemoryBroker::default));
    let m = UnifiedWebSocketManager::new(ManagerConfig::default(), broker.clone());
    let (alice, bob) = (user("alice"), user("bob"));
    let mut a1 = connect(&m, &alice, ConnectOptions::default()).await;
    let mut a2 = connect(&m, &alice, ConnectOptions::default()).await;
    let mut b = connect(&m, &bob, ConnectOptions::default()).await;
    emit(&m, &alice, 1).await;
    a1.until_seq(1).await;
    a2.until_seq(1).await;
    // Every connection's first catch-up is over: the streams are live.
    settle().await;

    broker.sever();
    emit(&m, &alice, 2).await;
    emit(&m, &alice, 3).await;
    emit(&m, &bob, 1).await;
    settle().await;
    a1.drain_ready().await;
    b.drain_ready().await;
    assert_eq!(
        (a1.last_seq(), b.last_seq()),
        (1, 0),
        "deliveries were lost"
    );

    // Restored: no new event is needed for the lost ones to arrive.
    broker.restore();
    for c in [&mut a1, &mut a2] {
        c.until_seq(3).await;
        assert_eq!(c.seqs(), range(1, 3));
        assert!(c.gaps().is_empty());
        c.assert_only_events_of(&alice);
    }
    b.until_seq(1).await;
    assert_eq!(b.seqs(), vec![1]);
    b.assert_only_events_of(&bob);
    assert_eq!(m.get_stats().resyncs, 2, "one resync per subscribed user");

    // Live again afterwards.
    emit(&m, &alice, 4).await;
    a1.until_seq(4).await;
    assert_eq!(a1.seqs(), range(1, 4));
}

/// Resyncs arriving at any moment — while a connection replays, while it is live, many at
/// once — never start a second catch-up of one connection: every connection sees its
/// stream exactly once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_resyncs_never_duplicate_or_reorder_a_stream() {
    const EVENTS: u64 = 300;
    let broker = Arc::new(SeverableBroker::new(|| {
        LatencyBroker::new(InMemoryBroker::default())
    }));
    let m = UnifiedWebSocketManager::new(ManagerConfig::default(), broker.clone());
    let users: Vec<UserId> = (0..3).map(|i| user(&format!("storm-{i}"))).collect();
    let mut clients = Vec::new();
    for u in &users {
        for _ in 0..2 {
            clients.push((u.clone(), connect(&m, u, ConnectOptions::default()).await));
        }
    }
    let done = Arc::new(AtomicBool::new(false));
    let storm = {
        let (m, broker, users, done) = (m.clone(), broker.clone(), users.clone(), done.clone());
        tokio::spawn(async move {
            let mut round = 0u64;
            while !done.load(Ordering::Acquire) {
                round += 1;
                for u in &users {
                    for _ in 0..3 {
                        m.resync_user(u);
                    }
                }
                if round.is_multiple_of(4) {
                    broker.sever();
                    tokio::task::yield_now().await;
                    broker.restore();
                }
                tokio::time::sleep(Duration::from_micros(200)).await;
            }
        })
    };
    let publishers: Vec<_> = users
        .iter()
        .map(|u| {
            let (m, u) = (m.clone(), u.clone());
            tokio::spawn(async move {
                for n in 1..=EVENTS {
                    emit(&m, &u, n).await;
                    if n.is_multiple_of(16) {
                        tokio::time::sleep(Duration::from_micros(100)).await;
                    }
                }
            })
        })
        .collect();
    for p in publishers {
        p.await.expect("publisher panicked");
    }
    done.store(true, Ordering::Release);
    storm.await.expect("storm panicked");
    // Whatever the last outage lost, a final resync brings.
    broker.restore();
    for (u, c) in &mut clients {
        c.until_seq(EVENTS).await;
        assert_eq!(c.seqs(), range(1, EVENTS), "stream of a connection of {u}");
        assert!(c.gaps().is_empty(), "{:?}", c.gaps());
        c.assert_only_events_of(u);
    }
    assert!(m.get_stats().resyncs > 0);
}

/// A broker that breaks rule 3 on purpose: its history shows nothing past `visible`, and
/// it drops the delivery of `dropped`, so a connection must catch up from a history that
/// lags what was delivered.
struct Lagging {
    inner: InMemoryBroker,
    visible: Arc<AtomicU64>,
    dropped: u64,
    relays: Mutex<Vec<Arc<Dropping>>>,
}

struct Dropping {
    target: Arc<dyn Subscriber>,
    dropped: u64,
}

impl Subscriber for Dropping {
    fn deliver(&self, user: &UserId, event: &StoredEvent) {
        if event.seq.get() != self.dropped {
            self.target.deliver(user, event);
        }
    }
}

impl Lagging {
    fn relay(&self, subscriber: &Arc<dyn Subscriber>) -> Arc<dyn Subscriber> {
        let mut relays = self.relays.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(r) = relays
            .iter()
            .find(|r| std::ptr::addr_eq(Arc::as_ptr(&r.target), Arc::as_ptr(subscriber)))
        {
            return r.clone();
        }
        let r = Arc::new(Dropping {
            target: subscriber.clone(),
            dropped: self.dropped,
        });
        relays.push(r.clone());
        r
    }
}

#[async_trait]
impl Broker for Lagging {
    async fn publish(&self, user: &UserId, event: NewEvent) -> Result<Accepted, BrokerError> {
        self.inner.publish(user, event).await
    }

    async fn subscribe(
        &self,
        user: &UserId,
        subscriber: Arc<dyn Subscriber>,
    ) -> Result<(), BrokerError> {
        let relay = self.relay(&subscriber);
        self.inner.subscribe(user, relay).await
    }

    async fn unsubscribe(
        &self,
        user: &UserId,
        subscriber: &Arc<dyn Subscriber>,
    ) -> Result<(), BrokerError> {
        let relay = self.relay(subscriber);
        self.inner.unsubscribe(user, &relay).await
    }

    async fn history(
        &self,
        user: &UserId,
        after: Seq,
        limit: usize,
    ) -> Result<History, BrokerError> {
        let visible = Seq(self.visible.load(Ordering::Acquire));
        let mut h = self.inner.history(user, after, limit).await?;
        h.events.retain(|e| e.seq <= visible);
        h.last_seq = h.last_seq.min(visible);
        Ok(h)
    }

    async fn lookup(
        &self,
        user: &UserId,
        event_id: &EventId,
    ) -> Result<Option<Accepted>, BrokerError> {
        self.inner.lookup(user, event_id).await
    }
}

/// A manager over a broker whose history shows only seq 1 and which loses the delivery
/// of seq 2; a connection that got 1 and then 3 must catch 2 up from history.
async fn lagging_after_a_lost_delivery() -> (UnifiedWebSocketManager, Arc<AtomicU64>, Client) {
    let visible = Arc::new(AtomicU64::new(1));
    let broker = Arc::new(Lagging {
        inner: InMemoryBroker::default(),
        visible: visible.clone(),
        dropped: 2,
        relays: Mutex::new(Vec::new()),
    });
    let m = UnifiedWebSocketManager::new(ManagerConfig::default(), broker);
    let alice = user("alice");
    let mut c = connect(&m, &alice, ConnectOptions::default()).await;
    emit(&m, &alice, 1).await;
    c.until_seq(1).await;
    emit(&m, &alice, 2).await;
    emit(&m, &alice, 3).await;
    (m, visible, c)
}

#[tokio::test(start_paused = true)]
async fn a_catch_up_waits_for_history_that_lags_behind_delivery() {
    let (m, visible, mut c) = lagging_after_a_lost_delivery().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    c.drain_ready().await;
    assert_eq!((c.seqs(), c.closed), (vec![1], None), "seq 3 waits for 2");
    visible.store(u64::MAX, Ordering::Release);
    c.until_seq(3).await;
    assert_eq!(c.seqs(), range(1, 3));
    assert_eq!(m.get_stats().catch_up_failures, 0);
}

#[tokio::test(start_paused = true)]
async fn history_that_never_reaches_a_delivered_event_ends_in_a_counted_1011() {
    let (m, _visible, mut c) = lagging_after_a_lost_delivery().await;
    let wait = m.config().catch_up_wait;
    tokio::time::sleep(wait / 2).await;
    c.drain_ready().await;
    assert_eq!(c.closed, None, "closed before catch_up_wait");
    assert_eq!(c.until_closed().await, CloseCode::InternalError);
    assert_eq!(c.seqs(), vec![1]);
    assert_eq!(m.get_stats().catch_up_failures, 1);
}
