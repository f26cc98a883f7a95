//! Issue 15: an event whose emit failed or was cancelled with an unknown outcome (the
//! broker may have taken it) is settled under the same `event_id` and with the same run
//! transition — never shown twice, never leaving the run state behind. On tokio's paused
//! clock against a broker that loses answers (`FaultyBroker`).

mod support;

use std::sync::Arc;
use std::time::Duration;

use agentwire_emitter::{
    EmitterError, RetryPolicy, UnifiedWebSocketEmitter, WebSocketEmitterFactory,
};
use agentwire_manager::conformance::{Fault, FaultyBroker};
use agentwire_manager::{
    BrokerError, ConnectOptions, Connection, InMemoryBroker, ManagerConfig, UnifiedWebSocketManager,
};
use agentwire_protocol::{EventEnvelope, EventType, RunState};
use serde_json::json;
use support::{FlakyBroker, assert_no_more_events, ctx, read_events, types, user};

const WAIT: Duration = Duration::from_secs(5);

/// Two attempts per event, 100 ms apart: a plan that faults attempts 1 and 2 fails the
/// second event for good.
const TWO_ATTEMPTS: RetryPolicy = RetryPolicy {
    max_attempts: 2,
    base_delay: Duration::from_millis(100),
    max_delay: Duration::from_millis(100),
    jitter: false,
};

fn lost() -> Fault {
    Fault::LoseAnswer(BrokerError::Timeout("reply lost".into()))
}

fn down() -> Fault {
    Fault::Refuse(BrokerError::Unavailable("down".into()))
}

/// A broker whose publish attempts numbered in `faulty` (from 0) meet `fault`.
fn broker(faulty: std::ops::Range<u64>, fault: Fault) -> Arc<FlakyBroker> {
    Arc::new(FaultyBroker::new(InMemoryBroker::default(), move |n| {
        faulty.contains(&n).then(|| fault.clone())
    }))
}

async fn setup(
    broker: Arc<FlakyBroker>,
    retry: RetryPolicy,
) -> (UnifiedWebSocketManager, Connection, UnifiedWebSocketEmitter) {
    let manager = UnifiedWebSocketManager::new(ManagerConfig::default(), broker);
    let conn = manager
        .connect_user(user("alice"), ConnectOptions::default())
        .await
        .expect("connect");
    let emitter = WebSocketEmitterFactory::new(manager.clone())
        .with_retry(retry)
        .create_emitter(ctx("alice", "r1"));
    (manager, conn, emitter)
}

#[tokio::test(start_paused = true)]
async fn after_lost_answers_the_next_emit_settles_the_event_once() {
    // agent_started goes through; both attempts of tool_executing reach the broker and
    // lose their answers.
    let (_, conn, emitter) = setup(broker(1..3, lost()), TWO_ATTEMPTS).await;
    emitter.emit_agent_started("a").await.expect("started");
    let err = emitter
        .emit_tool_executing("tc1", "search", json!({}))
        .await
        .expect_err("both answers lost");
    let EmitterError::Unsettled {
        event_id, attempts, ..
    } = &err
    else {
        panic!("{err:?}")
    };
    assert_eq!(*attempts, 2);
    assert_eq!(
        emitter.run_state().await,
        RunState::Running {
            open_tool_calls: Default::default(),
            open_messages: Default::default(),
        }
    );

    let events = complete_the_call(&emitter, &conn).await;
    assert_eq!(&events[1].event_id, event_id, "the id of the failed emit");
    assert_eq!(emitter.metrics().settled, 1);
}

/// Emits `tool_completed` for the call `tc1`, whose `tool_executing` is unsettled, and
/// returns what the user got: `agent_started`, `tool_executing` once, `tool_completed`.
async fn complete_the_call(
    emitter: &UnifiedWebSocketEmitter,
    conn: &Connection,
) -> Vec<EventEnvelope> {
    emitter
        .emit_tool_completed("tc1", "search", json!(["hit"]), false, None)
        .await
        .expect("tool_completed closes the call the unsettled tool_executing opened");
    let events = read_events(conn, 3, WAIT).await;
    assert_eq!(
        types(&events),
        [
            EventType::AgentStarted,
            EventType::ToolExecuting,
            EventType::ToolCompleted
        ]
    );
    assert_no_more_events(conn, Duration::from_millis(50)).await;
    events
}

/// Cancels a `tool_executing` whose first attempt meets `fault` while it waits to retry,
/// then checks that the next emit counts it: `tool_completed` closes the call and the
/// user sees each event once.
async fn a_cancelled_emit_is_settled_by_the_next_call(fault: Fault) {
    let (_, conn, emitter) = setup(broker(1..2, fault), TWO_ATTEMPTS).await;
    emitter.emit_agent_started("a").await.expect("started");
    let cancelled = tokio::time::timeout(
        Duration::from_millis(50),
        emitter.emit_tool_executing("tc1", "search", json!({})),
    )
    .await;
    assert!(cancelled.is_err(), "cancelled during the backoff");
    complete_the_call(&emitter, &conn).await;
}

