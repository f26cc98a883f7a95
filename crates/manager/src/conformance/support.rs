//! What the properties share: a recording subscriber, fresh ids, events that name their
//! user, and broker calls that panic with a clear message.

use std::sync::{Arc, Mutex, MutexGuard};

use agentwire_protocol::{Custom, Event, EventId, EventType, Seq, ServerFrame, UserId};
use bytes::Bytes;
use tokio::sync::Notify;

use crate::broker::{Accepted, Broker, History, NewEvent, StoredEvent, Subscriber};

use super::{DELIVERY_WAIT, QUIET};

/// A subscriber that records what it is given.
pub(super) struct Recorder {
    got: Mutex<Vec<(UserId, StoredEvent)>>,
    resyncs: Mutex<Vec<UserId>>,
    changed: Notify,
}

impl Subscriber for Recorder {
    fn deliver(&self, user: &UserId, event: &StoredEvent) {
        self.events().push((user.clone(), event.clone()));
        self.changed.notify_waiters();
    }

    fn resync(&self, user: &UserId) {
        self.resyncs_lock().push(user.clone());
        self.changed.notify_waiters();
    }
}

impl Recorder {
    pub(super) fn new() -> Arc<Self> {
        Arc::new(Recorder {
            got: Mutex::new(Vec::new()),
            resyncs: Mutex::new(Vec::new()),
            changed: Notify::new(),
        })
    }

    fn resyncs_lock(&self) -> MutexGuard<'_, Vec<UserId>> {
        self.resyncs.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The users this recorder was told to resync, in order.
    pub(super) fn resyncs(&self) -> Vec<UserId> {
        self.resyncs_lock().clone()
    }

    /// Waits until `user` was resynced; fails after [`DELIVERY_WAIT`].
    pub(super) async fn wait_for_resync(&self, user: &UserId) {
        let reached = async {
            loop {
                let changed = self.changed.notified();
                tokio::pin!(changed);
                changed.as_mut().enable();
                if self.resyncs().contains(user) {
                    return;
                }
                changed.await;
            }
        };
        if tokio::time::timeout(DELIVERY_WAIT, reached).await.is_err() {
            panic!("{user} was not resynced within {DELIVERY_WAIT:?} of a broken subscription");
        }
    }

    pub(super) fn events(&self) -> MutexGuard<'_, Vec<(UserId, StoredEvent)>> {
        self.got.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn seqs(&self, user: &UserId) -> Vec<u64> {
        self.events()
            .iter()
            .filter(|(u, _)| u == user)
            .map(|(_, e)| e.seq.get())
            .collect()
    }

    /// Waits until `user`'s events up to `seq` arrived; fails after [`DELIVERY_WAIT`].
    pub(super) async fn wait_for_seqs(&self, user: &UserId, seq: u64) {
        let reached = async {
            loop {
                let changed = self.changed.notified();
                tokio::pin!(changed);
                changed.as_mut().enable();
                if self.seqs(user).last().is_some_and(|&s| s >= seq) {
                    return;
                }
                changed.await;
            }
        };
        if tokio::time::timeout(DELIVERY_WAIT, reached).await.is_err() {
            panic!(
                "events of {user} up to seq {seq} were not delivered within {DELIVERY_WAIT:?}; got {:?}",
                self.seqs(user)
            );
        }
    }

    /// Waits until `what` holds of the recorded events; fails after [`DELIVERY_WAIT`].
    pub(super) async fn wait_until(
        &self,
        label: &str,
        what: impl Fn(&[(UserId, StoredEvent)]) -> bool,
    ) {
        let reached = async {
            loop {
                let changed = self.changed.notified();
                tokio::pin!(changed);
                changed.as_mut().enable();
                if what(&self.events()) {
                    return;
                }
                changed.await;
            }
        };
        if tokio::time::timeout(DELIVERY_WAIT, reached).await.is_err() {
            panic!("{label}: not delivered within {DELIVERY_WAIT:?}");
        }
    }

    /// Lets [`QUIET`] pass, so late deliveries would have arrived.
    pub(super) async fn quiet(&self) {
        tokio::time::sleep(QUIET).await;
    }
}

