//! The broker conformance suite against the in-memory broker, and against the in-memory
//! broker behind `LatencyBroker` (late deliveries, calls completing in random order). Both
//! sit in a `SeverableBroker`, which gives them the failures the in-memory broker cannot
//! have on its own (lost deliveries, a store restarted empty), so every property runs.

use std::sync::Arc;
use std::time::Duration;

use agentwire_manager::conformance::{self, Harness, LatencyBroker, SeverableBroker, Unsupported};
use agentwire_manager::{Broker, HistoryConfig, InMemoryBroker, RunLimits};
use async_trait::async_trait;

/// How long a broken subscription stays broken before it is restored.
const OUTAGE: Duration = Duration::from_millis(20);

/// In-memory brokers, each wrapped by `wrap`, then made severable; `slack` is what the
/// wrapper adds to a call's time.
struct Memory<W> {
    wrap: Arc<W>,
    slack: Duration,
}

impl<B: Broker, W: Fn(InMemoryBroker) -> B + Send + Sync + 'static> Memory<W> {
    fn with(&self, config: HistoryConfig) -> SeverableBroker<B> {
        self.with_runs(config, RunLimits::default())
    }

    fn with_runs(&self, config: HistoryConfig, runs: RunLimits) -> SeverableBroker<B> {
        let wrap = self.wrap.clone();
        SeverableBroker::new(move || {
            wrap(InMemoryBroker::new(config.clone()).with_run_limits(runs))
        })
    }
}

#[async_trait]
impl<B: Broker, W: Fn(InMemoryBroker) -> B + Send + Sync + 'static> Harness for Memory<W> {
    type Broker = SeverableBroker<B>;

    async fn make(&self) -> Self::Broker {
        self.with(HistoryConfig::default())
    }

    async fn make_keeping(&self, n: usize) -> Self::Broker {
        self.with(HistoryConfig {
            max_events_per_user: n,
            ..HistoryConfig::default()
        })
    }

    async fn make_aging(
        &self,
        max_age: Duration,
        dedupe_window: Duration,
    ) -> Result<Self::Broker, Unsupported> {
        Ok(self.with(HistoryConfig {
            max_age,
            dedupe_window,
            ..HistoryConfig::default()
        }))
    }

    async fn make_with_runs(&self, limits: RunLimits) -> Result<Self::Broker, Unsupported> {
        Ok(self.with_runs(HistoryConfig::default(), limits))
    }

    fn clock_slack(&self) -> Duration {
        self.slack
    }

    async fn break_subscriptions(&self, broker: &Self::Broker) -> Result<(), Unsupported> {
        broker.sever_for(OUTAGE);
        Ok(())
    }

    async fn wipe(&self, broker: &Self::Broker) -> Result<(), Unsupported> {
        broker
            .restart_empty()
            .await
            .map_err(|e| Unsupported::new(format!("restart failed: {e}")))
    }
}

fn plain() -> Memory<impl Fn(InMemoryBroker) -> InMemoryBroker + Send + Sync + 'static> {
    Memory {
        wrap: Arc::new(|b| b),
        slack: Duration::from_millis(1),
    }
}

fn latency()
-> Memory<impl Fn(InMemoryBroker) -> LatencyBroker<InMemoryBroker> + Send + Sync + 'static> {
    // Up to 2 ms before and after each call; the suite makes two calls after an edge.
    Memory {
        wrap: Arc::new(LatencyBroker::new),
        slack: Duration::from_millis(20),
    }
}

macro_rules! paused {
    ($harness:expr, $name:ident) => {
        #[tokio::test(start_paused = true)]
        async fn $name() {
            conformance::$name(&$harness).await.assert_held();
        }
    };
}

macro_rules! threaded {
    ($harness:expr, $name:ident) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn $name() {
            conformance::$name(&$harness).await.assert_held();
        }
    };
}

