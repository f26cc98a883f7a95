//! The emitter against a manager with live connections: every event method reaches all
//! connections of its user and no one else's, in order, and the run lifecycle is enforced.

mod support;

use std::time::Duration;

use agentwire_emitter::{EmitterError, WebSocketEmitterFactory};
use agentwire_manager::{ConnectOptions, EmitError, ManagerConfig, UnifiedWebSocketManager};
use agentwire_protocol::{EventData, EventType, RunState, RunViolation};
use serde_json::json;
use support::{assert_no_more_events, ctx, read_events, user};

const WAIT: Duration = Duration::from_secs(5);

#[tokio::test]
async fn every_event_reaches_each_connection_of_its_user_and_nobody_else() {
    let manager = UnifiedWebSocketManager::in_memory();
    let alice_1 = manager
        .connect_user(user("alice"), ConnectOptions::default())
        .await
        .expect("connect");
    let alice_2 = manager
        .connect_user(user("alice"), ConnectOptions::default())
        .await
        .expect("connect");
    let bob = manager
        .connect_user(user("bob"), ConnectOptions::default())
        .await
        .expect("connect");

    let factory = WebSocketEmitterFactory::new(manager.clone());
    let emitter = factory.create_emitter(ctx("alice", "r1").with_request_id("req-7"));
    emitter.emit_agent_started("triage").await.expect("started");
    emitter
        .emit_agent_thinking("Reading the ticket", Some(1))
        .await
        .expect("thinking");
    emitter
        .emit_tool_executing("tc1", "search", json!({"q": "refund"}))
        .await
        .expect("executing");
    emitter
        .emit_custom("progress", json!({"pct": 50}))
        .await
        .expect("custom");
    emitter
        .emit_tool_completed(
            "tc1",
            "search",
            json!(["a"]),
            false,
            Some(Duration::from_millis(12)),
        )
        .await
        .expect("completed");
    let last = emitter
        .emit_agent_completed(json!("refund issued"), Some(Duration::from_millis(340)))
        .await
        .expect("agent completed");
    assert_eq!(last.seq.get(), 6);

    let want = [
        EventType::AgentStarted,
        EventType::AgentThinking,
        EventType::ToolExecuting,
        EventType::Custom,
        EventType::ToolCompleted,
        EventType::AgentCompleted,
    ];
    for conn in [&alice_1, &alice_2] {
        let events = read_events(conn, want.len(), WAIT).await;
        let types: Vec<EventType> = events.iter().map(|e| e.event.event_type()).collect();
        assert_eq!(types, want);
        let seqs: Vec<u64> = events.iter().map(|e| e.seq.get()).collect();
        assert_eq!(seqs, [1, 2, 3, 4, 5, 6]);
        for e in &events {
            assert_eq!(e.event.run_id.as_ref().map(|r| r.as_str()), Some("r1"));
            assert_eq!(e.event.thread_id.as_ref().map(|t| t.as_str()), Some("t1"));
        }
        match &events[4].event.data {
            EventData::ToolCompleted(t) => {
                assert_eq!(t.tool_call_id, "tc1");
                assert_eq!(t.duration_ms, Some(12));
                assert!(!t.is_error);
            }
            other => panic!("{other:?}"),
        }
        assert_no_more_events(conn, Duration::from_millis(50)).await;
    }
    assert_no_more_events(&bob, Duration::from_millis(50)).await;

    let m = emitter.metrics();
    assert_eq!(m.events_total(), 6);
    assert_eq!(m.events(EventType::ToolExecuting), 1);
    assert_eq!((m.attempts, m.retries, m.failures), (6, 0, 0));
    assert!(m.last_emit.is_some());
    assert_eq!(factory.metrics(), m);
    assert_eq!(manager.get_stats().events_emitted, 6);
}

#[tokio::test]
async fn agent_error_ends_the_run_and_reaches_the_user() {
    let manager = UnifiedWebSocketManager::in_memory();
    let conn = manager
        .connect_user(user("alice"), ConnectOptions::default())
        .await
        .expect("connect");
    let emitter = WebSocketEmitterFactory::new(manager).create_emitter(ctx("alice", "r1"));
    emitter.emit_agent_started("a").await.expect("started");
    emitter
        .emit_agent_error("model unavailable", Some("upstream".into()), true)
        .await
        .expect("error");
    let events = read_events(&conn, 2, WAIT).await;
    match &events[1].event.data {
        EventData::AgentError(e) => {
            assert_eq!(e.message, "model unavailable");
            assert_eq!(e.code.as_deref(), Some("upstream"));
            assert!(e.retryable);
        }
        other => panic!("{other:?}"),
    }
    let err = emitter
        .emit_agent_completed(json!(null), None)
        .await
        .expect_err("after terminal");
    assert_eq!(
        err.violation(),
        Some(&RunViolation::AfterTerminal {
            event: EventType::AgentCompleted,
            ended_with: EventType::AgentError,
        })
    );
}

