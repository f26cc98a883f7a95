//! The broker conformance suite: the contract of [`Broker`] (its docs number the rules) as
//! async properties generic over a [`Harness`] that builds the broker under test;
//! [`LatencyBroker`], a wrapper that makes any broker behave as if it sat across a network;
//! and [`FaultyBroker`], a wrapper that fails publishes on a plan, for tests of what sits
//! above a broker (retries, 503s, idempotent publishers).
//!
//! Every broker crate implements [`Harness`] for its broker and runs the suite, one test
//! per property (or all of them with [`run_all`]):
//!
//! ```
//! use agentwire_manager::conformance::{self, Checked, Harness};
//! use agentwire_manager::{HistoryConfig, InMemoryBroker};
//! # use async_trait::async_trait;
//!
//! struct Memory;
//!
//! #[async_trait]
//! impl Harness for Memory {
//!     type Broker = InMemoryBroker;
//!     async fn make(&self) -> InMemoryBroker {
//!         InMemoryBroker::default()
//!     }
//!     async fn make_keeping(&self, n: usize) -> InMemoryBroker {
//!         InMemoryBroker::new(HistoryConfig { max_events_per_user: n, ..HistoryConfig::default() })
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! conformance::per_user_ordering(&Memory).await.assert_held();
//! conformance::history_gaps(&Memory, 5).await.assert_held();
//! // This harness cannot break subscriptions, and says so:
//! assert!(matches!(
//!     conformance::resync_after_dropped_subscription(&Memory).await,
//!     Checked::Unsupported(_)
//! ));
//! # }
//! ```
//!
//! What the suite asks of the harness is written on each [`Harness`] method. Brokers may
//! share state between calls (a Redis server): every property uses user and event ids of
//! its own, fresh per call.
//!
//! Deliveries may arrive after `publish` returns; the suite waits for them with a generous
//! bound ([`DELIVERY_WAIT`]) and, where it checks that something does *not* arrive, first
//! waits for a later event of the same user to reach a control subscriber and then lets
//! [`QUIET`] pass. Under tokio's paused clock both cost nothing.
//!
//! The properties panic, like assertions, when the broker breaks the contract; they
//! return [`Checked::Unsupported`] when the harness cannot provide what a property needs
//! (a broker that cannot lose a subscription cannot show how it recovers from losing
//! one), so a test sees — and can assert — which properties did not run.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use agentwire_protocol::{Custom, Event, EventId, EventType, Seq, ServerFrame, UserId};
use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::{Notify, mpsc};

use crate::broker::{
    Accepted, BatchError, Broker, BrokerError, BrokerStats, History, NewEvent, StoredEvent,
    Subscriber, same_subscriber,
};

/// The longest the suite waits for an expected delivery before it fails.
pub const DELIVERY_WAIT: Duration = Duration::from_secs(10);

/// How long the suite lets pass before it checks that nothing more arrived.
pub const QUIET: Duration = Duration::from_millis(200);

/// Why a harness cannot do what a property needs: a sentence for people.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unsupported(pub String);

impl Unsupported {
    /// A capability the harness lacks, with the reason.
    pub fn new(reason: impl Into<String>) -> Self {
        Unsupported(reason.into())
    }
}

/// What one property found.
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use = "a property that could not run says so in its answer"]
pub enum Checked {
    /// The broker kept the rule.
    Held,
    /// The harness cannot provide what the property needs; nothing was checked.
    Unsupported(Unsupported),
}

impl Checked {
    /// Panics unless the property held.
    #[track_caller]
    pub fn assert_held(self) {
        if let Checked::Unsupported(why) = self {
            panic!("the property did not run: {}", why.0);
        }
    }
}

/// Builds the brokers the suite checks, and gives the suite the few powers over them that
/// the contract's rules need (trim, age, break). Only [`Harness::make`] and
/// [`Harness::make_keeping`] are required; a capability a harness does not implement
/// answers [`Unsupported`], and the properties that need it answer
/// [`Checked::Unsupported`].
#[async_trait]
pub trait Harness: Send + Sync {
    /// The broker under test.
    type Broker: Broker;

