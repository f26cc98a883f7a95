//! Retry against a broker that fails N times then succeeds, on tokio's paused clock:
//! attempts counted, delays growing exponentially within the jitter bound, one event
//! delivered, permanent errors failing at once, and exhausted retries leaving the event
//! unsettled.

mod support;

use std::time::Duration;

use agentwire_emitter::{EmitterError, RetryPolicy, WebSocketEmitterFactory};
use agentwire_manager::conformance::Fault;
use agentwire_manager::{
    BrokerError, ConnectOptions, EmitError, ManagerConfig, UnifiedWebSocketManager,
};
use agentwire_protocol::{EventType, RunState};
use support::{FlakyBroker, assert_no_more_events, ctx, flaky, gaps, read_events, user};

const POLICY: RetryPolicy = RetryPolicy {
    max_attempts: 5,
    base_delay: Duration::from_millis(100),
    max_delay: Duration::from_millis(300),
    jitter: true,
};

fn manager_over(broker: std::sync::Arc<FlakyBroker>) -> UnifiedWebSocketManager {
    UnifiedWebSocketManager::new(ManagerConfig::default(), broker)
}

/// Whether `got` is the nominal delay plus jitter of at most the same again (with a
/// little slack for the float arithmetic of the backoff).
fn within_jitter(got: Duration, nominal: Duration) -> bool {
    let slack = Duration::from_millis(1);
    got + slack >= nominal && got <= nominal * 2 + slack
}

#[tokio::test(start_paused = true)]
async fn transient_failures_are_retried_with_backoff_and_deliver_once() {
    let broker = flaky(3, Fault::Refuse(BrokerError::Unavailable("down".into())));
    let manager = manager_over(broker.clone());
    let conn = manager
        .connect_user(user("alice"), ConnectOptions::default())
        .await
        .expect("connect");
    let factory = WebSocketEmitterFactory::new(manager).with_retry(POLICY);
    let emitter = factory.create_emitter(ctx("alice", "r1"));

    let accepted = emitter
        .emit_agent_started("a")
        .await
        .expect("after retries");
    assert_eq!(accepted.seq.get(), 1);

    assert_eq!(broker.attempts().len(), 4);
    let gaps = gaps(&broker);
    for (gap, nominal) in gaps.iter().zip([100, 200, 300].map(Duration::from_millis)) {
        assert!(within_jitter(*gap, nominal), "{gaps:?}");
    }
    let m = emitter.metrics();
    assert_eq!((m.attempts, m.retries, m.failures), (4, 3, 0));
    assert_eq!(m.events(EventType::AgentStarted), 1);
    assert_eq!(factory.metrics().retries, 3);

    let events = read_events(&conn, 1, Duration::from_secs(5)).await;
    assert_eq!(events[0].event.event_type(), EventType::AgentStarted);
    assert_no_more_events(&conn, Duration::from_millis(100)).await;
}

#[tokio::test(start_paused = true)]
async fn a_retry_after_an_unseen_success_reuses_the_event_id_and_is_not_duplicated() {
    let broker = flaky(1, Fault::LoseAnswer(BrokerError::Timeout("slow".into())));
    let manager = manager_over(broker.clone());
    let conn = manager
        .connect_user(user("alice"), ConnectOptions::default())
        .await
        .expect("connect");
    let emitter = WebSocketEmitterFactory::new(manager.clone())
        .with_retry(POLICY)
        .create_emitter(ctx("alice", "r1"));

    let accepted = emitter.emit_agent_started("a").await.expect("retried");
    assert!(
        accepted.duplicate,
        "the retry is answered by the first acceptance"
    );
    assert_eq!(broker.attempts().len(), 2);

    let events = read_events(&conn, 1, Duration::from_secs(5)).await;
    assert_eq!(events[0].event_id, accepted.event_id);
    assert_no_more_events(&conn, Duration::from_millis(100)).await;
    assert_eq!(manager.get_stats().events_deduplicated, 1);
    // The run advanced exactly once.
    emitter
        .emit_agent_thinking("next", None)
        .await
        .expect("running");
}

#[tokio::test(start_paused = true)]
async fn a_permanent_error_fails_at_once() {
    let broker = flaky(1, Fault::Refuse(BrokerError::Rejected("no".into())));
    let emitter = WebSocketEmitterFactory::new(manager_over(broker.clone()))
        .with_retry(POLICY)
        .create_emitter(ctx("alice", "r1"));
    let start = tokio::time::Instant::now();
    let err = emitter
        .emit_agent_started("a")
        .await
        .expect_err("permanent");
    match &err {
        EmitterError::Failed {
            attempts,
            source,
            event,
            ..
        } => {
            assert_eq!(*attempts, 1);
            assert_eq!(event.event_type(), EventType::AgentStarted, "handed back");
            assert_eq!(
                source,
                &EmitError::Broker(BrokerError::Rejected("no".into()))
            );
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(start.elapsed(), Duration::ZERO);
    assert_eq!(broker.attempts().len(), 1);
    let m = emitter.metrics();
    assert_eq!((m.attempts, m.retries, m.failures), (1, 0, 1));
    assert_eq!(emitter.run_state().await, RunState::NotStarted);
    assert_eq!(
        emitter.unsettled().await,
        None,
        "refused for good: nothing kept"
    );
}

#[tokio::test(start_paused = true)]
async fn exhausted_retries_leave_the_event_unsettled_and_the_state_alone() {
    let broker = flaky(100, Fault::Refuse(BrokerError::Unavailable("down".into())));
    let emitter = WebSocketEmitterFactory::new(manager_over(broker.clone()))
        .with_retry(RetryPolicy {
            max_attempts: 3,
            jitter: false,
            ..POLICY
        })
        .create_emitter(ctx("alice", "r1"));
    let start = tokio::time::Instant::now();
    let err = emitter
        .emit_agent_started("a")
        .await
        .expect_err("exhausted");
    match &err {
        EmitterError::Unsettled {
            attempts,
            event_id,
            source,
        } => {
            assert_eq!(*attempts, 3);
            assert!(source.is_transient());
            assert_eq!(emitter.unsettled().await.as_ref(), Some(event_id));
        }
        other => panic!("{other:?}"),
    }
    // 100 ms, then 200 ms, without jitter.
    let waited = start.elapsed();
    assert!(
        within_jitter(waited, Duration::from_millis(300)) && waited < Duration::from_millis(302),
        "{waited:?}"
    );
    assert_eq!(broker.attempts().len(), 3);
    let m = emitter.metrics();
    assert_eq!((m.attempts, m.retries, m.failures), (3, 2, 1));
    assert_eq!(emitter.run_state().await, RunState::NotStarted);
}
