//! `AgentRun`: the handle of one started run, whose drop guard ends the run with
//! `agent_error` when it is dropped or cancelled before finishing.
//!
//! What it is not: blocking. `Drop` never waits: it hands the `agent_error` event to a
//! task spawned on the runtime handle captured when the run started. When that runtime is
//! shutting down the task is dropped unrun — the event is lost with the runtime, logged,
//! and nothing panics. While the broker is away, the task waits (up to
//! `RUN_END_PATIENCE`, 300 s) for the run's earlier unsettled event to go through first,
//! so the run still ends, in order.

use std::future::Future;
use std::time::Duration;

use agentwire_emitter::{EmitterError, RunContext, UnifiedWebSocketEmitter};
use agentwire_manager::Accepted;
use serde::Serialize;
use serde_json::Value;
use tokio::runtime::Handle;
use tokio::time::Instant;

use crate::stream::StreamedMessage;
use crate::tool::ToolError;

/// `agent_error` code of a run whose handle was dropped unfinished.
pub const RUN_DROPPED: &str = "run_dropped";

/// `agent_error` code of a run whose handle was dropped while its thread panicked.
pub const RUN_PANICKED: &str = "run_panicked";

/// A started run. End it with [`Self::complete`] or [`Self::fail`]; dropping it
/// unfinished — an early return, a `?`, a panic, a cancelled task — emits `agent_error`
/// with code [`RUN_DROPPED`] or [`RUN_PANICKED`] instead, so the user always sees the
/// run end.
#[derive(Debug)]
#[must_use = "a run dropped unfinished ends with agent_error"]
pub struct AgentRun {
    emitter: UnifiedWebSocketEmitter,
    started: Instant,
    runtime: Option<Handle>,
    finished: bool,
}

impl AgentRun {
    pub(crate) fn new(emitter: UnifiedWebSocketEmitter) -> Self {
        AgentRun {
            emitter,
            started: Instant::now(),
            runtime: Handle::try_current().ok(),
            finished: false,
        }
    }

    /// The run.
    pub fn context(&self) -> &RunContext {
        self.emitter.context()
    }

    /// The run's emitter, for events this handle has no method for (`custom`, payloads
    /// with extra fields).
    pub fn emitter(&self) -> &UnifiedWebSocketEmitter {
        &self.emitter
    }

    /// How long the run has been going.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Emits `agent_thinking`.
    ///
    /// # Errors
    /// See [`UnifiedWebSocketEmitter::emit`].
    pub async fn thinking(
        &self,
        thought: impl Into<String>,
        step: Option<u64>,
    ) -> Result<Accepted, EmitterError> {
        self.emitter.emit_agent_thinking(thought, step).await
    }

    /// Runs a tool in this run; see [`crate::AgentWebSocketBridge::run_tool`].
    ///
    /// # Errors
    /// See [`crate::AgentWebSocketBridge::run_tool`].
    pub async fn run_tool<T, E, F>(
        &self,
        name: impl Into<String>,
        arguments: Value,
        tool: F,
    ) -> Result<T, ToolError<T, E>>
    where
        F: Future<Output = Result<T, E>>,
        T: Serialize,
        E: std::fmt::Display,
    {
        crate::tool::run_tool(&self.emitter, name.into(), arguments, tool).await
    }

    /// Streams an answer in this run; see [`crate::AgentWebSocketBridge::stream_message`].
    ///
    /// # Errors
    /// See [`crate::AgentWebSocketBridge::stream_message`].
    pub async fn stream_message<S>(&self, pieces: S) -> Result<StreamedMessage, EmitterError>
    where
        S: futures_util::Stream<Item = String>,
    {
        crate::stream::stream_message(&self.emitter, pieces).await
    }