    /// A broker with ample bounds: it keeps at least 1,000 events per user and expires
    /// nothing (events or dedupe ids) by age or memory while the suite runs.
    async fn make(&self) -> Self::Broker;

    /// A broker that keeps *at most* `n` events of a user (`n >= 1`) and otherwise ample
    /// bounds; its dedupe window is at least the history window. The suite cannot make a
    /// broker trim otherwise, so trimming is a capability the harness provides.
    async fn make_keeping(&self, n: usize) -> Self::Broker;

    /// A broker whose history expires events older than `max_age` and whose dedupe window
    /// is `dedupe_window` (`>= max_age`) after an event's acceptance, measured on the clock
    /// [`Harness::advance`] moves. Default: unsupported.
    async fn make_aging(
        &self,
        max_age: Duration,
        dedupe_window: Duration,
    ) -> Result<Self::Broker, Unsupported> {
        let _ = (max_age, dedupe_window);
        Err(Unsupported::new(
            "this harness cannot build a broker that ages events",
        ))
    }

    /// Lets `by` pass on the broker's clock. The default sleeps on tokio's clock, which a
    /// paused runtime advances at once; a broker with its own clock (a Redis server)
    /// sleeps for real.
    async fn advance(&self, by: Duration) {
        tokio::time::sleep(by).await;
    }

    /// How far apart the suite keeps its checks from an age or window edge: the
    /// uncertainty between the harness's clock and the broker's (the default 1 ms suits a
    /// broker on tokio's paused clock; a networked broker needs its round trip and clock
    /// resolution).
    fn clock_slack(&self) -> Duration {
        Duration::from_millis(1)
    }

    /// Makes `broker` lose its subscriptions as a network failure would: deliveries may be
    /// lost from now until the broker has restored them, after which it calls
    /// [`Subscriber::resync`] for every subscribed user (rule 4). Returns once the
    /// subscriptions are broken; the broker restores them on its own, within
    /// [`DELIVERY_WAIT`]. Default: unsupported (a broker that cannot lose a delivery).
    async fn break_subscriptions(&self, broker: &Self::Broker) -> Result<(), Unsupported> {
        let _ = broker;
        Err(Unsupported::new(
            "this harness cannot break a broker's subscriptions",
        ))
    }

    /// Makes `broker` lose every stream, as a store restarted empty does, while its
    /// subscriptions are kept or restored (then with [`Subscriber::resync`]). Default:
    /// unsupported.
    async fn wipe(&self, broker: &Self::Broker) -> Result<(), Unsupported> {
        let _ = broker;
        Err(Unsupported::new(
            "this harness cannot wipe a broker's store",
        ))
    }
}

/// What [`run_all`] found: the properties that held, and those that could not run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Report {
    /// Names of the properties that held.
    pub held: Vec<&'static str>,
    /// Names of the properties that could not run, with the reason.
    pub unsupported: Vec<(&'static str, Unsupported)>,
}

impl Report {
    fn record(&mut self, name: &'static str, checked: Checked) {
        match checked {
            Checked::Held => self.held.push(name),
            Checked::Unsupported(why) => self.unsupported.push((name, why)),
        }
    }
}

/// Runs every property of the suite against brokers of `harness`, in the order of
/// [`PROPERTIES`]; a property that finds the contract broken panics.
///
/// The concurrency properties spawn tasks: run it in a tokio runtime (multi-threaded to
/// make races likely).
pub async fn run_all<H: Harness>(harness: &H) -> Report {
    let mut report = Report::default();
    macro_rules! check {
        ($($name:ident $(($arg:expr))?),* $(,)?) => {
            $( report.record(stringify!($name), $name(harness $(, $arg)?).await); )*
        };
    }
    check!(
        per_user_ordering,
        assigns_event_ids,
        dedupe_by_event_id,
        concurrent_duplicates,
        history_ranges,
        history_gaps(5),
        epochs,
        concurrent_publishers,
        delivers_in_order_exactly_once,
        refcounted_subscriptions,
        unsubscribed_gets_nothing,
        every_subscriber_gets_everything,
        subscribers_see_only_their_user,
        resync_after_dropped_subscription,
    );
    report
}

