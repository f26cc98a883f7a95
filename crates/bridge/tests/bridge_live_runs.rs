//! Issue 15: the bridge never loses a live run. A running run stays in the emitter pool
//! however many other runs come and go and however long it is silent; a finished run
//! leaves the pool at its terminal event; the hooks and an `AgentRun` share one state.
//! On tokio's paused clock (no socket is involved).

mod support;

use std::sync::Arc;
use std::time::Duration;

use agentwire_bridge::{
    AgentBridgeExt, AgentHooks, AgentWebSocketBridge, BridgeConfig, EmitterError, RUN_DROPPED,
    RunContext, ToolCall, ToolError, ToolOutcome,
};
use agentwire_emitter::{PoolConfig, RetryPolicy};
use agentwire_manager::BrokerError;
use agentwire_manager::conformance::{Fault, FaultyBroker};
use agentwire_manager::{
    ConnectOptions, HistoryConfig, InMemoryBroker, ManagerConfig, UnifiedWebSocketManager,
};
use agentwire_protocol::{EventData, EventType, RunViolation};
use serde_json::{Value, json};
use support::{assert_no_more_events, ctx, read_events, setup, types, user};

const WAIT: Duration = Duration::from_secs(5);

/// More runs than the default pool holds (100).
const MANY: usize = 150;

/// Runs `MANY` short runs of another user through the hooks, start to finish.
async fn many_short_runs(bridge: &AgentWebSocketBridge) {
    for i in 0..MANY {
        let run = ctx("bob", &format!("short-{i}"));
        bridge.on_run_started(&run, "a").await.expect("start");
        bridge
            .on_run_finished(&run, &Value::Null, None)
            .await
            .expect("finish");
    }
}

/// What the user sees of a [`LongRun`].
const LONG_RUN_EVENTS: [EventType; 4] = [
    EventType::AgentStarted,
    EventType::ToolExecuting,
    EventType::ToolCompleted,
    EventType::AgentCompleted,
];

/// Alice's run `long`, reported through the hooks, in a tool call that takes as long as
/// the test needs.
struct LongRun {
    run: RunContext,
    call: ToolCall,
}

impl LongRun {
    async fn start(bridge: &AgentWebSocketBridge) -> Self {
        let run = ctx("alice", "long");
        bridge.on_run_started(&run, "a").await.expect("start");
        let call = ToolCall::new("slow_tool", json!({}));
        bridge.on_tool_started(&run, &call).await.expect("tool");
        LongRun { run, call }
    }

    /// Ends the tool call and the run, which must still be known to the bridge.
    async fn finish(&self, bridge: &AgentWebSocketBridge) {
        let outcome = ToolOutcome {
            result: json!("slow result"),
            is_error: false,
            duration: Duration::from_secs(600),
        };
        bridge
            .on_tool_finished(&self.run, &self.call, &outcome)
            .await
            .expect("the call is still open");
        bridge
            .on_run_finished(&self.run, &json!("done"), None)
            .await
            .expect("the run ends for the user");
    }
}

#[tokio::test(start_paused = true)]
async fn a_run_in_a_long_tool_call_outlives_more_runs_than_the_pool_holds() {
    let (bridge, conn) = setup().await;
    let long = LongRun::start(&bridge).await;
    many_short_runs(&bridge).await;

    long.finish(&bridge).await;
    assert_eq!(types(&read_events(&conn, 4, WAIT).await), LONG_RUN_EVENTS);
    assert_no_more_events(&conn, Duration::from_millis(50)).await;
}

#[tokio::test(start_paused = true)]
async fn a_silent_running_run_outlives_the_idle_ttl() {
    // History kept for longer than the run; the user connects once it is over (an idle
    // connection would be closed as stale within the hour). The stall watchdog is off:
    // this run is silent on purpose (the watchdog's own tests: manager_watchdog.rs).
    let manager = UnifiedWebSocketManager::new(
        ManagerConfig {
            run_stall_timeout: Duration::ZERO,
            ..ManagerConfig::default()
        },
        Arc::new(InMemoryBroker::new(HistoryConfig {
            max_age: Duration::from_secs(7200),
            ..HistoryConfig::default()
        })),
    );
    let bridge = manager.create_agent_bridge();
    let long = LongRun::start(&bridge).await;
    // A 50-minute tool call: many cleanup rounds, each past the pool's 300 s idle TTL, and
    // within the broker's run ttl (`RunLimits::ttl`, 1 h after the run's last event), past
    // which the broker forgets any run.
    tokio::time::sleep(Duration::from_secs(3000)).await;

    long.finish(&bridge).await;
    let conn = manager
        .connect_user(user("alice"), ConnectOptions::default())
        .await
        .expect("connect");
    assert_eq!(types(&read_events(&conn, 4, WAIT).await), LONG_RUN_EVENTS);
}

