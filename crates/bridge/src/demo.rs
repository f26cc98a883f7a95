//! A simulated agent run: a canned but realistic run reported through the bridge, for
//! demos (the server's demo page, the embedding example) and for trying a client against
//! a live stream without an agent runtime.
//!
//! What it is not: an agent. Its thoughts, tool arguments and results are fixed; only the
//! run's identity and its pace vary. It goes through the same [`AgentRun`] handle and
//! [`AgentRun::run_tool`] wrapper a real runtime uses, so what a client sees is exactly
//! what a real run of that shape emits — `RunState` checks, fresh `tool_call_id`s,
//! measured durations, and `agent_error` from the drop guard if the run is cancelled.
//!
//! [`AgentRun`]: crate::AgentRun

use std::convert::Infallible;
use std::time::Duration;

use agentwire_emitter::{EmitterError, RunContext};
use agentwire_protocol::{EventType, ThreadId, UserId};
use futures_util::StreamExt;
use serde_json::{Value, json};

use crate::bridge::AgentWebSocketBridge;
use crate::tool::ToolError;

/// The `agent_name` a simulated run reports in `agent_started`.
pub const DEMO_AGENT_NAME: &str = "order-assistant";

/// The thread of the runs [`demo_run_context`] makes.
pub const DEMO_THREAD_ID: &str = "demo";

/// A pace at which a person can follow a simulated run in a browser: the time between two
/// steps, and the time each simulated tool takes.
pub const DEFAULT_DEMO_PACE: Duration = Duration::from_millis(700);

/// How many `message_delta` pieces a [`simulated_run`] streams its answer in.
pub const DEMO_ANSWER_PIECES: usize = 6;

/// The event types a [`simulated_run`] emits, in order. A client can count on this shape
/// (e.g. to draw progress); the tests hold the run to it.
pub const SIMULATED_RUN_EVENTS: [EventType; 9 + DEMO_ANSWER_PIECES] = [
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
];

/// A fresh run for `user_id` in the [`DEMO_THREAD_ID`] thread, under a new run id (`run_`
/// and a UUIDv7), so every simulated run is a run of its own.
pub fn demo_run_context(user_id: UserId) -> RunContext {
    let run_id = format!("run_{}", uuid::Uuid::now_v7().simple());
    RunContext::new(
        user_id,
        ThreadId::new(DEMO_THREAD_ID).expect("the demo thread id is a valid id"),
        run_id.parse().expect("run_ and a UUID is a valid id"),
    )
}

/// Performs a simulated run of `run` through `bridge`: a support agent answering "where
/// is my order #1042?". It emits [`SIMULATED_RUN_EVENTS`]: `agent_started`; a thought;
/// two tool calls through [`AgentRun::run_tool`] (`lookup_order`, then `track_shipment`
/// with what the first returned); a second thought; the answer streamed through
/// [`AgentRun::stream_message`] in [`DEMO_ANSWER_PIECES`] `message_delta`s and a
/// `message_completed`; and `agent_completed` carrying the answer, which is also returned.
///
/// `pace` is waited before each step after the first and is how long each tool takes (the
/// answer's pieces share one `pace`), so a run lasts about `8 × pace`. [`Duration::ZERO`] runs it without waiting at all (for
/// tests); [`DEFAULT_DEMO_PACE`] is slow enough to watch. Time is tokio's, so a test on
/// the paused clock runs any pace instantly.
///
/// # Errors
/// [`EmitterError`] when an event is refused or cannot be emitted — typically
/// [`EmitterError::Violation`] when `run` already started. If the run started, it is then
/// ended with `agent_error` by its drop guard (unless it already ended).
///
/// # Cancel safety
/// Cancelling it (dropping the future, aborting its task) ends the run with `agent_error`
/// code [`crate::RUN_DROPPED`], as for any [`AgentRun`] dropped unfinished.
///
/// # Examples
/// ```
/// use agentwire_bridge::{AgentBridgeExt, demo_run_context, simulated_run};
/// use agentwire_manager::UnifiedWebSocketManager;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let bridge = UnifiedWebSocketManager::in_memory().create_agent_bridge();
/// let run = demo_run_context("alice".parse()?);
/// let answer = simulated_run(&bridge, run, std::time::Duration::ZERO).await?;
/// assert!(answer["answer"].as_str().is_some_and(|a| a.contains("#1042")));
/// assert_eq!(bridge.emitter_metrics().events_total(), 15);
/// # Ok(())
/// # }
/// ```
///
/// [`AgentRun`]: crate::AgentRun
/// [`AgentRun::run_tool`]: crate::AgentRun::run_tool
/// [`AgentRun::stream_message`]: crate::AgentRun::stream_message
pub async fn simulated_run(
    bridge: &AgentWebSocketBridge,
    run: RunContext,
    pace: Duration,
) -> Result<Value, EmitterError> {
    let run = bridge.start_run(run, DEMO_AGENT_NAME).await?;

    wait(pace).await;
    run.thinking(
        "The user wants to know where order #1042 is. I'll look the order up first.",
        Some(1),
    )
    .await?;

    wait(pace).await;
    let order = run
        .run_tool(
            "lookup_order",
            json!({ "order_id": "1042" }),
            tool(pace, || {
                json!({
                    "order_id": "1042",
                    "status": "shipped",
                    "items": [{ "sku": "KB-75", "name": "Mechanical keyboard", "quantity": 1 }],
                    "carrier": "DHL",
                    "tracking_number": "JD014600006281230",
                })
            }),
        )
        .await
        .map_err(tool_error)?;

    wait(pace).await;
    let shipment = run
        .run_tool(
            "track_shipment",
            json!({
                "carrier": order["carrier"],
                "tracking_number": order["tracking_number"],
            }),
            tool(pace, || {
                json!({
                    "status": "in_transit",
                    "last_scan": "Leipzig hub",
                    "estimated_delivery": "in 2 days",
                })
            }),
        )
        .await
        .map_err(tool_error)?;

    wait(pace).await;
    run.thinking(
        "It shipped with DHL and was last scanned at the Leipzig hub; delivery is due in \
         2 days. I have what I need to answer.",
        Some(2),
    )
    .await?;

    wait(pace).await;
    let text = format!(
        "Your order #1042 (a mechanical keyboard) shipped with DHL and was last scanned at \
         the {}. It should arrive {}.",
        shipment["last_scan"].as_str().unwrap_or("carrier's hub"),
        shipment["estimated_delivery"].as_str().unwrap_or("soon"),
    );
    let pieces = futures_util::stream::iter(pieces_of(&text, DEMO_ANSWER_PIECES)).then(
        move |piece| async move {
            wait(pace / DEMO_ANSWER_PIECES as u32).await;
            piece
        },
    );
    let streamed = run.stream_message(pieces).await?;
    let answer = json!({ "answer": streamed.text });
    run.complete(answer.clone()).await?;
    Ok(answer)
}