/// The names of every property [`run_all`] runs, in its order.
pub const PROPERTIES: &[&str] = &[
    "per_user_ordering",
    "assigns_event_ids",
    "dedupe_by_event_id",
    "concurrent_duplicates",
    "history_ranges",
    "history_gaps",
    "epochs",
    "concurrent_publishers",
    "delivers_in_order_exactly_once",
    "refcounted_subscriptions",
    "unsubscribed_gets_nothing",
    "every_subscriber_gets_everything",
    "subscribers_see_only_their_user",
    "resync_after_dropped_subscription",
];

/// Per user, `seq` runs 1, 2, 3… without holes, independently of other users, and
/// history returns the events in that order.
pub async fn per_user_ordering<H: Harness>(harness: &H) -> Checked {
    let broker = harness.make().await;
    let users = fresh_users("ordering", 3);
    let mut expected = vec![0u64; users.len()];
    for round in 0..30usize {
        let i = (round * 7 + round / 3) % users.len();
        let accepted = publish(&broker, &users[i], event(&users[i], round as u64, None)).await;
        expected[i] += 1;
        assert_eq!(
            accepted.seq,
            Seq(expected[i]),
            "user {} got a seq out of order",
            users[i]
        );
        assert!(
            !accepted.duplicate,
            "a fresh event was answered as a duplicate"
        );
    }
    for (user, &n) in users.iter().zip(&expected) {
        let h = history(&broker, user, Seq::ZERO, 1_000).await;
        assert_eq!(
            h.last_seq,
            Seq(n),
            "history of {user} reports the wrong last_seq"
        );
        assert_eq!(
            seqs(&h.events),
            (1..=n).collect::<Vec<_>>(),
            "history of {user}"
        );
        assert!(
            h.gap.is_none(),
            "history of {user} reports a gap: {:?}",
            h.gap
        );
        for e in &h.events {
            assert_frame_matches(user, e);
        }
    }
    Checked::Held
}

/// A publish without `event_id` gets a fresh one; one with an `event_id` keeps it.
pub async fn assigns_event_ids<H: Harness>(harness: &H) -> Checked {
    let broker = harness.make().await;
    let user = fresh_user("ids");
    let mut ids = HashSet::new();
    for n in 0..10 {
        let a = publish(&broker, &user, event(&user, n, None)).await;
        assert!(
            ids.insert(a.event_id.clone()),
            "event_id {} assigned twice",
            a.event_id
        );
    }
    let own = fresh_event_id("own");
    let a = publish(&broker, &user, event(&user, 10, Some(own.clone()))).await;
    assert_eq!(a.event_id, own, "the publisher's event_id was not kept");
    let h = history(&broker, &user, Seq::ZERO, 1_000).await;
    assert_eq!(h.events.len(), 11);
    assert_eq!(h.events[10].event_id, own);
    Checked::Held
}

/// Publishing an `event_id` again answers the first acceptance (same `seq`, `ts`,
/// `event_id`, with `duplicate: true`), stores nothing and delivers nothing.
pub async fn dedupe_by_event_id<H: Harness>(harness: &H) -> Checked {
    let broker = harness.make().await;
    let user = fresh_user("dedupe");
    let rec = Recorder::new();
    subscribe(&broker, &user, &rec).await;
    let x = fresh_event_id("x");
    let y = fresh_event_id("y");
    let first = publish(&broker, &user, event(&user, 1, Some(x.clone()))).await;
    let second = publish(&broker, &user, event(&user, 2, Some(y.clone()))).await;
    assert!(!first.duplicate && !second.duplicate);
    for _ in 0..3 {
        // A retry carries the same event (another one under the same id is a conflict,
        // see `digest_conflict`).
        let again = publish(&broker, &user, event(&user, 1, Some(x.clone()))).await;
        assert!(again.duplicate, "a repeated event_id was accepted again");
        assert_eq!(
            (again.seq, &again.event_id, again.ts, &again.epoch),
            (first.seq, &first.event_id, first.ts, &first.epoch),
            "a duplicate must answer the first acceptance"
        );
    }
    let third = publish(&broker, &user, event(&user, 3, None)).await;
    assert_eq!(third.seq, Seq(3), "a duplicate used up a seq");

    let h = history(&broker, &user, Seq::ZERO, 1_000).await;
    assert_eq!(seqs(&h.events), vec![1, 2, 3], "a duplicate was stored");
    assert_eq!(h.events[0].event_id, x);
    assert_eq!(h.events[0].ts, first.ts);

    rec.wait_for_seqs(&user, 3).await;
    rec.quiet().await;
    assert_eq!(rec.seqs(&user), vec![1, 2, 3], "a duplicate was delivered");
    unsubscribe(&broker, &user, &rec).await;
    Checked::Held
}

