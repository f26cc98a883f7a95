//! `AgentHooks`: what an agent runtime reports about its runs, as an `async-trait`
//! interface, and the value types its methods take.
//!
//! What it is not: tied to WebSockets. An agent registry, execution engine or tool
//! dispatcher holds an `Arc<dyn AgentHooks>`; the bridge is the implementation that
//! emits, and a test can pass one that records.

use std::time::Duration;

use agentwire_emitter::{EmitterError, RunContext};
use async_trait::async_trait;
use serde_json::Value;

/// One tool call: a fresh id, the tool's name and its arguments.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolCall {
    /// Identifies the call within its run (`tc_` and a UUIDv7).
    pub tool_call_id: String,
    /// The tool's name.
    pub tool_name: String,
    /// The arguments it is called with.
    pub arguments: Value,
}

impl ToolCall {
    /// A call of `tool_name` with `arguments`, under a fresh `tool_call_id`.
    pub fn new(tool_name: impl Into<String>, arguments: Value) -> Self {
        ToolCall {
            tool_call_id: format!("tc_{}", uuid::Uuid::now_v7().simple()),
            tool_name: tool_name.into(),
            arguments,
        }
    }
}

/// How a tool call ended.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolOutcome {
    /// What the tool returned, or its error when `is_error`.
    pub result: Value,
    /// Whether the tool failed (returned an error or panicked).
    pub is_error: bool,
    /// How long the call took.
    pub duration: Duration,
}

/// Why a run failed, for the user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunFailure {
    /// What went wrong.
    pub message: String,
    /// A machine-readable code, when there is one.
    pub code: Option<String>,
    /// Whether running again may succeed.
    pub retryable: bool,
}

impl RunFailure {
    /// A failure with `message`, no code, not retryable.
    pub fn new(message: impl Into<String>) -> Self {
        RunFailure {
            message: message.into(),
            code: None,
            retryable: false,
        }
    }
}

/// What an agent runtime reports about a run. The agent registry reports a run starting,
/// the execution engine its reasoning and its end, the tool dispatcher each tool call.
///
/// The contract, which [`crate::AgentWebSocketBridge`] keeps and its tests check:
/// - Calls for one run follow its lifecycle: `on_run_started` first, each
///   `on_tool_finished` after the `on_tool_started` of the same call, exactly one of
///   `on_run_finished`/`on_run_failed` last. A call out of order is answered with
///   [`EmitterError::Violation`] and reports nothing — also a call after the run ended,
///   which never starts the run again.
/// - Every call for a run, from any part of the runtime, sees the same run state, for as
///   long as the run is going: a running run is not forgotten however many other runs
///   come and go or however long it is quiet.
/// - A new run may be refused with [`EmitterError::TooManyRuns`] when the bridge holds as
///   many live runs as it may; a running run is never refused for that.
/// - A call answered with [`EmitterError::Unsettled`] may have reached the user; the
///   bridge keeps its event and publishes it again under the same id before anything
///   else of the run. Do not report it again (that would be a second event); go on with
///   the run. [`EmitterError::EarlierUnsettled`] means this report was not made because
///   an earlier one is still unsettled: make it again later.
#[async_trait]
pub trait AgentHooks: Send + Sync {
    /// The run began (`agent_started`).
    ///
    /// # Errors
    /// The run already started (or ended), the bridge holds as many live runs as it may
    /// ([`EmitterError::TooManyRuns`]), or the event could not be emitted.
    async fn on_run_started(&self, run: &RunContext, agent_name: &str) -> Result<(), EmitterError>;

    /// A step of the agent's reasoning (`agent_thinking`).
    ///
    /// # Errors
    /// The run is not running, or the event could not be emitted.
    async fn on_thinking(
        &self,
        run: &RunContext,
        thought: &str,
        step: Option<u64>,
    ) -> Result<(), EmitterError>;

    /// A tool call began (`tool_executing`).
    ///
    /// # Errors
    /// The run is not running, the call id is already open, or the event could not be
    /// emitted.
    async fn on_tool_started(&self, run: &RunContext, call: &ToolCall) -> Result<(), EmitterError>;

    /// A tool call ended (`tool_completed`).
    ///
    /// # Errors
    /// The call is not open, or the event could not be emitted.
    async fn on_tool_finished(
        &self,
        run: &RunContext,
        call: &ToolCall,
        outcome: &ToolOutcome,
    ) -> Result<(), EmitterError>;

    /// The run finished with `result` (`agent_completed`).
    ///
    /// # Errors
    /// The run is not running, or the event could not be emitted.
    async fn on_run_finished(
        &self,
        run: &RunContext,
        result: &Value,
        duration: Option<Duration>,
    ) -> Result<(), EmitterError>;

    /// The run failed (`agent_error`).
    ///
    /// # Errors
    /// The run is not running, or the event could not be emitted.
    async fn on_run_failed(
        &self,
        run: &RunContext,
        failure: &RunFailure,
    ) -> Result<(), EmitterError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tool_calls_get_fresh_valid_ids() {
        let a = ToolCall::new("search", Value::Null);
        let b = ToolCall::new("search", Value::Null);
        assert_ne!(a.tool_call_id, b.tool_call_id);
        assert!(a.tool_call_id.starts_with("tc_"));
        assert!(agentwire_protocol::validate_id(&a.tool_call_id).is_ok());
    }
}