/// `text` cut at word boundaries into exactly `n` non-empty pieces (fewer only when it
/// has fewer words), each keeping its trailing spaces, so the pieces join back to `text`.
fn pieces_of(text: &str, n: usize) -> Vec<String> {
    let words: Vec<&str> = text.split_inclusive(' ').collect();
    let per = words.len().div_ceil(n.max(1)).max(1);
    let mut pieces: Vec<String> = words.chunks(per).map(|c| c.concat()).collect();
    // Chunks of `per` may leave fewer than `n` pieces: split the longest ones on.
    while pieces.len() < n {
        let Some((i, _)) = pieces
            .iter()
            .enumerate()
            .filter(|(_, p)| p.split_inclusive(' ').count() > 1)
            .max_by_key(|(_, p)| p.len())
        else {
            break;
        };
        let words: Vec<&str> = pieces[i].split_inclusive(' ').collect();
        let (a, b) = words.split_at(words.len() / 2);
        let (a, b) = (a.concat(), b.concat());
        pieces[i] = a;
        pieces.insert(i + 1, b);
    }
    pieces
}

async fn wait(pace: Duration) {
    if !pace.is_zero() {
        tokio::time::sleep(pace).await;
    }
}

/// A simulated tool: takes `pace`, then returns what `result` makes. It cannot fail.
async fn tool(pace: Duration, result: impl FnOnce() -> Value) -> Result<Value, Infallible> {
    wait(pace).await;
    Ok(result())
}

/// The emitter error behind a simulated tool's [`ToolError`]: the tools never fail, so the
/// only way a call goes wrong is its report.
fn tool_error(error: ToolError<Value, Infallible>) -> EmitterError {
    match error {
        ToolError::NotRun(e) | ToolError::Unreported { source: e, .. } => e,
        ToolError::Failed(never) => match never {},
        // The simulated tools do not panic; should one ever, the panic is the caller's.
        ToolError::Panicked(payload) => std::panic::resume_unwind(payload),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_is_cut_into_the_pieces_it_joins_back_from() {
        for text in [
            "one",
            "a b",
            "Your order #1042 shipped with DHL and is due in 2 days.",
        ] {
            for n in 1..=8 {
                let pieces = pieces_of(text, n);
                assert_eq!(pieces.concat(), text);
                let words = text.split(' ').count();
                assert_eq!(pieces.len(), n.min(words), "{text:?} in {n}");
                assert!(pieces.iter().all(|p| !p.is_empty()));
            }
        }
    }

    #[test]
    fn demo_runs_get_fresh_valid_ids_in_the_demo_thread() {
        let user: UserId = "alice".parse().expect("id");
        let a = demo_run_context(user.clone());
        let b = demo_run_context(user.clone());
        assert_ne!(a.run_id(), b.run_id());
        assert_eq!(a.user_id(), &user);
        assert_eq!(a.thread_id().as_str(), DEMO_THREAD_ID);
        assert!(a.run_id().as_str().starts_with("run_"));
    }
}
