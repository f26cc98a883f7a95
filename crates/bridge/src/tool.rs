//! The tool wrapper: runs a tool's future between `tool_executing` and `tool_completed`,
//! measuring it, and reports it also when the tool fails or panics.
//!
//! What it is not: a sandbox. A panicking tool is caught so that its call is reported,
//! then handed back to the caller as [`ToolError::Panicked`] with the payload; whether to
//! re-raise it (`std::panic::resume_unwind`) is the caller's decision.

use std::any::Any;
use std::fmt;
use std::future::Future;
use std::panic::AssertUnwindSafe;

use agentwire_emitter::{EmitterError, UnifiedWebSocketEmitter};
use futures_util::FutureExt;
use serde::Serialize;
use serde_json::Value;
use tokio::time::Instant;

use crate::hooks::{ToolCall, ToolOutcome};

/// Why [`crate::AgentWebSocketBridge::run_tool`] did not return the tool's value.
#[non_exhaustive]
pub enum ToolError<T, E> {
    /// `tool_executing` was refused (the run is not running, or is new and the pool is
    /// full) or could not be emitted. The tool was not run. After
    /// [`EmitterError::Unsettled`] the user may see the call begin; the run's terminal
    /// event closes it.
    NotRun(EmitterError),
    /// The tool returned this error; `tool_completed` with `is_error` was emitted.
    Failed(E),
    /// The tool panicked; `tool_completed` with `is_error` was emitted (or, when that
    /// failed too, the failure was logged). The panic payload is inside: re-raise it with
    /// `std::panic::resume_unwind(payload)` to propagate the panic.
    Panicked(Box<dyn Any + Send + 'static>),
    /// The tool finished but `tool_completed` could not be emitted; what the tool returned
    /// is handed back.
    Unreported {
        /// Why the report failed.
        source: EmitterError,
        /// What the tool returned.
        output: Result<T, E>,
    },
}

impl<T, E> ToolError<T, E> {
    /// The panic message, when the tool panicked with a string.
    pub fn panic_message(&self) -> Option<&str> {
        match self {
            ToolError::Panicked(payload) => panic_text(payload.as_ref()),
            _ => None,
        }
    }
}

fn panic_text(payload: &(dyn Any + Send)) -> Option<&str> {
    payload
        .downcast_ref::<&'static str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
}

impl<T, E: fmt::Debug> fmt::Debug for ToolError<T, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ToolError::NotRun(e) => f.debug_tuple("NotRun").field(e).finish(),
            ToolError::Failed(e) => f.debug_tuple("Failed").field(e).finish(),
            ToolError::Panicked(p) => f
                .debug_tuple("Panicked")
                .field(&panic_text(p.as_ref()).unwrap_or("<non-string payload>"))
                .finish(),
            ToolError::Unreported { source, output } => f
                .debug_struct("Unreported")
                .field("source", source)
                .field("output_is_ok", &output.is_ok())
                .finish(),
        }
    }
}

impl<T, E: fmt::Display> fmt::Display for ToolError<T, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ToolError::NotRun(e) => write!(f, "tool not run: {e}"),
            ToolError::Failed(e) => write!(f, "tool failed: {e}"),
            ToolError::Panicked(p) => write!(
                f,
                "tool panicked: {}",
                panic_text(p.as_ref()).unwrap_or("<non-string payload>")
            ),
            ToolError::Unreported { source, .. } => {
                write!(
                    f,
                    "tool finished but tool_completed was not emitted: {source}"
                )
            }
        }
    }
}

impl<T, E: fmt::Debug + fmt::Display> std::error::Error for ToolError<T, E> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ToolError::NotRun(e) | ToolError::Unreported { source: e, .. } => Some(e),
            _ => None,
        }
    }
}

/// Runs `tool` as the call `name(arguments)` of `emitter`'s run.
pub(crate) async fn run_tool<T, E, F>(
    emitter: &UnifiedWebSocketEmitter,
    name: String,
    arguments: Value,
    tool: F,
) -> Result<T, ToolError<T, E>>
where
    F: Future<Output = Result<T, E>>,
    T: Serialize,
    E: fmt::Display,
{
    let call = ToolCall::new(name, arguments);
    crate::bridge::report_tool_started(emitter, &call)
        .await
        .map_err(ToolError::NotRun)?;
    let started = Instant::now();
    let output = AssertUnwindSafe(tool).catch_unwind().await;
    let duration = started.elapsed();
    let (result, is_error) = match &output {
        Ok(Ok(value)) => (
            serde_json::to_value(value)
                .unwrap_or_else(|e| Value::String(format!("unserializable tool result: {e}"))),
            false,
        ),
        Ok(Err(error)) => (Value::String(error.to_string()), true),
        Err(payload) => (
            Value::String(format!(
                "tool panicked: {}",
                panic_text(payload.as_ref()).unwrap_or("<non-string payload>")
            )),
            true,
        ),
    };
    let outcome = ToolOutcome {
        result,
        is_error,
        duration,
    };
    let report = crate::bridge::report_tool_finished(emitter, &call, &outcome).await;
    match (output, report) {
        (Ok(Ok(value)), Ok(())) => Ok(value),
        (Ok(Err(error)), Ok(())) => Err(ToolError::Failed(error)),
        (Ok(output), Err(source)) => Err(ToolError::Unreported { source, output }),
        (Err(payload), report) => {
            if let Err(e) = report {
                tracing::warn!(tool = %call.tool_name, error = %e, "panicked tool call not reported");
            }
            Err(ToolError::Panicked(payload))
        }
    }
}
