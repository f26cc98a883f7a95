//! `agentwire-bench`: criterion micro-benchmarks and the load generator for agentwire.
//!
//! What it is not: a test suite. Timings live here, never in pass/fail tests.
//!
//! The library part holds what benchmarks share: sample events of a chosen size.

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
    ServerFrame::Event(EventEnvelope {
        seq: Seq(42),
        event_id: EventId::generate(),
        ts: Timestamp::now(),
        event: sample_event(data_bytes),
    })
    .to_json()
}