/// Many tasks publishing the same `event_id` at once: exactly one acceptance, and every
/// answer names it.
pub async fn concurrent_duplicates<H: Harness>(harness: &H) -> Checked {
    let broker = harness.make().await;
    const TASKS: usize = 8;
    let broker = Arc::new(broker);
    let user = fresh_user("dup-race");
    publish(&*broker, &user, event(&user, 0, None)).await;
    let id = fresh_event_id("race");
    let tasks: Vec<_> = (0..TASKS)
        .map(|_| {
            let (broker, user, id) = (broker.clone(), user.clone(), id.clone());
            tokio::spawn(async move { publish(&*broker, &user, event(&user, 1, Some(id))).await })
        })
        .collect();
    let mut answers = Vec::new();
    for t in tasks {
        answers.push(t.await.expect("publisher task panicked"));
    }
    let fresh: Vec<_> = answers.iter().filter(|a| !a.duplicate).collect();
    assert_eq!(
        fresh.len(),
        1,
        "one event_id accepted {} times",
        fresh.len()
    );
    for a in &answers {
        assert_eq!((a.seq, &a.event_id, a.ts), (Seq(2), &id, fresh[0].ts));
    }
    let h = history(&*broker, &user, Seq::ZERO, 1_000).await;
    assert_eq!(seqs(&h.events), vec![1, 2]);
    Checked::Held
}

/// `history(after, limit)` returns at most `limit` events, all with `seq > after`, in
/// order, with the stream's `last_seq`; nothing past the newest, and an empty stream for
/// a user never published to.
pub async fn history_ranges<H: Harness>(harness: &H) -> Checked {
    let broker = harness.make().await;
    let user = fresh_user("ranges");
    let empty = history(&broker, &user, Seq::ZERO, 10).await;
    assert_eq!(
        empty.last_seq,
        Seq::ZERO,
        "a new user's stream is not empty"
    );
    assert!(empty.events.is_empty() && empty.gap.is_none());

    let mut accepted = Vec::new();
    for n in 0..20 {
        accepted.push(publish(&broker, &user, event(&user, n, None)).await);
    }
    let cases: [(u64, usize, Vec<u64>); 8] = [
        (0, 1_000, (1..=20).collect()),
        (0, 3, vec![1, 2, 3]),
        (5, 3, vec![6, 7, 8]),
        (17, 10, vec![18, 19, 20]),
        (19, 1, vec![20]),
        (20, 10, vec![]),
        (25, 10, vec![]),
        (4, 0, vec![]),
    ];
    for (after, limit, want) in cases {
        let h = history(&broker, &user, Seq(after), limit).await;
        assert_eq!(
            seqs(&h.events),
            want,
            "history(after {after}, limit {limit})"
        );
        assert_eq!(h.last_seq, Seq(20), "history(after {after}) last_seq");
        assert!(
            h.gap.is_none(),
            "history(after {after}): unexpected gap {:?}",
            h.gap
        );
        for e in &h.events {
            let a = &accepted[(e.seq.get() - 1) as usize];
            assert_eq!((&e.event_id, e.ts, &e.epoch), (&a.event_id, a.ts, &a.epoch));
            assert_frame_matches(&user, e);
        }
    }
    Checked::Held
}