#[tokio::test]
async fn violations_are_typed_publish_nothing_and_leave_the_state_alone() {
    let manager = UnifiedWebSocketManager::in_memory();
    let conn = manager
        .connect_user(user("alice"), ConnectOptions::default())
        .await
        .expect("connect");
    let factory = WebSocketEmitterFactory::new(manager.clone());
    let emitter = factory.create_emitter(ctx("alice", "r1"));

    let err = emitter
        .emit_agent_thinking("before start", None)
        .await
        .expect_err("not started");
    assert_eq!(
        err.violation(),
        Some(&RunViolation::NotStarted {
            event: EventType::AgentThinking
        })
    );
    assert_eq!(emitter.run_state().await, RunState::NotStarted);

    emitter.emit_agent_started("a").await.expect("started");
    let before = emitter.run_state().await;
    let err = emitter
        .emit_tool_completed("nope", "search", json!(null), false, None)
        .await
        .expect_err("unknown call");
    assert!(matches!(
        err,
        EmitterError::Violation(RunViolation::UnknownToolCall { .. })
    ));
    let err = emitter
        .emit_agent_started("again")
        .await
        .expect_err("twice");
    assert_eq!(err.violation(), Some(&RunViolation::AlreadyStarted));
    assert_eq!(emitter.run_state().await, before);

    let events = read_events(&conn, 1, WAIT).await;
    assert_eq!(events[0].event.event_type(), EventType::AgentStarted);
    assert_no_more_events(&conn, Duration::from_millis(50)).await;
    assert_eq!(emitter.metrics().violations, 3);
    assert_eq!(factory.metrics().violations, 3);
    assert_eq!(manager.get_stats().events_emitted, 1);
}

#[tokio::test]
async fn an_event_the_manager_refuses_is_not_retried_and_changes_nothing() {
    let config = ManagerConfig {
        max_event_bytes: 200,
        ..ManagerConfig::default()
    };
    let manager = UnifiedWebSocketManager::new(
        config,
        std::sync::Arc::new(agentwire_manager::InMemoryBroker::default()),
    );
    let emitter = WebSocketEmitterFactory::new(manager).create_emitter(ctx("alice", "r1"));
    emitter.emit_agent_started("a").await.expect("started");
    let err = emitter
        .emit_agent_thinking("x".repeat(500), None)
        .await
        .expect_err("too large");
    assert!(
        matches!(err, EmitterError::Refused(EmitError::TooLarge { .. })),
        "{err:?}"
    );
    let m = emitter.metrics();
    assert_eq!((m.attempts, m.failures), (1, 1));
    assert!(matches!(
        emitter.run_state().await,
        RunState::Running { .. }
    ));
}

#[tokio::test]
async fn a_streamed_message_reaches_the_user_piece_by_piece() {
    let manager = UnifiedWebSocketManager::in_memory();
    let conn = manager
        .connect_user(user("alice"), ConnectOptions::default())
        .await
        .expect("connect");
    let emitter = WebSocketEmitterFactory::new(manager).create_emitter(ctx("alice", "r1"));
    emitter.emit_agent_started("a").await.expect("started");
    for piece in ["Three ", "flights ", "found."] {
        emitter
            .emit_message_delta("m1", piece)
            .await
            .expect("delta");
    }
    // Completing a message that is not open is refused; the open one completes.
    let err = emitter
        .emit_message_completed("m2", None)
        .await
        .expect_err("m2 never streamed");
    assert_eq!(
        err.violation(),
        Some(&RunViolation::UnknownMessage {
            message_id: "m2".into()
        })
    );
    emitter
        .emit_message_completed("m1", Some("Three flights found.".into()))
        .await
        .expect("completed");
    emitter
        .emit_agent_completed(json!(null), None)
        .await
        .expect("run completed");
    let events = read_events(&conn, 6, WAIT).await;
    let text: String = events
        .iter()
        .filter_map(|e| match &e.event.data {
            EventData::MessageDelta(d) => Some(d.delta.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(text, "Three flights found.");
    match &events[4].event.data {
        EventData::MessageCompleted(m) => {
            assert_eq!(m.message_id, "m1");
            assert_eq!(m.text.as_deref(), Some("Three flights found."));
        }
        other => panic!("{other:?}"),
    }
    assert_no_more_events(&conn, Duration::from_millis(50)).await;
}