#[tokio::test(start_paused = true)]
async fn finished_runs_leave_the_pool_at_their_terminal_event() {
    let (bridge, _conn) = setup().await;
    let long = LongRun::start(&bridge).await;
    many_short_runs(&bridge).await;
    assert_eq!(bridge.pool().len(), 1, "only the running run is pooled");
    long.finish(&bridge).await;
    assert!(bridge.pool().is_empty());
    assert_eq!(bridge.pool_stats().finished, MANY as u64 + 1);
}

#[tokio::test(start_paused = true)]
async fn the_hooks_and_an_agent_run_share_one_state() {
    let (bridge, conn) = setup().await;
    let run = bridge
        .start_run(ctx("alice", "r0"), "a")
        .await
        .expect("start");
    many_short_runs(&bridge).await;

    // The runtime's engine reports through the hooks on the run the handle started.
    bridge
        .on_thinking(run.context(), "through the hooks", Some(1))
        .await
        .expect("the hooks see the run the handle started");
    bridge
        .on_run_finished(run.context(), &json!("done"), None)
        .await
        .expect("the hooks end it");
    let err = run
        .complete(Value::Null)
        .await
        .expect_err("the handle sees the run ended");
    assert!(matches!(
        err.violation(),
        Some(RunViolation::AfterTerminal {
            ended_with: EventType::AgentCompleted,
            ..
        })
    ));

    let events = read_events(&conn, 3, WAIT).await;
    assert_eq!(
        types(&events),
        [
            EventType::AgentStarted,
            EventType::AgentThinking,
            EventType::AgentCompleted,
        ]
    );
    // No agent_error from the handle's drop guard: the run had ended.
    assert_no_more_events(&conn, Duration::from_millis(50)).await;
}

#[tokio::test(start_paused = true)]
async fn a_late_call_for_a_finished_run_does_not_start_it_again() {
    let (bridge, conn) = setup().await;
    let run = ctx("alice", "r1");
    bridge.on_run_started(&run, "a").await.expect("start");
    bridge
        .on_run_finished(&run, &Value::Null, None)
        .await
        .expect("finish");
    let err = bridge
        .on_run_started(&run, "a")
        .await
        .expect_err("a finished run does not start again");
    assert!(matches!(
        err.violation(),
        Some(RunViolation::AfterTerminal { .. })
    ));
    let err = bridge
        .on_thinking(&run, "late", None)
        .await
        .expect_err("nor report again");
    assert!(matches!(
        err.violation(),
        Some(RunViolation::AfterTerminal { .. })
    ));
    assert_eq!(read_events(&conn, 2, WAIT).await.len(), 2);
    assert_no_more_events(&conn, Duration::from_millis(50)).await;
}

#[tokio::test(start_paused = true)]
async fn a_pool_full_of_running_runs_refuses_a_new_run_with_a_typed_error() {
    let manager = UnifiedWebSocketManager::in_memory();
    let conn = manager
        .connect_user(user("alice"), ConnectOptions::default())
        .await
        .expect("connect");
    let bridge = manager.create_agent_bridge_with(BridgeConfig {
        pool: PoolConfig {
            max_emitters: 2,
            ..PoolConfig::default()
        },
        ..BridgeConfig::default()
    });
    let (r1, r2, r3) = (ctx("alice", "r1"), ctx("alice", "r2"), ctx("alice", "r3"));
    bridge.on_run_started(&r1, "a").await.expect("r1");
    let held = bridge.start_run(r2.clone(), "a").await.expect("r2");

    let err = bridge.on_run_started(&r3, "a").await.expect_err("no room");
    match &err {
        EmitterError::TooManyRuns(full) => assert_eq!(full.limit, 2),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        bridge.start_run(r3.clone(), "a").await,
        Err(EmitterError::TooManyRuns(_))
    ));
    let tool = bridge
        .run_tool(&r3, "search", json!({}), async { Ok::<_, String>(()) })
        .await
        .expect_err("no room");
    assert!(matches!(
        tool,
        ToolError::NotRun(EmitterError::TooManyRuns(_))
    ));
    assert_eq!(bridge.pool_stats().refused, 3);

    // Both live runs go on; once one ends, the new run starts.
    held.thinking("still here", None).await.expect("r2");
    bridge
        .on_run_finished(&r1, &Value::Null, None)
        .await
        .expect("r1 ends");
    bridge.on_run_started(&r3, "a").await.expect("room now");
    let events = read_events(&conn, 5, WAIT).await;
    let runs: Vec<&str> = events
        .iter()
        .map(|e| e.event.run_id.as_ref().map_or("", |r| r.as_str()))
        .collect();
    assert_eq!(runs, ["r1", "r2", "r2", "r1", "r3"]);
    held.complete(Value::Null).await.expect("r2 ends");
}

