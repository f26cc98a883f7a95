//! The bridge through a run's whole lifecycle: tools that succeed, fail and panic; runs
//! that are dropped, cancelled or panic before finishing; calls out of order; and a
//! runtime shutting down under a run.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use agentwire_bridge::{
    AgentBridgeExt, AgentHooks, EmitterError, RUN_DROPPED, RUN_PANICKED, RunFailure, ToolCall,
    ToolError, ToolOutcome,
};
use agentwire_manager::UnifiedWebSocketManager;
use agentwire_protocol::{EventData, EventEnvelope, EventType, RunViolation};
use serde_json::{Value, json};
use support::{assert_no_more_events, ctx, read_events, setup, types};

const WAIT: Duration = Duration::from_secs(5);

fn tool_ids(events: &[EventEnvelope]) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| match &e.event.data {
            EventData::ToolExecuting(t) => Some(t.tool_call_id.clone()),
            EventData::ToolCompleted(t) => Some(t.tool_call_id.clone()),
            _ => None,
        })
        .collect()
}

fn completed(event: &EventEnvelope) -> &agentwire_protocol::ToolCompleted {
    match &event.event.data {
        EventData::ToolCompleted(t) => t,
        other => panic!("not tool_completed: {other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn a_run_with_a_tool_emits_the_five_critical_events_in_order() {
    let (bridge, conn) = setup().await;
    let run = bridge
        .start_run(ctx("alice", "r1"), "triage")
        .await
        .expect("start");
    run.thinking("I should search", Some(1))
        .await
        .expect("thinking");
    let found: Value = run
        .run_tool("search", json!({"q": "rust"}), async {
            tokio::time::sleep(Duration::from_millis(250)).await;
            Ok::<_, String>(json!(["hit"]))
        })
        .await
        .expect("tool ok");
    assert_eq!(found, json!(["hit"]));
    run.complete(json!("answer")).await.expect("complete");

    let events = read_events(&conn, 5, WAIT).await;
    assert_eq!(
        types(&events),
        [
            EventType::AgentStarted,
            EventType::AgentThinking,
            EventType::ToolExecuting,
            EventType::ToolCompleted,
            EventType::AgentCompleted,
        ]
    );
    let ids = tool_ids(&events);
    assert_eq!(
        ids[0], ids[1],
        "tool_completed names the call tool_executing opened"
    );
    let done = completed(&events[3]);
    assert_eq!(done.duration_ms, Some(250));
    assert!(!done.is_error);
    assert_eq!(done.result, json!(["hit"]));
    match &events[4].event.data {
        EventData::AgentCompleted(c) => assert_eq!(c.duration_ms, Some(250)),
        other => panic!("{other:?}"),
    }
    assert_no_more_events(&conn, Duration::from_millis(50)).await;
    assert_eq!(bridge.emitter_metrics().events_total(), 5);
}

#[tokio::test(start_paused = true)]
async fn an_erroring_tool_is_reported_as_failed_and_the_run_goes_on() {
    let (bridge, conn) = setup().await;
    let run = bridge
        .start_run(ctx("alice", "r1"), "a")
        .await
        .expect("start");
    let err = run
        .run_tool("fetch", json!({}), async {
            tokio::time::sleep(Duration::from_millis(40)).await;
            Err::<Value, _>("404 not found")
        })
        .await
        .expect_err("tool error");
    assert!(matches!(err, ToolError::Failed("404 not found")), "{err:?}");
    let second = run
        .run_tool("fetch", json!({}), async { Ok::<_, String>(1) })
        .await
        .expect("a second call works");
    assert_eq!(second, 1);
    run.complete(Value::Null).await.expect("complete");

    let events = read_events(&conn, 6, WAIT).await;
    let failed = completed(&events[2]);
    assert!(failed.is_error);
    assert_eq!(failed.result, json!("404 not found"));
    assert_eq!(failed.duration_ms, Some(40));
    let ids = tool_ids(&events);
    assert_eq!(ids.len(), 4);
    assert_ne!(ids[0], ids[2], "each call gets a fresh tool_call_id");
    assert_eq!(events[5].event.event_type(), EventType::AgentCompleted);
}

#[tokio::test(start_paused = true)]
async fn a_panicking_tool_is_reported_and_handed_back_not_re_raised() {
    let (bridge, conn) = setup().await;
    let run = bridge
        .start_run(ctx("alice", "r1"), "a")
        .await
        .expect("start");
    let err = run
        .run_tool("explode", json!({}), async {
            tokio::time::sleep(Duration::from_millis(5)).await;
            if true {
                panic!("tool blew up");
            }
            Ok::<u8, String>(0)
        })
        .await
        .expect_err("panicked");
    assert_eq!(err.panic_message(), Some("tool blew up"));
    assert!(matches!(err, ToolError::Panicked(_)));
    run.complete(Value::Null).await.expect("the run survives");

    let events = read_events(&conn, 4, WAIT).await;
    let done = completed(&events[2]);
    assert!(done.is_error);
    assert_eq!(done.result, json!("tool panicked: tool blew up"));
    assert_eq!(done.duration_ms, Some(5));
    assert_eq!(events[3].event.event_type(), EventType::AgentCompleted);
}

#[tokio::test(start_paused = true)]
async fn a_dropped_run_ends_with_agent_error_from_its_guard() {
    let (bridge, conn) = setup().await;
    let run = bridge
        .start_run(ctx("alice", "r1"), "a")
        .await
        .expect("start");
    drop(run);
    let events = read_events(&conn, 2, WAIT).await;
    match &events[1].event.data {
        EventData::AgentError(e) => {
            assert_eq!(e.code.as_deref(), Some(RUN_DROPPED));
            assert!(!e.retryable);
        }
        other => panic!("{other:?}"),
    }
    // The run is over for everyone reporting on it.
    let err = bridge
        .on_thinking(&ctx("alice", "r1"), "late", None)
        .await
        .expect_err("after terminal");
    assert!(matches!(
        err.violation(),
        Some(RunViolation::AfterTerminal {
            ended_with: EventType::AgentError,
            ..
        })
    ));
    assert_no_more_events(&conn, Duration::from_millis(50)).await;
}

#[tokio::test(start_paused = true)]
async fn a_finished_run_emits_nothing_when_dropped() {
    let (bridge, conn) = setup().await;
    let run = bridge
        .start_run(ctx("alice", "r1"), "a")
        .await
        .expect("start");
    run.fail("model unavailable", Some("upstream".into()), true)
        .await
        .expect("fail");
    let events = read_events(&conn, 2, WAIT).await;
    assert_eq!(events[1].event.event_type(), EventType::AgentError);
    assert_no_more_events(&conn, Duration::from_millis(50)).await;
}

#[tokio::test(start_paused = true)]
async fn a_cancelled_run_ends_with_agent_error() {
    let (bridge, conn) = setup().await;
    let task = tokio::spawn({
        let bridge = bridge.clone();
        async move {
            let run = bridge
                .start_run(ctx("alice", "r1"), "a")
                .await
                .expect("start");
            run.run_tool("slow", json!({}), async {
                tokio::time::sleep(Duration::from_secs(3600)).await;
                Ok::<_, String>(())
            })
            .await
            .ok();
            run.complete(Value::Null).await.ok();
        }
    });
    let first = read_events(&conn, 2, WAIT).await;
    assert_eq!(
        types(&first),
        [EventType::AgentStarted, EventType::ToolExecuting]
    );
    task.abort();
    assert!(task.await.expect_err("aborted").is_cancelled());
    let rest = read_events(&conn, 1, WAIT).await;
    match &rest[0].event.data {
        EventData::AgentError(e) => assert_eq!(e.code.as_deref(), Some(RUN_DROPPED)),
        other => panic!("{other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn a_run_that_panics_ends_with_agent_error() {
    let (bridge, conn) = setup().await;
    let task = tokio::spawn({
        let bridge = bridge.clone();
        async move {
            let run = bridge
                .start_run(ctx("alice", "r1"), "a")
                .await
                .expect("start");
            let err = run
                .run_tool("explode", json!({}), async {
                    if true {
                        panic!("deep bug");
                    }
                    Ok::<u8, String>(0)
                })
                .await
                .expect_err("panicked");
            // This caller chooses to re-raise; the run's guard sees the unwinding.
            if let ToolError::Panicked(payload) = err {
                std::panic::resume_unwind(payload);
            }
        }
    });
    assert!(task.await.expect_err("panicked").is_panic());
    let events = read_events(&conn, 4, WAIT).await;
    assert_eq!(
        types(&events),
        [
            EventType::AgentStarted,
            EventType::ToolExecuting,
            EventType::ToolCompleted,
            EventType::AgentError,
        ]
    );
    match &events[3].event.data {
        EventData::AgentError(e) => assert_eq!(e.code.as_deref(), Some(RUN_PANICKED)),
        other => panic!("{other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn calls_out_of_order_are_typed_violations_and_emit_nothing() {
    let (bridge, conn) = setup().await;
    let run = ctx("alice", "r1");
    let hooks: Arc<dyn AgentHooks> = Arc::new(bridge.clone());

    let err = hooks
        .on_thinking(&run, "too early", None)
        .await
        .expect_err("not started");
    assert!(matches!(
        err.violation(),
        Some(RunViolation::NotStarted { .. })
    ));

    let ran = AtomicBool::new(false);
    let err = bridge
        .run_tool(&run, "search", json!({}), async {
            ran.store(true, Ordering::SeqCst);
            Ok::<_, String>(())
        })
        .await
        .expect_err("not started");
    assert!(matches!(err, ToolError::NotRun(EmitterError::Violation(_))));
    assert!(
        !ran.load(Ordering::SeqCst),
        "a tool is not run outside a running run"
    );

    hooks.on_run_started(&run, "a").await.expect("start");
    let err = hooks.on_run_started(&run, "a").await.expect_err("twice");
    assert_eq!(err.violation(), Some(&RunViolation::AlreadyStarted));

    let call = ToolCall::new("search", json!({}));
    let outcome = ToolOutcome {
        result: Value::Null,
        is_error: false,
        duration: Duration::from_millis(1),
    };
    let err = hooks
        .on_tool_finished(&run, &call, &outcome)
        .await
        .expect_err("never started");
    assert!(matches!(
        err.violation(),
        Some(RunViolation::UnknownToolCall { .. })
    ));
    hooks
        .on_tool_started(&run, &call)
        .await
        .expect("tool start");
    let err = hooks
        .on_tool_started(&run, &call)
        .await
        .expect_err("same id twice");
    assert!(matches!(
        err.violation(),
        Some(RunViolation::DuplicateToolCall { .. })
    ));
    hooks
        .on_tool_finished(&run, &call, &outcome)
        .await
        .expect("tool end");
    hooks
        .on_run_failed(&run, &RunFailure::new("gave up"))
        .await
        .expect("failed");
    let err = hooks
        .on_run_finished(&run, &Value::Null, None)
        .await
        .expect_err("second terminal event");
    assert!(matches!(
        err.violation(),
        Some(RunViolation::AfterTerminal { .. })
    ));

    let events = read_events(&conn, 4, WAIT).await;
    assert_eq!(
        types(&events),
        [
            EventType::AgentStarted,
            EventType::ToolExecuting,
            EventType::ToolCompleted,
            EventType::AgentError,
        ]
    );
    assert_no_more_events(&conn, Duration::from_millis(50)).await;
    assert_eq!(bridge.emitter_metrics().violations, 6);
}

#[test]
fn a_run_dropped_while_its_runtime_shuts_down_does_not_panic() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let started = Arc::new(tokio::sync::Notify::new());
    runtime.spawn({
        let started = started.clone();
        async move {
            let bridge = UnifiedWebSocketManager::in_memory().create_agent_bridge();
            let _run = bridge
                .start_run(ctx("alice", "r1"), "a")
                .await
                .expect("start");
            started.notify_one();
            // Never finishes: the runtime's shutdown drops this task, and with it the run.
            std::future::pending::<()>().await;
        }
    });
    runtime.block_on(started.notified());
    runtime.shutdown_timeout(Duration::from_secs(5));

    // Also a current-thread runtime dropped outright.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let run = runtime.block_on(async {
        UnifiedWebSocketManager::in_memory()
            .create_agent_bridge()
            .start_run(ctx("alice", "r2"), "a")
            .await
            .expect("start")
    });
    drop(runtime);
    drop(run);
}