/// One test per property per broker. Properties that spawn concurrent tasks run on a
/// multi-threaded runtime with real time; the others on a paused clock, which makes the
/// suite's waits (and its aging) free.
macro_rules! conformance_tests {
    ($broker:ident, $harness:expr) => {
        mod $broker {
            use super::*;

            paused!($harness, per_user_ordering);
            paused!($harness, assigns_event_ids);
            paused!($harness, dedupe_by_event_id);
            threaded!($harness, concurrent_duplicates);
            paused!($harness, history_ranges);
            paused!($harness, epochs);
            threaded!($harness, concurrent_publishers);
            paused!($harness, delivers_in_order_exactly_once);
            paused!($harness, refcounted_subscriptions);
            paused!($harness, unsubscribed_gets_nothing);
            paused!($harness, every_subscriber_gets_everything);
            paused!($harness, subscribers_see_only_their_user);
            paused!($harness, resync_after_dropped_subscription);
            threaded!($harness, concurrent_publish_vs_subscribe_history);
            paused!($harness, epoch_restart);
            paused!($harness, wipe_restarts_epoch);
            paused!($harness, dedupe_window_edges);
            paused!($harness, age_trim);
            threaded!($harness, subscribe_unsubscribe_races);
            threaded!($harness, publish_many_batches);
            paused!($harness, lookup_by_event_id);
            paused!($harness, digest_conflict);
            paused!($harness, run_lifecycle_edges);
            paused!($harness, run_dedupe_before_lifecycle);
            paused!($harness, run_batches_all_or_nothing);
            threaded!($harness, run_concurrent_starts);
            paused!($harness, run_bounds);
            paused!($harness, run_ttl);
            paused!($harness, run_stall_claims);
            threaded!($harness, run_stall_claim_race);

            #[tokio::test(start_paused = true)]
            async fn run_lifecycle_matches_reference() {
                conformance::run_lifecycle_matches_reference(&$harness, 200)
                    .await
                    .assert_held();
            }

            #[tokio::test(start_paused = true)]
            async fn history_gaps() {
                for kept in [1, 2, 5, 16] {
                    conformance::history_gaps(&$harness, kept)
                        .await
                        .assert_held();
                }
            }

            /// The whole suite in one run: every property holds, none is left out. On the
            /// paused clock, which the aging properties' 1 ms slack needs; the races have
            /// their own multi-threaded tests above.
            #[tokio::test(start_paused = true)]
            async fn run_all() {
                let report = conformance::run_all(&$harness).await;
                assert!(report.unsupported.is_empty(), "{:?}", report.unsupported);
                assert_eq!(report.held, conformance::PROPERTIES);
            }
        }
    };
}

conformance_tests!(in_memory, plain());
conformance_tests!(latency, latency());

/// A harness that provides only what it must: the properties that need more say so
/// instead of passing vacuously.
#[tokio::test(start_paused = true)]
async fn a_harness_without_capabilities_reports_them_unsupported() {
    struct Minimal;

    #[async_trait]
    impl Harness for Minimal {
        type Broker = InMemoryBroker;
        async fn make(&self) -> InMemoryBroker {
            InMemoryBroker::default()
        }
        async fn make_keeping(&self, n: usize) -> InMemoryBroker {
            InMemoryBroker::new(HistoryConfig {
                max_events_per_user: n,
                ..HistoryConfig::default()
            })
        }
    }

    let report = conformance::run_all(&Minimal).await;
    let unsupported: Vec<&str> = report.unsupported.iter().map(|(n, _)| *n).collect();
    assert_eq!(
        unsupported,
        vec![
            "resync_after_dropped_subscription",
            "epoch_restart",
            "wipe_restarts_epoch",
            "dedupe_window_edges",
            "age_trim",
            "run_bounds",
            "run_ttl",
        ]
    );
    assert_eq!(
        report.held.len() + unsupported.len(),
        conformance::PROPERTIES.len()
    );
}