#[tokio::test(start_paused = true)]
async fn a_run_dropped_while_the_broker_is_away_still_ends_once_it_is_back() {
    // agent_started goes through, then the broker refuses attempts 1 to 6: the thought's
    // two, and two rounds of the drop guard trying to settle it first.
    let broker = Arc::new(FaultyBroker::new(InMemoryBroker::default(), |n| {
        (1..7)
            .contains(&n)
            .then(|| Fault::Refuse(BrokerError::Unavailable("down".into())))
    }));
    let manager = UnifiedWebSocketManager::new(ManagerConfig::default(), broker);
    let conn = manager
        .connect_user(user("alice"), ConnectOptions::default())
        .await
        .expect("connect");
    let bridge = manager.create_agent_bridge_with(BridgeConfig {
        retry: RetryPolicy {
            max_attempts: 2,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(1),
            jitter: false,
        },
        ..BridgeConfig::default()
    });
    let run = bridge
        .start_run(ctx("alice", "r1"), "a")
        .await
        .expect("start");
    run.thinking("halfway", Some(1))
        .await
        .expect_err("the broker is away");
    // The runtime gives up on the run (an early return, a `?`).
    drop(run);

    let events = read_events(&conn, 3, WAIT).await;
    assert_eq!(
        types(&events),
        [
            EventType::AgentStarted,
            EventType::AgentThinking,
            EventType::AgentError,
        ]
    );
    match &events[2].event.data {
        EventData::AgentError(e) => assert_eq!(e.code.as_deref(), Some(RUN_DROPPED)),
        other => panic!("{other:?}"),
    }
    assert_no_more_events(&conn, Duration::from_millis(50)).await;
    assert!(bridge.pool().is_empty(), "the run ended and left the pool");
}

#[tokio::test(start_paused = true)]
async fn a_run_whose_start_is_unsettled_still_ends() {
    // Both attempts of agent_started reach the broker and lose their answers.
    let broker = Arc::new(FaultyBroker::new(InMemoryBroker::default(), |n| {
        (n < 2).then(|| Fault::LoseAnswer(BrokerError::Timeout("reply lost".into())))
    }));
    let manager = UnifiedWebSocketManager::new(ManagerConfig::default(), broker);
    let conn = manager
        .connect_user(user("alice"), ConnectOptions::default())
        .await
        .expect("connect");
    let bridge = manager.create_agent_bridge_with(BridgeConfig {
        retry: RetryPolicy {
            max_attempts: 2,
            jitter: false,
            ..RetryPolicy::default()
        },
        ..BridgeConfig::default()
    });
    let err = bridge
        .start_run(ctx("alice", "r1"), "a")
        .await
        .expect_err("no answer");
    assert!(matches!(err, EmitterError::Unsettled { .. }), "{err:?}");

    // No handle came back, but the user may have seen the run start: it is ended.
    let events = read_events(&conn, 2, WAIT).await;
    assert_eq!(
        types(&events),
        [EventType::AgentStarted, EventType::AgentError]
    );
    match &events[1].event.data {
        EventData::AgentError(e) => assert_eq!(e.code.as_deref(), Some(RUN_DROPPED)),
        other => panic!("{other:?}"),
    }
    assert_no_more_events(&conn, Duration::from_millis(50)).await;
    assert!(bridge.pool().is_empty());
}