/// With a broker that keeps at most `kept` events per user (see the module docs): history
/// reports what it no longer holds as a gap right after `after`, then the held events,
/// contiguous up to the newest.
pub async fn history_gaps<H: Harness>(harness: &H, kept: usize) -> Checked {
    let broker = harness.make_keeping(kept).await;
    assert!(
        kept >= 1,
        "history_gaps needs a broker that keeps at least one event"
    );
    let user = fresh_user("gaps");
    let total = 3 * kept as u64 + 2;
    for n in 0..total {
        publish(&broker, &user, event(&user, n, None)).await;
    }
    let h = history(&broker, &user, Seq::ZERO, 1_000).await;
    assert_eq!(h.last_seq, Seq(total));
    let held = seqs(&h.events);
    assert!(
        !held.is_empty() && held.len() <= kept,
        "a broker keeping {kept} events holds {}",
        held.len()
    );
    let first_held = held[0];
    assert_eq!(
        held,
        (first_held..=total).collect::<Vec<_>>(),
        "held events are not contiguous"
    );
    assert_eq!(
        h.gap,
        Some((Seq(1), Seq(first_held - 1))),
        "gap of history(after 0)"
    );

    if first_held > 2 {
        let mid = history(&broker, &user, Seq(1), 1_000).await;
        assert_eq!(
            mid.gap,
            Some((Seq(2), Seq(first_held - 1))),
            "gap of history(after 1)"
        );
        assert_eq!(seqs(&mid.events), held);
    }
    let limited = history(&broker, &user, Seq::ZERO, 1).await;
    assert_eq!(limited.gap, h.gap, "a limit changes the gap");
    assert_eq!(seqs(&limited.events), vec![first_held]);

    let edge = history(&broker, &user, Seq(first_held - 1), 1_000).await;
    assert!(
        edge.gap.is_none(),
        "a gap reported where nothing is missing: {:?}",
        edge.gap
    );
    assert_eq!(seqs(&edge.events), held);
    let newest = history(&broker, &user, Seq(total), 1_000).await;
    assert!(newest.gap.is_none() && newest.events.is_empty());
    Checked::Held
}

/// While a stream lives (here: while it has a subscriber and events), its epoch does not
/// change; history, acceptances and stored events all name it, and history reports the
/// newest `seq`.
pub async fn epochs<H: Harness>(harness: &H) -> Checked {
    let broker = harness.make().await;
    let user = fresh_user("epochs");
    let rec = Recorder::new();
    subscribe(&broker, &user, &rec).await;
    let first = publish(&broker, &user, event(&user, 0, None)).await;
    for n in 1..8 {
        let a = publish(&broker, &user, event(&user, n, None)).await;
        assert_eq!(
            a.epoch, first.epoch,
            "the epoch changed while the stream lived"
        );
        let h = history(&broker, &user, Seq(a.seq.get() - 1), 10).await;
        assert_eq!(
            (&h.epoch, h.last_seq),
            (&first.epoch, a.seq),
            "history after publish {n}"
        );
        assert_eq!(h.events.len(), 1);
        assert_eq!(h.events[0].epoch, first.epoch);
    }
    rec.wait_for_seqs(&user, 8).await;
    for (_, e) in rec.events().iter() {
        assert_eq!(
            e.epoch, first.epoch,
            "a delivered event names another epoch"
        );
    }
    let other = fresh_user("epochs-other");
    let o = publish(&broker, &other, event(&other, 0, None)).await;
    assert_eq!(o.seq, Seq(1));
    let h = history(&broker, &user, Seq::ZERO, 100).await;
    assert_eq!((&h.epoch, h.last_seq), (&first.epoch, Seq(8)));
    unsubscribe(&broker, &user, &rec).await;
    Checked::Held
}

/// Many tasks publishing to one user at once: the seqs handed out are exactly
/// `1..=tasks*events`, each task's own publishes get increasing seqs, and a subscriber
/// sees the whole stream in order.
pub async fn concurrent_publishers<H: Harness>(harness: &H) -> Checked {
    let broker = harness.make().await;
    const TASKS: u64 = 8;
    const EACH: u64 = 25;
    let broker = Arc::new(broker);
    let user = fresh_user("concurrent");
    let rec = Recorder::new();
    subscribe(&*broker, &user, &rec).await;
    let tasks: Vec<_> = (0..TASKS)
        .map(|t| {
            let (broker, user) = (broker.clone(), user.clone());
            tokio::spawn(async move {
                let mut mine = Vec::new();
                for n in 0..EACH {
                    let a = publish(&*broker, &user, event(&user, t * 1_000 + n, None)).await;
                    mine.push(a.seq.get());
                }
                mine
            })
        })
        .collect();
    let mut all = Vec::new();
    for t in tasks {
        let mine = t.await.expect("publisher task panicked");
        assert!(
            mine.windows(2).all(|w| w[0] < w[1]),
            "one task's seqs went back: {mine:?}"
        );
        all.extend(mine);
    }
    all.sort_unstable();
    assert_eq!(
        all,
        (1..=TASKS * EACH).collect::<Vec<_>>(),
        "seqs of concurrent publishes"
    );
    rec.wait_for_seqs(&user, TASKS * EACH).await;
    rec.quiet().await;
    assert_eq!(
        rec.seqs(&user),
        (1..=TASKS * EACH).collect::<Vec<_>>(),
        "delivered stream"
    );
    unsubscribe(&*broker, &user, &rec).await;
    Checked::Held
}