#[tokio::test(start_paused = true)]
async fn an_emit_cancelled_after_the_broker_took_it_is_settled_by_the_next_call() {
    a_cancelled_emit_is_settled_by_the_next_call(lost()).await;
}

#[tokio::test(start_paused = true)]
async fn an_emit_cancelled_before_the_broker_took_it_is_published_by_the_next_call() {
    a_cancelled_emit_is_settled_by_the_next_call(down()).await;
}

#[tokio::test(start_paused = true)]
async fn settle_publishes_a_lost_answer_again_under_its_event_id_and_moves_the_run_on() {
    let (manager, conn, emitter) = setup(broker(0..2, lost()), TWO_ATTEMPTS).await;
    let err = emitter
        .emit_agent_started("a")
        .await
        .expect_err("both answers lost");
    let EmitterError::Unsettled { event_id, .. } = err else {
        panic!("{err:?}")
    };
    assert_eq!(emitter.unsettled().await, Some(event_id.clone()));
    assert_eq!(emitter.run_state().await, RunState::NotStarted);

    let accepted = emitter
        .settle()
        .await
        .expect("settled")
        .expect("there was an unsettled event");
    assert_eq!(accepted.event_id, event_id);
    assert!(
        accepted.duplicate,
        "the broker had it from the first attempt"
    );
    assert!(matches!(
        emitter.run_state().await,
        RunState::Running { .. }
    ));
    assert_eq!(emitter.unsettled().await, None);
    assert_eq!(emitter.settle().await, Ok(None), "nothing left to settle");

    let events = read_events(&conn, 1, WAIT).await;
    assert_eq!(events[0].event_id, event_id);
    assert_no_more_events(&conn, Duration::from_millis(50)).await;
    assert_eq!(
        manager.get_stats().events_emitted,
        0,
        "every answer it saw was a duplicate"
    );
    let m = emitter.metrics();
    assert_eq!((m.failures, m.settled), (1, 1));
    assert_eq!(m.events(EventType::AgentStarted), 1);
}

#[tokio::test(start_paused = true)]
async fn settle_publishes_an_event_the_broker_never_took() {
    let (_, conn, emitter) = setup(broker(0..2, down()), TWO_ATTEMPTS).await;
    let err = emitter
        .emit_agent_started("a")
        .await
        .expect_err("the broker is down");
    assert!(matches!(err, EmitterError::Unsettled { .. }), "{err:?}");
    let accepted = emitter
        .settle()
        .await
        .expect("settled")
        .expect("there was an unsettled event");
    assert!(!accepted.duplicate);
    assert_eq!(
        read_events(&conn, 1, WAIT).await[0].event_id,
        accepted.event_id
    );
    assert_no_more_events(&conn, Duration::from_millis(50)).await;
}

#[tokio::test(start_paused = true)]
async fn a_new_emit_is_refused_while_the_earlier_event_cannot_be_settled() {
    // agent_started goes through; then the broker is down for 4 attempts: the 2 of
    // "one" and the 2 that "two" spends trying to settle "one" first.
    let (_, conn, emitter) = setup(broker(1..5, down()), TWO_ATTEMPTS).await;
    emitter.emit_agent_started("a").await.expect("started");
    let err = emitter
        .emit_agent_thinking("one", None)
        .await
        .expect_err("down");
    let EmitterError::Unsettled { event_id: one, .. } = err else {
        panic!("{err:?}")
    };
    let err = emitter
        .emit_agent_thinking("two", None)
        .await
        .expect_err("one is still unsettled");
    match &err {
        EmitterError::EarlierUnsettled {
            event_id, attempts, ..
        } => {
            assert_eq!(event_id, &one);
            assert_eq!(*attempts, 2);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        emitter.unsettled().await,
        Some(one.clone()),
        "two is not kept"
    );

    emitter
        .emit_agent_thinking("two", None)
        .await
        .expect("the broker is back: one, then two");
    let events = read_events(&conn, 3, WAIT).await;
    assert_eq!(events[1].event_id, one);
    let thoughts: Vec<String> = events[1..]
        .iter()
        .map(|e| match &e.event.data {
            agentwire_protocol::EventData::AgentThinking(t) => t.thought.clone(),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(thoughts, ["one", "two"]);
    assert_no_more_events(&conn, Duration::from_millis(50)).await;
}

#[tokio::test(start_paused = true)]
async fn a_permanent_error_leaves_nothing_to_settle() {
    let (_, conn, emitter) = setup(
        broker(0..1, Fault::Refuse(BrokerError::Rejected("no".into()))),
        TWO_ATTEMPTS,
    )
    .await;
    let err = emitter.emit_agent_started("a").await.expect_err("rejected");
    assert!(
        matches!(err, EmitterError::Failed { attempts: 1, .. }),
        "{err:?}"
    );
    assert_eq!(emitter.unsettled().await, None);
    assert_eq!(emitter.settle().await, Ok(None));
    assert_eq!(emitter.run_state().await, RunState::NotStarted);

    emitter
        .emit_agent_started("a")
        .await
        .expect("a new event, published once");
    assert_eq!(read_events(&conn, 1, WAIT).await.len(), 1);
    assert_no_more_events(&conn, Duration::from_millis(50)).await;
}