pub(super) fn fresh_user(label: &str) -> UserId {
    UserId::new(format!("conformance-{label}-{}", EventId::generate()))
        .expect("generated user ids are valid")
}

pub(super) fn fresh_users(label: &str, n: usize) -> Vec<UserId> {
    (0..n).map(|i| fresh_user(&format!("{label}{i}"))).collect()
}

pub(super) fn fresh_event_id(label: &str) -> EventId {
    EventId::new(format!("{label}-{}", EventId::generate())).expect("generated ids are valid")
}

/// A `custom` event that names its user and a number, so a misrouted frame is visible.
pub(super) fn event(user: &UserId, n: u64, event_id: Option<EventId>) -> NewEvent {
    let event = Event::new(
        None,
        None,
        Custom {
            name: user.to_string(),
            value: serde_json::Value::from(n),
            extra: Default::default(),
        },
    );
    NewEvent::new(EventType::Custom, event_id, Bytes::from(event.body_json()))
}

pub(super) fn seqs(events: &[StoredEvent]) -> Vec<u64> {
    events.iter().map(|e| e.seq.get()).collect()
}

/// The stored frame decodes to an event of `user` with the stored stream fields.
pub(super) fn assert_frame_matches(user: &UserId, e: &StoredEvent) {
    match ServerFrame::decode(&e.frame) {
        Ok(ServerFrame::Event(env)) => {
            assert_eq!((env.seq, &env.event_id, env.ts), (e.seq, &e.event_id, e.ts));
            assert_eq!(env.event.event_type(), e.event_type);
            match &env.event.data {
                agentwire_protocol::EventData::Custom(c) => {
                    assert_eq!(c.name, user.as_str(), "frame of another user's event");
                }
                other => panic!("unexpected payload {other:?}"),
            }
        }
        other => panic!("stored frame does not decode as an event: {other:?}"),
    }
}

pub(super) async fn publish<B: Broker + ?Sized>(
    broker: &B,
    user: &UserId,
    event: NewEvent,
) -> Accepted {
    match broker.publish(user, event).await {
        Ok(a) => a,
        Err(e) => panic!("publish to {user} failed: {e}"),
    }
}

pub(super) async fn history<B: Broker + ?Sized>(
    broker: &B,
    user: &UserId,
    after: Seq,
    limit: usize,
) -> History {
    match broker.history(user, after, limit).await {
        Ok(h) => h,
        Err(e) => panic!("history of {user} failed: {e}"),
    }
}

pub(super) async fn subscribe<B: Broker + ?Sized>(broker: &B, user: &UserId, rec: &Arc<Recorder>) {
    if let Err(e) = broker.subscribe(user, rec.clone()).await {
        panic!("subscribe to {user} failed: {e}");
    }
}

pub(super) async fn unsubscribe<B: Broker + ?Sized>(
    broker: &B,
    user: &UserId,
    rec: &Arc<Recorder>,
) {
    let sub: Arc<dyn Subscriber> = rec.clone();
    if let Err(e) = broker.unsubscribe(user, &sub).await {
        panic!("unsubscribe from {user} failed: {e}");
    }
}

pub(super) async fn lookup<B: Broker + ?Sized>(
    broker: &B,
    user: &UserId,
    event_id: &EventId,
) -> Option<Accepted> {
    match broker.lookup(user, event_id).await {
        Ok(a) => a,
        Err(e) => panic!("lookup of {event_id} for {user} failed: {e}"),
    }
}

/// The same event under another body: what a reused id carries.
pub(super) fn other_event(user: &UserId, n: u64, event_id: Option<EventId>) -> NewEvent {
    event(user, n + 1_000_000, event_id)
}

/// `tokio::time::Instant::now()`: the clock the suite measures windows on.
pub(super) fn now() -> tokio::time::Instant {
    tokio::time::Instant::now()
}

pub(super) async fn publish_many<B: Broker + ?Sized>(
    broker: &B,
    user: &UserId,
    events: Vec<NewEvent>,
) -> Vec<Accepted> {
    match broker.publish_many(user, events).await {
        Ok(a) => a,
        Err(e) => panic!("publish_many to {user} failed: {e}"),
    }
}