/// A subscriber gets every event of its user exactly once, in `seq` order, as the same
/// frame history holds.
pub async fn delivers_in_order_exactly_once<H: Harness>(harness: &H) -> Checked {
    let broker = harness.make().await;
    let user = fresh_user("delivery");
    let rec = Recorder::new();
    subscribe(&broker, &user, &rec).await;
    for n in 0..50 {
        publish(&broker, &user, event(&user, n, None)).await;
    }
    rec.wait_for_seqs(&user, 50).await;
    rec.quiet().await;
    assert_eq!(rec.seqs(&user), (1..=50).collect::<Vec<_>>());
    let h = history(&broker, &user, Seq::ZERO, 1_000).await;
    let delivered: Vec<StoredEvent> = rec.events().iter().map(|(_, e)| e.clone()).collect();
    assert_eq!(delivered, h.events, "delivered events differ from history");
    unsubscribe(&broker, &user, &rec).await;
    Checked::Held
}

/// Subscriptions are counted per (user, subscriber): subscribed twice, a subscriber gets
/// each event once and stays subscribed until unsubscribed twice.
pub async fn refcounted_subscriptions<H: Harness>(harness: &H) -> Checked {
    let broker = harness.make().await;
    let user = fresh_user("refcount");
    let rec = Recorder::new();
    let control = Recorder::new();
    subscribe(&broker, &user, &control).await;
    subscribe(&broker, &user, &rec).await;
    subscribe(&broker, &user, &rec).await;
    for n in 0..5 {
        publish(&broker, &user, event(&user, n, None)).await;
    }
    rec.wait_for_seqs(&user, 5).await;
    unsubscribe(&broker, &user, &rec).await;
    for n in 5..10 {
        publish(&broker, &user, event(&user, n, None)).await;
    }
    rec.wait_for_seqs(&user, 10).await;
    unsubscribe(&broker, &user, &rec).await;
    for n in 10..15 {
        publish(&broker, &user, event(&user, n, None)).await;
    }
    control.wait_for_seqs(&user, 15).await;
    rec.quiet().await;
    assert_eq!(
        rec.seqs(&user),
        (1..=10).collect::<Vec<_>>(),
        "subscribed twice: each event once, and nothing after the second unsubscribe"
    );
    // One unsubscribe more than subscribes is a no-op, as is one for an unknown user.
    unsubscribe(&broker, &user, &rec).await;
    unsubscribe(&broker, &fresh_user("refcount-unknown"), &rec).await;
    unsubscribe(&broker, &user, &control).await;
    Checked::Held
}

/// A subscriber that unsubscribed, or never subscribed, gets nothing.
pub async fn unsubscribed_gets_nothing<H: Harness>(harness: &H) -> Checked {
    let broker = harness.make().await;
    let user = fresh_user("unsubscribed");
    let gone = Recorder::new();
    let never = Recorder::new();
    let control = Recorder::new();
    subscribe(&broker, &user, &control).await;
    subscribe(&broker, &user, &gone).await;
    unsubscribe(&broker, &user, &gone).await;
    unsubscribe(&broker, &user, &never).await;
    for n in 0..10 {
        publish(&broker, &user, event(&user, n, None)).await;
    }
    control.wait_for_seqs(&user, 10).await;
    gone.quiet().await;
    assert!(
        gone.events().is_empty(),
        "an unsubscribed subscriber got events"
    );
    assert!(
        never.events().is_empty(),
        "a subscriber that never subscribed got events"
    );
    unsubscribe(&broker, &user, &control).await;
    Checked::Held
}