/// A broker that breaks one rule, to show the suite notices: it delegates to the
/// in-memory broker except where `flaw` says.
#[derive(Debug)]
struct Flawed {
    inner: InMemoryBroker,
    flaw: Flaw,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Flaw {
    /// `publish_many` is the trait's default loop: not atomic.
    LoopedBatches,
    /// `lookup` forgets everything.
    ForgetfulLookup,
    /// Run guards are dropped: every event is appended whatever its run's state.
    IgnoredGuards,
}

#[async_trait]
impl Broker for Flawed {
    async fn publish(
        &self,
        user: &agentwire_protocol::UserId,
        event: agentwire_manager::NewEvent,
    ) -> Result<agentwire_manager::Accepted, agentwire_manager::BrokerError> {
        let mut event = event;
        if self.flaw == Flaw::IgnoredGuards {
            event.run = None;
        }
        self.inner.publish(user, event).await
    }

    async fn publish_many(
        &self,
        user: &agentwire_protocol::UserId,
        events: Vec<agentwire_manager::NewEvent>,
    ) -> Result<Vec<agentwire_manager::Accepted>, agentwire_manager::BatchError> {
        if self.flaw != Flaw::LoopedBatches {
            return self.inner.publish_many(user, events).await;
        }
        let mut accepted = Vec::new();
        for e in events {
            match self.inner.publish(user, e).await {
                Ok(a) => accepted.push(a),
                Err(error) => return Err(agentwire_manager::BatchError::new(accepted, error)),
            }
        }
        Ok(accepted)
    }

    async fn subscribe(
        &self,
        user: &agentwire_protocol::UserId,
        subscriber: Arc<dyn agentwire_manager::Subscriber>,
    ) -> Result<(), agentwire_manager::BrokerError> {
        self.inner.subscribe(user, subscriber).await
    }

    async fn unsubscribe(
        &self,
        user: &agentwire_protocol::UserId,
        subscriber: &Arc<dyn agentwire_manager::Subscriber>,
    ) -> Result<(), agentwire_manager::BrokerError> {
        self.inner.unsubscribe(user, subscriber).await
    }

    async fn history(
        &self,
        user: &agentwire_protocol::UserId,
        after: agentwire_protocol::Seq,
        limit: usize,
    ) -> Result<agentwire_manager::History, agentwire_manager::BrokerError> {
        self.inner.history(user, after, limit).await
    }

    async fn lookup(
        &self,
        user: &agentwire_protocol::UserId,
        event_id: &agentwire_protocol::EventId,
    ) -> Result<Option<agentwire_manager::Accepted>, agentwire_manager::BrokerError> {
        if self.flaw == Flaw::ForgetfulLookup {
            return Ok(None);
        }
        self.inner.lookup(user, event_id).await
    }
}

fn flawed(flaw: Flaw) -> Memory<impl Fn(InMemoryBroker) -> Flawed + Send + Sync + 'static> {
    Memory {
        wrap: Arc::new(move |inner| Flawed { inner, flaw }),
        slack: Duration::from_millis(1),
    }
}

#[tokio::test(start_paused = true)]
#[should_panic(expected = "a refused batch accepted")]
async fn the_suite_catches_a_batch_that_is_not_atomic() {
    let _ = conformance::publish_many_batches(&flawed(Flaw::LoopedBatches)).await;
}

#[tokio::test(start_paused = true)]
#[should_panic(expected = "lookup of")]
async fn the_suite_catches_a_lookup_that_forgets() {
    let _ = conformance::lookup_by_event_id(&flawed(Flaw::ForgetfulLookup)).await;
}

#[tokio::test(start_paused = true)]
#[should_panic(expected = "expected a run violation")]
async fn the_suite_catches_a_broker_that_ignores_run_guards() {
    let _ = conformance::run_lifecycle_edges(&flawed(Flaw::IgnoredGuards)).await;
}
