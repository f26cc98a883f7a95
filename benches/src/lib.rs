//! `agentwire-bench`: criterion micro-benchmarks and the load generator for agentwire.
//!
//! What it is not: a test suite. Timings live here, never in pass/fail tests.
//!
//! The library part holds what benchmarks share: sample events and publish bodies of a
//! chosen size.

use agentwire_protocol::{
    AgentThinking, Event, EventEnvelope, EventId, Extra, Seq, ServerFrame, Timestamp,
};

/// An `agent_thinking` event whose `data.thought` is `data_bytes` long.
pub fn sample_event(data_bytes: usize) -> Event {
    Event::new(
        Some("thread-1".parse().expect("valid id")),
        Some("run-1".parse().expect("valid id")),
        AgentThinking {
            thought: "x".repeat(data_bytes),
            step: Some(1),
            extra: Extra::new(),
        },
    )
}

/// The JSON of a delivered frame carrying [`sample_event`].
pub fn sample_frame_json(data_bytes: usize) -> String {
    ServerFrame::Event(EventEnvelope::new(
        Seq(42),
        EventId::generate(),
        Timestamp::now(),
        sample_event(data_bytes),
    ))
    .to_json()
}

/// A `POST /v1/events` body of `events` events for as many users, shaped like agent runs:
/// `agent_started`, thoughts, tool calls with an `arguments` object and their results,
/// `agent_completed`, in turn; each event's `data` is about `data_bytes` of JSON.
pub fn sample_publish_batch(events: usize, data_bytes: usize) -> Vec<u8> {
    let pad = "x".repeat(data_bytes.saturating_sub(90).max(1));
    let items: Vec<serde_json::Value> = (0..events)
        .map(|i| {
            let (ty, data) = match i % 5 {
                0 => (
                    "agent_started",
                    serde_json::json!({"agent_name": "bench", "pad": pad}),
                ),
                1 => (
                    "agent_thinking",
                    serde_json::json!({"thought": pad, "step": i}),
                ),
                2 => (
                    "tool_executing",
                    serde_json::json!({"tool_call_id": "tc1", "tool_name": "search",
                        "arguments": {"q": pad, "max_results": 5}}),
                ),
                3 => (
                    "tool_completed",
                    serde_json::json!({"tool_call_id": "tc1", "tool_name": "search",
                        "result": {"hits": [pad]}, "is_error": false, "duration_ms": 3}),
                ),
                _ => (
                    "agent_completed",
                    serde_json::json!({"result": pad, "duration_ms": 40}),
                ),
            };
            serde_json::json!({"user_id": format!("user-{i}"), "type": ty, "thread_id": "t1",
                "run_id": "r1", "data": data})
        })
        .collect();
    serde_json::to_vec(&items).expect("JSON")
}