/// Two subscribers of one user both get every event, in order.
pub async fn every_subscriber_gets_everything<H: Harness>(harness: &H) -> Checked {
    let broker = harness.make().await;
    let user = fresh_user("two-subscribers");
    let a = Recorder::new();
    let b = Recorder::new();
    subscribe(&broker, &user, &a).await;
    subscribe(&broker, &user, &b).await;
    for n in 0..30 {
        publish(&broker, &user, event(&user, n, None)).await;
    }
    a.wait_for_seqs(&user, 30).await;
    b.wait_for_seqs(&user, 30).await;
    a.quiet().await;
    assert_eq!(a.seqs(&user), (1..=30).collect::<Vec<_>>());
    assert_eq!(b.seqs(&user), (1..=30).collect::<Vec<_>>());
    unsubscribe(&broker, &user, &a).await;
    unsubscribe(&broker, &user, &b).await;
    Checked::Held
}

/// A subscriber of user A never gets user B's events, whatever the interleaving; one
/// subscriber of two users gets each user's stream, each in order.
pub async fn subscribers_see_only_their_user<H: Harness>(harness: &H) -> Checked {
    let broker = harness.make().await;
    let users = fresh_users("isolation", 3);
    let only_a = Recorder::new();
    let only_b = Recorder::new();
    let both = Recorder::new();
    subscribe(&broker, &users[0], &only_a).await;
    subscribe(&broker, &users[1], &only_b).await;
    subscribe(&broker, &users[0], &both).await;
    subscribe(&broker, &users[1], &both).await;
    let mut counts = [0u64; 3];
    for n in 0..45u64 {
        let i = (n * 5 % 7 % 3) as usize;
        publish(&broker, &users[i], event(&users[i], n, None)).await;
        counts[i] += 1;
    }
    only_a.wait_for_seqs(&users[0], counts[0]).await;
    only_b.wait_for_seqs(&users[1], counts[1]).await;
    both.wait_for_seqs(&users[0], counts[0]).await;
    both.wait_for_seqs(&users[1], counts[1]).await;
    only_a.quiet().await;
    for (rec, mine) in [(&only_a, &users[0]), (&only_b, &users[1])] {
        for (user, e) in rec.events().iter() {
            assert_eq!(user, mine, "delivered under another user's name");
            assert_frame_matches(mine, e);
        }
        let idx = users.iter().position(|u| u == mine).unwrap_or(0);
        assert_eq!(rec.seqs(mine), (1..=counts[idx]).collect::<Vec<_>>());
    }
    assert_eq!(both.seqs(&users[0]), (1..=counts[0]).collect::<Vec<_>>());
    assert_eq!(both.seqs(&users[1]), (1..=counts[1]).collect::<Vec<_>>());
    for (user, e) in both.events().iter() {
        assert_frame_matches(user, e);
    }
    assert!(
        both.seqs(&users[2]).is_empty(),
        "got events of a user not subscribed to"
    );
    for (user, rec) in [
        (&users[0], &only_a),
        (&users[1], &only_b),
        (&users[0], &both),
        (&users[1], &both),
    ] {
        unsubscribe(&broker, user, rec).await;
    }
    Checked::Held
}

