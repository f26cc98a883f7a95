//! The simulated run of `agentwire_bridge::simulated_run`: the exact event sequence it
//! emits, that the sequence keeps the run lifecycle, its pace on the paused clock, a run
//! started twice, and a run cancelled half-way.

mod support;

use std::time::Duration;

use agentwire_bridge::{
    DEMO_AGENT_NAME, DEMO_THREAD_ID, EmitterError, RUN_DROPPED, SIMULATED_RUN_EVENTS,
    demo_run_context, simulated_run,
};
use agentwire_protocol::{EventData, EventType, RunOutcome, RunState, RunViolation};
use support::{assert_no_more_events, read_events, setup, types, user};
use tokio::time::Instant;

const WAIT: Duration = Duration::from_secs(5);

#[tokio::test(start_paused = true)]
async fn a_simulated_run_emits_exactly_the_documented_sequence() {
    let (bridge, conn) = setup().await;
    let run = demo_run_context(user("alice"));
    let started = Instant::now();
    let answer = simulated_run(&bridge, run.clone(), Duration::ZERO)
        .await
        .expect("the run completes");
    assert_eq!(
        started.elapsed(),
        Duration::ZERO,
        "pace zero never waits, not even on the paused clock"
    );

    let events = read_events(&conn, SIMULATED_RUN_EVENTS.len(), WAIT).await;
    assert_eq!(
        types(&events),
        [
            EventType::AgentStarted,
            EventType::AgentThinking,
            EventType::ToolExecuting,
            EventType::ToolCompleted,
            EventType::ToolExecuting,
            EventType::ToolCompleted,
            EventType::AgentThinking,
            EventType::MessageDelta,
            EventType::MessageDelta,
            EventType::MessageDelta,
            EventType::MessageDelta,
            EventType::MessageDelta,
            EventType::MessageDelta,
            EventType::MessageCompleted,
            EventType::AgentCompleted,
        ]
    );
    assert_eq!(types(&events), SIMULATED_RUN_EVENTS);
    assert_no_more_events(&conn, Duration::from_millis(50)).await;

    for e in &events {
        assert_eq!(e.event.run_id.as_ref(), Some(run.run_id()));
        assert_eq!(
            e.event.thread_id.as_ref().map(|t| t.as_str()),
            Some(DEMO_THREAD_ID)
        );
    }
    match &events[0].event.data {
        EventData::AgentStarted(s) => assert_eq!(s.agent_name.as_deref(), Some(DEMO_AGENT_NAME)),
        other => panic!("{other:?}"),
    }

    // Two tool calls, each closed by its own tool_completed, the second fed by the first.
    let (lookup, lookup_done, track, track_done) =
        match [&events[2], &events[3], &events[4], &events[5]].map(|e| &e.event.data) {
            [
                EventData::ToolExecuting(a),
                EventData::ToolCompleted(b),
                EventData::ToolExecuting(c),
                EventData::ToolCompleted(d),
            ] => (a, b, c, d),
            other => panic!("{other:?}"),
        };
    assert_eq!(lookup.tool_name, "lookup_order");
    assert_eq!(lookup.arguments["order_id"], "1042");
    assert_eq!(lookup_done.tool_call_id, lookup.tool_call_id);
    assert_eq!(track.tool_name, "track_shipment");
    assert_eq!(track_done.tool_call_id, track.tool_call_id);
    assert_ne!(lookup.tool_call_id, track.tool_call_id);
    assert_eq!(track.arguments["carrier"], lookup_done.result["carrier"]);
    assert_eq!(
        track.arguments["tracking_number"],
        lookup_done.result["tracking_number"]
    );
    assert!(!lookup_done.is_error && !track_done.is_error);

    // The answer streams in pieces that join to the text agent_completed carries.
    let streamed: String = events[7..13]
        .iter()
        .map(|e| match &e.event.data {
            EventData::MessageDelta(d) => d.delta.as_str(),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(answer["answer"].as_str(), Some(streamed.as_str()));
    match &events[14].event.data {
        EventData::AgentCompleted(c) => assert_eq!(c.result, answer),
        other => panic!("{other:?}"),
    }
    assert!(
        answer["answer"]
            .as_str()
            .is_some_and(|a| a.contains("#1042") && a.contains("Leipzig")),
        "{answer}"
    );

    // The bridge's own record of the run, and a client replaying the stream, agree that
    // it kept the lifecycle and completed.
    assert_eq!(
        bridge
            .emitter(&run)
            .expect("a finished run's emitter")
            .run_state()
            .await,
        RunState::Finished(RunOutcome::Completed)
    );
    let mut replayed = RunState::default();
    for e in &events {
        replayed
            .apply(&e.event.data)
            .expect("each event fits the run");
    }
    assert_eq!(replayed, RunState::Finished(RunOutcome::Completed));
    assert_eq!(bridge.emitter_metrics().events_total(), 15);
}

#[tokio::test(start_paused = true)]
async fn the_pace_spaces_the_steps_and_times_the_tools() {
    let (bridge, conn) = setup().await;
    // A pace the answer's pieces divide into whole milliseconds (tokio's timer unit).
    let pace = Duration::from_millis(600);
    let started = Instant::now();
    simulated_run(&bridge, demo_run_context(user("alice")), pace)
        .await
        .expect("the run completes");
    assert_eq!(started.elapsed(), pace * 8);

    let events = read_events(&conn, SIMULATED_RUN_EVENTS.len(), WAIT).await;
    let pace_ms = Some(600);
    for e in &events {
        match &e.event.data {
            EventData::ToolCompleted(t) => assert_eq!(t.duration_ms, pace_ms, "{t:?}"),
            EventData::AgentCompleted(c) => assert_eq!(c.duration_ms, Some(8 * 600)),
            _ => {}
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_run_simulated_twice_is_refused_the_second_time() {
    let (bridge, conn) = setup().await;
    let run = demo_run_context(user("alice"));
    simulated_run(&bridge, run.clone(), Duration::ZERO)
        .await
        .expect("first run");
    let again = simulated_run(&bridge, run.clone(), Duration::ZERO)
        .await
        .expect_err("the run already ran");
    assert_eq!(
        again,
        EmitterError::Violation(RunViolation::AfterTerminal {
            event: EventType::AgentStarted,
            ended_with: EventType::AgentCompleted,
        })
    );
    read_events(&conn, SIMULATED_RUN_EVENTS.len(), WAIT).await;
    assert_no_more_events(&conn, Duration::from_millis(50)).await;
    assert_eq!(
        bridge
            .emitter(&run)
            .expect("a finished run's emitter")
            .run_state()
            .await,
        RunState::Finished(RunOutcome::Completed)
    );
}

#[tokio::test(start_paused = true)]
async fn a_simulated_run_cancelled_half_way_ends_with_agent_error() {
    let (bridge, conn) = setup().await;
    let run = demo_run_context(user("alice"));
    let pace = Duration::from_millis(100);
    let task = tokio::spawn({
        let bridge = bridge.clone();
        let run = run.clone();
        async move { simulated_run(&bridge, run, pace).await }
    });
    // Half-way through the first tool: started, thought, tool_executing.
    tokio::time::sleep(pace * 2 + pace / 2).await;
    task.abort();
    assert!(task.await.expect_err("aborted").is_cancelled());

    let events = read_events(&conn, 4, WAIT).await;
    assert_eq!(
        types(&events),
        [
            EventType::AgentStarted,
            EventType::AgentThinking,
            EventType::ToolExecuting,
            EventType::AgentError,
        ]
    );
    match &events[3].event.data {
        EventData::AgentError(e) => assert_eq!(e.code.as_deref(), Some(RUN_DROPPED)),
        other => panic!("{other:?}"),
    }
    assert_no_more_events(&conn, Duration::from_millis(50)).await;
    assert_eq!(
        bridge
            .emitter(&run)
            .expect("a finished run's emitter")
            .run_state()
            .await,
        RunState::Finished(RunOutcome::Failed)
    );
}
