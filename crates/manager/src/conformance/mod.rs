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

mod brokers;
mod cluster;
mod leases;
mod properties;
mod rates;
mod receipts;
mod runs;
mod support;

use std::time::Duration;

use async_trait::async_trait;

#[cfg(doc)]
use crate::Subscriber;
use crate::broker::Broker;
use crate::runs::RunLimits;

pub use brokers::{Fault, FaultyBroker, LatencyBroker, SeverableBroker};
pub use cluster::*;
pub use leases::*;
pub use properties::*;
pub use rates::*;
pub use receipts::*;
pub use runs::*;

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

    /// A broker with ample history bounds (as [`Harness::make`]) whose run state for
    /// guarded events is bounded by `limits`, its `ttl` measured on the clock
    /// [`Harness::advance`] moves. Default: unsupported.
    async fn make_with_runs(&self, limits: RunLimits) -> Result<Self::Broker, Unsupported> {
        let _ = limits;
        Err(Unsupported::new(
            "this harness cannot build a broker with given run-state bounds",
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
    /// resolution, twice: the suite makes up to two calls after a point it measured).
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
        concurrent_publish_vs_subscribe_history,
        epoch_restart,
        wipe_restarts_epoch,
        dedupe_window_edges,
        age_trim,
        subscribe_unsubscribe_races,
        publish_many_batches,
        lookup_by_event_id,
        digest_conflict,
        run_lifecycle_matches_reference(RUN_CASES),
        run_lifecycle_edges,
        run_dedupe_before_lifecycle,
        run_batches_all_or_nothing,
        run_concurrent_starts,
        run_bounds,
        run_ttl,
        run_stall_claims,
        run_stall_claim_race,
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
    "concurrent_publish_vs_subscribe_history",
    "epoch_restart",
    "wipe_restarts_epoch",
    "dedupe_window_edges",
    "age_trim",
    "subscribe_unsubscribe_races",
    "publish_many_batches",
    "lookup_by_event_id",
    "digest_conflict",
    "run_lifecycle_matches_reference",
    "run_lifecycle_edges",
    "run_dedupe_before_lifecycle",
    "run_batches_all_or_nothing",
    "run_concurrent_starts",
    "run_bounds",
    "run_ttl",
    "run_stall_claims",
    "run_stall_claim_race",
];

/// How many random sequences [`run_all`] checks with
/// [`run_lifecycle_matches_reference`].
pub const RUN_CASES: usize = 24;