/// Rule 4: a broker whose subscriptions broke restores them and then calls
/// [`Subscriber::resync`] for each subscribed user (and no other); from then on every
/// event is delivered again, in order, and history holds every event, including those
/// whose delivery was lost.
pub async fn resync_after_dropped_subscription<H: Harness>(harness: &H) -> Checked {
    let broker = harness.make().await;
    let user = fresh_user("resync");
    let bystander = fresh_user("resync-bystander");
    let rec = Recorder::new();
    subscribe(&broker, &user, &rec).await;
    for n in 0..5 {
        publish(&broker, &user, event(&user, n, None)).await;
    }
    rec.wait_for_seqs(&user, 5).await;
    if let Err(why) = harness.break_subscriptions(&broker).await {
        unsubscribe(&broker, &user, &rec).await;
        return Checked::Unsupported(why);
    }
    // Published while the subscription is broken or being restored: delivered or not.
    for n in 5..10 {
        publish(&broker, &user, event(&user, n, None)).await;
    }
    publish(&broker, &bystander, event(&bystander, 0, None)).await;
    rec.wait_for_resync(&user).await;
    for n in 10..15 {
        publish(&broker, &user, event(&user, n, None)).await;
    }
    rec.wait_for_seqs(&user, 15).await;
    rec.quiet().await;
    let got = rec.seqs(&user);
    assert!(
        got.windows(2).all(|w| w[0] < w[1]),
        "deliveries around a broken subscription went back or repeated: {got:?}"
    );
    for seq in (1..=5).chain(11..=15) {
        assert!(
            got.contains(&seq),
            "seq {seq} was not delivered, though it was accepted while the subscription was whole: {got:?}"
        );
    }
    assert!(
        rec.resyncs().iter().all(|u| *u == user),
        "resync named a user the subscriber is not subscribed to: {:?}",
        rec.resyncs()
    );
    let h = history(&broker, &user, Seq::ZERO, 1_000).await;
    assert_eq!(
        seqs(&h.events),
        (1..=15).collect::<Vec<_>>(),
        "history lacks events accepted while the subscription was broken"
    );
    unsubscribe(&broker, &user, &rec).await;
    Checked::Held
}

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

/// A subscriber that records what it is given.
struct Recorder {
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
    fn new() -> Arc<Self> {
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
    fn resyncs(&self) -> Vec<UserId> {
        self.resyncs_lock().clone()
    }

    /// Waits until `user` was resynced; fails after [`DELIVERY_WAIT`].
    async fn wait_for_resync(&self, user: &UserId) {
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

    fn events(&self) -> MutexGuard<'_, Vec<(UserId, StoredEvent)>> {
        self.got.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn seqs(&self, user: &UserId) -> Vec<u64> {
        self.events()
            .iter()
            .filter(|(u, _)| u == user)
            .map(|(_, e)| e.seq.get())
            .collect()
    }

    /// Waits until `user`'s events up to `seq` arrived; fails after [`DELIVERY_WAIT`].
    async fn wait_for_seqs(&self, user: &UserId, seq: u64) {
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

    /// Lets [`QUIET`] pass, so late deliveries would have arrived.
    async fn quiet(&self) {
        tokio::time::sleep(QUIET).await;
    }
}

fn fresh_user(label: &str) -> UserId {
    UserId::new(format!("conformance-{label}-{}", EventId::generate()))
        .expect("generated user ids are valid")
}

fn fresh_users(label: &str, n: usize) -> Vec<UserId> {
    (0..n).map(|i| fresh_user(&format!("{label}{i}"))).collect()
}

fn fresh_event_id(label: &str) -> EventId {
    EventId::new(format!("{label}-{}", EventId::generate())).expect("generated ids are valid")
}

/// A `custom` event that names its user and a number, so a misrouted frame is visible.
fn event(user: &UserId, n: u64, event_id: Option<EventId>) -> NewEvent {
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

fn seqs(events: &[StoredEvent]) -> Vec<u64> {
    events.iter().map(|e| e.seq.get()).collect()
}

/// The stored frame decodes to an event of `user` with the stored stream fields.
fn assert_frame_matches(user: &UserId, e: &StoredEvent) {
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

async fn publish<B: Broker + ?Sized>(broker: &B, user: &UserId, event: NewEvent) -> Accepted {
    match broker.publish(user, event).await {
        Ok(a) => a,
        Err(e) => panic!("publish to {user} failed: {e}"),
    }
}

async fn history<B: Broker + ?Sized>(
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

async fn subscribe<B: Broker + ?Sized>(broker: &B, user: &UserId, rec: &Arc<Recorder>) {
    if let Err(e) = broker.subscribe(user, rec.clone()).await {
        panic!("subscribe to {user} failed: {e}");
    }
}

async fn unsubscribe<B: Broker + ?Sized>(broker: &B, user: &UserId, rec: &Arc<Recorder>) {
    let sub: Arc<dyn Subscriber> = rec.clone();
    if let Err(e) = broker.unsubscribe(user, &sub).await {
        panic!("unsubscribe from {user} failed: {e}");
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
