//! The broker conformance suite against the in-memory broker, and against the in-memory
//! broker behind `LatencyBroker` (late deliveries, calls completing in random order).

use agentwire_manager::conformance::{self, Harness, LatencyBroker};
use agentwire_manager::{Broker, HistoryConfig, InMemoryBroker};
use async_trait::async_trait;

/// In-memory brokers, each wrapped by `wrap`.
struct Memory<W>(W);

#[async_trait]
impl<B: Broker, W: Fn(InMemoryBroker) -> B + Send + Sync> Harness for Memory<W> {
    type Broker = B;

    async fn make(&self) -> B {
        (self.0)(InMemoryBroker::default())
    }

    async fn make_keeping(&self, n: usize) -> B {
        (self.0)(InMemoryBroker::new(HistoryConfig {
            max_events_per_user: n,
            ..HistoryConfig::default()
        }))
    }
}

fn plain() -> Memory<impl Fn(InMemoryBroker) -> InMemoryBroker + Send + Sync> {
    Memory(|b| b)
}

fn latency() -> Memory<impl Fn(InMemoryBroker) -> LatencyBroker<InMemoryBroker> + Send + Sync> {
    Memory(LatencyBroker::new)
}

/// One test per property per broker. Properties that spawn publishers run on a
/// multi-threaded runtime with real time; the others on a paused clock, which makes the
/// suite's waits free.
macro_rules! conformance_tests {
    ($broker:ident, $harness:expr) => {
        mod $broker {
            use super::*;

            #[tokio::test(start_paused = true)]
            async fn per_user_ordering() {
                conformance::per_user_ordering(&$harness)
                    .await
                    .assert_held();
            }

            #[tokio::test(start_paused = true)]
            async fn assigns_event_ids() {
                conformance::assigns_event_ids(&$harness)
                    .await
                    .assert_held();
            }

            #[tokio::test(start_paused = true)]
            async fn dedupe_by_event_id() {
                conformance::dedupe_by_event_id(&$harness)
                    .await
                    .assert_held();
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn concurrent_duplicates() {
                conformance::concurrent_duplicates(&$harness)
                    .await
                    .assert_held();
            }

            #[tokio::test(start_paused = true)]
            async fn history_ranges() {
                conformance::history_ranges(&$harness).await.assert_held();
            }

            #[tokio::test(start_paused = true)]
            async fn history_gaps() {
                for kept in [1, 2, 5, 16] {
                    conformance::history_gaps(&$harness, kept)
                        .await
                        .assert_held();
                }
            }

            #[tokio::test(start_paused = true)]
            async fn epochs() {
                conformance::epochs(&$harness).await.assert_held();
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn concurrent_publishers() {
                conformance::concurrent_publishers(&$harness)
                    .await
                    .assert_held();
            }

            #[tokio::test(start_paused = true)]
            async fn delivers_in_order_exactly_once() {
                conformance::delivers_in_order_exactly_once(&$harness)
                    .await
                    .assert_held();
            }

            #[tokio::test(start_paused = true)]
            async fn refcounted_subscriptions() {
                conformance::refcounted_subscriptions(&$harness)
                    .await
                    .assert_held();
            }

            #[tokio::test(start_paused = true)]
            async fn unsubscribed_gets_nothing() {
                conformance::unsubscribed_gets_nothing(&$harness)
                    .await
                    .assert_held();
            }

            #[tokio::test(start_paused = true)]
            async fn every_subscriber_gets_everything() {
                conformance::every_subscriber_gets_everything(&$harness)
                    .await
                    .assert_held();
            }

            #[tokio::test(start_paused = true)]
            async fn subscribers_see_only_their_user() {
                conformance::subscribers_see_only_their_user(&$harness)
                    .await
                    .assert_held();
            }
        }
    };
}

conformance_tests!(in_memory, plain());
conformance_tests!(latency, latency());
