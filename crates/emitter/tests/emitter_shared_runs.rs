//! Issue 15: one run-lifecycle implementation. Emitters check their runs in the broker,
//! with the same guards the publish API sends, so two emitters of one run (two processes
//! embedding agentwire over one broker), or an emitter and an HTTP publisher, see one run
//! state; and a run counts against its emitters' publisher in the broker's bounds.

mod support;

use std::sync::Arc;

use agentwire_emitter::{EmitterError, WebSocketEmitterFactory};
use agentwire_manager::{
    EmitError, InMemoryBroker, ManagerConfig, PublisherId, RunLimit, RunLimits,
    UnifiedWebSocketManager,
};
use agentwire_protocol::{
    AgentStarted, AgentThinking, Event, EventType, RunState, RunViolation, Seq,
};
use serde_json::json;
use support::{ctx, user};

fn manager_over(broker: InMemoryBroker) -> UnifiedWebSocketManager {
    UnifiedWebSocketManager::new(ManagerConfig::default(), Arc::new(broker))
}

/// Two factories over one manager stand for two processes embedding emitters over one
/// broker: the second `agent_started` of a run is refused, whichever emitter sends it —
/// before, each emitter kept its own state and both were accepted.
#[tokio::test]
async fn two_emitters_of_one_run_share_its_state() {
    let manager = UnifiedWebSocketManager::in_memory();
    let first = WebSocketEmitterFactory::new(manager.clone()).create_emitter(ctx("alice", "r1"));
    let second = WebSocketEmitterFactory::new(manager.clone()).create_emitter(ctx("alice", "r1"));
    first.emit_agent_started("a").await.expect("started");
    let err = second
        .emit_agent_started("a again")
        .await
        .expect_err("the run started already");
    assert_eq!(err.violation(), Some(&RunViolation::AlreadyStarted));
    // The second emitter may report on the run the first started: the broker knows it.
    second
        .emit_tool_executing("tc1", "search", json!({}))
        .await
        .expect("the run is going");
    first
        .emit_tool_completed("tc1", "search", json!([]), false, None)
        .await
        .expect("the call the other emitter opened");
    assert_eq!(
        first.run_state().await,
        RunState::Running {
            open_tool_calls: Default::default(),
            open_messages: Default::default(),
        }
    );
    second
        .emit_agent_completed(json!("done"), None)
        .await
        .expect("ends");
    let err = first
        .emit_agent_thinking("late", None)
        .await
        .expect_err("the run ended");
    assert!(matches!(
        err.violation(),
        Some(RunViolation::AfterTerminal { .. })
    ));
    let h = manager
        .history(&user("alice"), Seq::ZERO, 10)
        .await
        .expect("history");
    assert_eq!(h.last_seq, Seq(4));
}

/// What the publish API does — a prepared event guarded for its API key — and what an
/// emitter does meet in one run state.
#[tokio::test]
async fn an_emitter_and_a_guarded_publisher_share_one_run() {
    let manager = UnifiedWebSocketManager::in_memory();
    let alice = user("alice");
    let key = PublisherId::new("key:0123456789abcdef").expect("publisher");
    let started = Event::new(
        Some("t1".parse().expect("thread")),
        Some("r1".parse().expect("run")),
        AgentStarted::default(),
    );
    let prepared = manager
        .prepare_event(&alice, &started, None)
        .expect("valid")
        .guarded(key.clone());
    manager.emit_prepared(&prepared).await.expect("started");
    let emitter = WebSocketEmitterFactory::new(manager.clone()).create_emitter(ctx("alice", "r1"));
    assert_eq!(
        emitter.emit_agent_started("again").await.map(|_| ()),
        Err(EmitterError::Violation(RunViolation::AlreadyStarted))
    );
    emitter
        .emit_agent_thinking("continuing the run", Some(1))
        .await
        .expect("the run the publisher started");
    emitter
        .emit_agent_error("gave up", None, false)
        .await
        .expect("ends");
    let late = Event::new(
        Some("t1".parse().expect("thread")),
        Some("r1".parse().expect("run")),
        AgentThinking {
            thought: "late".into(),
            ..Default::default()
        },
    );
    let prepared = manager
        .prepare_event(&alice, &late, None)
        .expect("valid")
        .guarded(key);
    assert_eq!(
        manager.emit_prepared(&prepared).await.map(|_| ()),
        Err(EmitError::Violation(RunViolation::AfterTerminal {
            event: EventType::AgentThinking,
            ended_with: EventType::AgentError,
        }))
    );
}

/// Runs of a factory's emitters count against its publisher: beyond the publisher's
/// share a new run is refused for good (`Failed`, the event handed back), another
/// publisher's runs are not, and an ended run gives its place back.
#[tokio::test]
async fn a_publishers_runs_are_bounded_by_its_share() {
    let manager = manager_over(InMemoryBroker::default().with_run_limits(RunLimits {
        max_runs_per_owner: 2,
        ..RunLimits::default()
    }));
    let service = WebSocketEmitterFactory::new(manager.clone())
        .with_publisher(PublisherId::new("triage-service").expect("publisher"));
    assert_eq!(service.publisher().as_str(), "triage-service");
    let other = WebSocketEmitterFactory::new(manager.clone());
    let runs: Vec<_> = (0..3)
        .map(|i| service.create_emitter(ctx("alice", &format!("r{i}"))))
        .collect();
    runs[0].emit_agent_started("a").await.expect("fits");
    runs[1].emit_agent_started("a").await.expect("fits");
    match runs[2].emit_agent_started("a").await {
        Err(EmitterError::Failed { source, event, .. }) => {
            assert_eq!(source, EmitError::TooManyRuns(RunLimit::OwnerRuns));
            assert_eq!(event.event_type(), EventType::AgentStarted);
        }
        other => panic!("beyond the share: {other:?}"),
    }
    assert_eq!(runs[2].run_state().await, RunState::NotStarted);
    other
        .create_emitter(ctx("alice", "elsewhere"))
        .emit_agent_started("b")
        .await
        .expect("another publisher's share");
    runs[0]
        .emit_agent_completed(json!(null), None)
        .await
        .expect("ends");
    runs[2]
        .emit_agent_started("a")
        .await
        .expect("room once a run ended");
}