    /// Ends the run with `agent_completed`, carrying `result` and the run's duration.
    ///
    /// # Errors
    /// See [`UnifiedWebSocketEmitter::emit`]. When the event could not be emitted the
    /// drop guard still tries to end the run with `agent_error`. After
    /// [`EmitterError::Unsettled`] the broker may have `agent_completed`: the guard's emit
    /// settles it first, and then the run has ended — the user sees it complete, once.
    pub async fn complete(mut self, result: Value) -> Result<Accepted, EmitterError> {
        let outcome = self
            .emitter
            .emit_agent_completed(result, Some(self.elapsed()))
            .await;
        self.finished = outcome.is_ok();
        outcome
    }

    /// Ends the run with `agent_error`.
    ///
    /// # Errors
    /// See [`UnifiedWebSocketEmitter::emit`]. When the event could not be emitted the
    /// drop guard tries again in the background (and after
    /// [`EmitterError::Unsettled`] settles this one first).
    pub async fn fail(
        mut self,
        message: impl Into<String>,
        code: Option<String>,
        retryable: bool,
    ) -> Result<Accepted, EmitterError> {
        let outcome = self
            .emitter
            .emit_agent_error(message, code, retryable)
            .await;
        self.finished = outcome.is_ok();
        outcome
    }
}

impl Drop for AgentRun {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        let panicking = std::thread::panicking();
        let (code, message) = if panicking {
            (RUN_PANICKED, "the agent run panicked before it finished")
        } else {
            (
                RUN_DROPPED,
                "the agent run was dropped or cancelled before it finished",
            )
        };
        let ctx = self.emitter.context();
        let Some(runtime) = &self.runtime else {
            tracing::error!(user = %ctx.user_id(), run = %ctx.run_id(), code,
                "run dropped unfinished outside a tokio runtime; agent_error not emitted");
            return;
        };
        // Spawning never blocks and never panics; on a runtime that is shutting down the
        // task is dropped without running.
        runtime.spawn(end_dropped_run(self.emitter.clone(), code, message));
    }
}

/// How long a drop guard keeps trying to end its run while an earlier event of the run is
/// unsettled (the broker is away): it tries again every `max_delay` of the emitter's retry
/// policy (at least 100 ms) until this much time has passed, then logs that the run was
/// left running.
const RUN_END_PATIENCE: Duration = Duration::from_secs(300);

/// Ends a run dropped unfinished with `agent_error` `code`: the drop guard's task.
async fn end_dropped_run(
    emitter: UnifiedWebSocketEmitter,
    code: &'static str,
    message: &'static str,
) {
    let ctx = emitter.context();
    // Never a busy loop, whatever the retry policy says.
    let pause = emitter
        .retry_policy()
        .max_delay
        .max(Duration::from_millis(100));
    let give_up = Instant::now() + RUN_END_PATIENCE;
    loop {
        match emitter
            .emit_agent_error(message, Some(code.to_owned()), false)
            .await
        {
            Ok(_) => {
                tracing::warn!(user = %ctx.user_id(), run = %ctx.run_id(), code,
                    "run ended by its drop guard");
                return;
            }
            // The run ended meanwhile by another path (the hooks, or a terminal event
            // that was unsettled and is now settled): nothing to do.
            Err(EmitterError::Violation(_)) => return,
            // Kept by the emitter; the pool's cleanup task settles it.
            Err(EmitterError::Unsettled { .. }) => {
                tracing::warn!(user = %ctx.user_id(), run = %ctx.run_id(), code,
                    "drop guard's agent_error unsettled; the pool will publish it again");
                return;
            }
            // An earlier event must reach the broker first, and it is away: wait for it.
            Err(EmitterError::EarlierUnsettled { .. }) if Instant::now() + pause < give_up => {
                tokio::time::sleep(pause).await;
            }
            Err(e) => {
                tracing::error!(user = %ctx.user_id(), run = %ctx.run_id(), error = %e,
                    "drop guard could not emit agent_error; the run is left running");
                return;
            }
        }
    }
}
