//! `agentwire-bridge`: [`AgentWebSocketBridge`], the integration point between an agent
//! runtime (agent registry, execution engine, tool dispatcher) and the users watching it.
//!
//! What it is: [`AgentBridgeExt::create_agent_bridge`] on the manager; the
//! [`AgentHooks`] interface the runtime reports through (run started, thinking, tool
//! start/end, run finished/failed), which the bridge turns into `agent_started`,
//! `agent_thinking`, `tool_executing`, `tool_completed`, `agent_completed` and
//! `agent_error`; the tool wrapper [`AgentWebSocketBridge::run_tool`]; the streaming
//! helper [`AgentWebSocketBridge::stream_message`], which turns any `Stream` of text into
//! `message_delta` and `message_completed`; the [`AgentRun`] handle; and [`simulated_run`], a canned run for demos and examples.
//!
//! What it is not: an agent runtime. It only reports what a runtime does, through the
//! emitter pool beneath it.
//!
//! Key decisions:
//! - Every call is checked against the run's lifecycle by the broker, atomically with its
//!   append (through the pooled emitter the run shares with every caller, whose events
//!   carry run guards), so a call out of order — or one that contradicts what another
//!   publisher of the run, the publish API included, did — is a typed
//!   [`EmitterError::Violation`], never a malformed stream.
//! - The hooks and [`AgentRun`] share one state: the pool keeps a run's emitter from
//!   `agent_started` to its terminal event and never evicts it meanwhile, however many
//!   runs come and go and however long a tool call takes. A finished run leaves the pool
//!   and is remembered as finished. When the pool is full of live runs a new run is
//!   refused ([`EmitterError::TooManyRuns`]) rather than a live one dropped.
//! - A report whose outcome is unknown (the broker may have it) is kept by the run's
//!   emitter, unsettled, and published again under the same `event_id` by the run's next
//!   report or the pool's cleanup task — so a runtime must not report it again.
//! - A run still ends when its handle is dropped or cancelled unfinished: the drop guard
//!   hands `agent_error` to a task on the runtime captured at start, never blocking in
//!   `Drop` and never panicking when the runtime is shutting down.
//! - A tool that panics is caught ([`futures_util::FutureExt::catch_unwind`]), reported as
//!   a failed call, and handed back as [`ToolError::Panicked`] with its payload rather
//!   than re-raised: one broken tool should not tear down the run, and a caller who wants
//!   the panic re-raises it with `std::panic::resume_unwind`.

mod bridge;
mod demo;
mod hooks;
mod run;
mod stream;
mod tool;

pub use agentwire_emitter::{EmitterError, RunContext, TooManyRuns};
pub use bridge::{AgentBridgeExt, AgentWebSocketBridge, BridgeConfig};
pub use demo::{
    DEFAULT_DEMO_PACE, DEMO_AGENT_NAME, DEMO_ANSWER_PIECES, DEMO_THREAD_ID, SIMULATED_RUN_EVENTS,
    demo_run_context, simulated_run,
};
pub use hooks::{AgentHooks, RunFailure, ToolCall, ToolOutcome};
pub use run::{AgentRun, RUN_DROPPED, RUN_PANICKED};
pub use stream::StreamedMessage;
pub use tool::ToolError;
