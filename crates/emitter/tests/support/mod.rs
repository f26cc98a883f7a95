//! Shared helpers of the emitter tests (and, through their own support module, the
//! bridge's): ids, a broker that fails on demand (the manager's `FaultyBroker`), and a
//! reader of a connection's frames.

#![allow(dead_code, unreachable_pub)]

use std::sync::Arc;
use std::time::Duration;

use agentwire_emitter::RunContext;
use agentwire_manager::conformance::{Fault, FaultyBroker};
use agentwire_manager::{Connection, InMemoryBroker, Outbound};
use agentwire_protocol::{EventEnvelope, EventType, ServerFrame, UserId};
use tokio::time::Instant;

pub fn user(id: &str) -> UserId {
    id.parse().expect("valid user id")
}

pub fn ctx(user_id: &str, run: &str) -> RunContext {
    RunContext::new(
        user(user_id),
        "t1".parse().expect("valid thread id"),
        run.parse().expect("valid run id"),
    )
}

/// An in-memory broker whose first `fail_times` publishes meet `fault`; it records when
/// each publish was attempted.
pub type FlakyBroker = FaultyBroker<InMemoryBroker>;

pub fn flaky(fail_times: u64, fault: Fault) -> Arc<FlakyBroker> {
    Arc::new(FaultyBroker::new(
        InMemoryBroker::default(),
        move |attempt| (attempt < fail_times).then(|| fault.clone()),
    ))
}

/// Time between consecutive publish attempts.
pub fn gaps(broker: &FlakyBroker) -> Vec<Duration> {
    broker.attempts().windows(2).map(|w| w[1] - w[0]).collect()
}

/// The types of `events`, in order.
pub fn types(events: &[EventEnvelope]) -> Vec<EventType> {
    events.iter().map(|e| e.event.event_type()).collect()
}

/// Reads the events queued on `conn` until `n` have arrived (skipping
/// `connection_established`), failing after `wait`.
pub async fn read_events(conn: &Connection, n: usize, wait: Duration) -> Vec<EventEnvelope> {
    let mut events = Vec::new();
    let deadline = Instant::now() + wait;
    while events.len() < n {
        let mut frames = Vec::new();
        match tokio::time::timeout_at(deadline, conn.next_frames(&mut frames, 64)).await {
            Ok(Outbound::Frames) => {}
            Ok(Outbound::Close(code)) => panic!("connection closed with {code:?}"),
            Err(_) => panic!("only {} of {n} events arrived: {events:?}", events.len()),
        }
        for frame in frames {
            match ServerFrame::decode(&frame).expect("frame decodes") {
                ServerFrame::Event(e) => events.push(e),
                ServerFrame::ConnectionEstablished(_) => {}
                other => panic!("unexpected frame {other:?}"),
            }
        }
    }
    events
}

/// Asserts that no event (anything but `connection_established`) is queued on `conn`
/// within `wait`.
pub async fn assert_no_more_events(conn: &Connection, wait: Duration) {
    let deadline = Instant::now() + wait;
    loop {
        let mut frames = Vec::new();
        match tokio::time::timeout_at(deadline, conn.next_frames(&mut frames, 64)).await {
            Err(_) => return,
            Ok(Outbound::Close(code)) => panic!("connection closed with {code:?}"),
            Ok(Outbound::Frames) => {
                for frame in frames {
                    match ServerFrame::decode(&frame).expect("frame decodes") {
                        ServerFrame::ConnectionEstablished(_) => {}
                        other => panic!("unexpected frame {other:?}"),
                    }
                }
            }
        }
    }
}
