//! The broker conformance suite against the in-memory broker, and against the in-memory
//! broker behind `LatencyBroker` (late deliveries, calls completing in random order).

use agentwire_manager::conformance::{self, LatencyBroker};
use agentwire_manager::{HistoryConfig, InMemoryBroker};

fn keeping(n: usize) -> InMemoryBroker {
    InMemoryBroker::new(HistoryConfig {
        max_events_per_user: n,
        ..HistoryConfig::default()
    })
}

/// One test per property per broker. Properties that spawn publishers run on a
/// multi-threaded runtime with real time; the others on a paused clock, which makes the
/// suite's waits free.
macro_rules! conformance_tests {
    ($broker:ident, $make:expr, $make_keeping:expr) => {
        mod $broker {
            use super::*;

            #[tokio::test(start_paused = true)]
            async fn per_user_ordering() {
                conformance::per_user_ordering($make).await;
            }

            #[tokio::test(start_paused = true)]
            async fn assigns_event_ids() {
                conformance::assigns_event_ids($make).await;
            }

            #[tokio::test(start_paused = true)]
            async fn dedupe_by_event_id() {
                conformance::dedupe_by_event_id($make).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn concurrent_duplicates() {
                conformance::concurrent_duplicates($make).await;
            }

            #[tokio::test(start_paused = true)]
            async fn history_ranges() {
                conformance::history_ranges($make).await;
            }

            #[tokio::test(start_paused = true)]
            async fn history_gaps() {
                for kept in [1, 2, 5, 16] {
                    conformance::history_gaps($make_keeping(kept), kept).await;
                }
            }

            #[tokio::test(start_paused = true)]
            async fn epochs() {
                conformance::epochs($make).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn concurrent_publishers() {
                conformance::concurrent_publishers($make).await;
            }

            #[tokio::test(start_paused = true)]
            async fn delivers_in_order_exactly_once() {
                conformance::delivers_in_order_exactly_once($make).await;
            }

            #[tokio::test(start_paused = true)]
            async fn refcounted_subscriptions() {
                conformance::refcounted_subscriptions($make).await;
            }

            #[tokio::test(start_paused = true)]
            async fn unsubscribed_gets_nothing() {
                conformance::unsubscribed_gets_nothing($make).await;
            }

            #[tokio::test(start_paused = true)]
            async fn every_subscriber_gets_everything() {
                conformance::every_subscriber_gets_everything($make).await;
            }

            #[tokio::test(start_paused = true)]
            async fn subscribers_see_only_their_user() {
                conformance::subscribers_see_only_their_user($make).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn run_all() {
                conformance::run_all(|| $make, $make_keeping).await;
            }
        }
    };
}

conformance_tests!(in_memory, InMemoryBroker::default(), keeping);
conformance_tests!(
    latency,
    LatencyBroker::new(InMemoryBroker::default()),
    |n| LatencyBroker::new(keeping(n))
);
