//! `AgentWebSocketBridge`, the [`AgentBridgeExt`] trait that creates it from a manager,
//! and the bridge's implementation of [`AgentHooks`].
//!
//! What it is not: an owner of runs. It looks each run's emitter up in its pool, so
//! whichever part of the runtime reports on a run shares that run's state; the pool keeps
//! a live run's emitter until the run's terminal event.

use std::future::Future;
use std::time::Duration;

use agentwire_emitter::{
    EmitterError, EmitterMetrics, PoolConfig, PoolStats, RetryPolicy, RunContext, TooManyRuns,
    UnifiedWebSocketEmitter, WebSocketEmitterFactory, WebSocketEmitterPool,
};
use agentwire_manager::UnifiedWebSocketManager;
use async_trait::async_trait;
use serde::Serialize;
use serde_json::Value;

use crate::hooks::{AgentHooks, RunFailure, ToolCall, ToolOutcome};
use crate::run::AgentRun;
use crate::stream::StreamedMessage;
use crate::tool::ToolError;

/// Configuration of a bridge: its emitter pool and the retry policy of its emitters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BridgeConfig {
    /// Bounds of the emitter pool (default: 100 live runs, a new run refused beyond;
    /// finished runs leave at their terminal event).
    pub pool: PoolConfig,
    /// Retries of each emitter (default 5 attempts, 100 ms to 2 s, with jitter).
    pub retry: RetryPolicy,
}

/// Creates bridges from a manager: `manager.create_agent_bridge()`.
pub trait AgentBridgeExt {
    /// A bridge over this manager with the default [`BridgeConfig`].
    fn create_agent_bridge(&self) -> AgentWebSocketBridge {
        self.create_agent_bridge_with(BridgeConfig::default())
    }

    /// A bridge over this manager with `config`.
    fn create_agent_bridge_with(&self, config: BridgeConfig) -> AgentWebSocketBridge;
}

impl AgentBridgeExt for UnifiedWebSocketManager {
    fn create_agent_bridge_with(&self, config: BridgeConfig) -> AgentWebSocketBridge {
        let factory = WebSocketEmitterFactory::new(self.clone()).with_retry(config.retry);
        AgentWebSocketBridge {
            pool: WebSocketEmitterPool::new(factory, config.pool),
        }
    }
}

/// The integration point between an agent runtime and the users watching it.
///
/// Two ways in, over the same pooled emitters and run states:
/// - [`AgentHooks`], for a runtime whose registry, engine and dispatcher pass run
///   contexts around;
/// - [`Self::start_run`], which returns an [`AgentRun`] handle that ends its run with
///   `agent_error` if it is dropped unfinished.
///
/// [`Self::run_tool`] wraps a tool call in `tool_executing`/`tool_completed`.
///
/// A cheap handle: clones share the pool.
///
/// # Examples
/// ```
/// use agentwire_bridge::{AgentBridgeExt, RunContext};
/// use agentwire_manager::UnifiedWebSocketManager;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let bridge = UnifiedWebSocketManager::in_memory().create_agent_bridge();
/// let run = bridge
///     .start_run(RunContext::new("alice".parse()?, "t1".parse()?, "r1".parse()?), "triage")
///     .await?;
/// run.thinking("Looking the order up", Some(1)).await?;
/// let order = run
///     .run_tool("lookup_order", serde_json::json!({"id": 7}), async {
///         Ok::<_, std::io::Error>(serde_json::json!({"status": "shipped"}))
///     })
///     .await?;
/// run.complete(order).await?;
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct AgentWebSocketBridge {
    pool: WebSocketEmitterPool,
}

impl AgentWebSocketBridge {
    /// The emitter of `run`, shared with every other caller reporting on it (see
    /// [`WebSocketEmitterPool::get_emitter`]).
    ///
    /// # Errors
    /// [`TooManyRuns`] when `run` is new and the pool is full of live runs.
    pub fn emitter(&self, run: &RunContext) -> Result<UnifiedWebSocketEmitter, TooManyRuns> {
        self.pool.get_emitter(run)
    }

    /// The emitter pool.
    pub fn pool(&self) -> &WebSocketEmitterPool {
        &self.pool
    }

    /// The manager events go through.
    pub fn manager(&self) -> &UnifiedWebSocketManager {
        self.pool.factory().manager()
    }

    /// The summed counters of every emitter of this bridge.
    pub fn emitter_metrics(&self) -> EmitterMetrics {
        self.pool.factory().metrics()
    }

    /// The pool's size and evictions.
    pub fn pool_stats(&self) -> PoolStats {
        self.pool.stats()
    }

    /// Starts `run`: emits `agent_started` and returns the run's handle.
    ///
    /// # Errors
    /// [`EmitterError`]: the run already started ([`EmitterError::Violation`]), the pool is
    /// full of live runs ([`EmitterError::TooManyRuns`]), or `agent_started` could not be
    /// emitted. Then no handle exists. After [`EmitterError::Unsettled`] the user may
    /// have seen the run start, so it is ended as a handle dropped unfinished is: with
    /// `agent_error` code [`crate::RUN_DROPPED`], after `agent_started`, once the broker
    /// takes them.
    pub async fn start_run(
        &self,
        run: RunContext,
        agent_name: impl Into<String>,
    ) -> Result<AgentRun, EmitterError> {
        let emitter = self.pool.get_emitter(&run)?;
        match emitter.emit_agent_started(agent_name).await {
            Ok(_) => Ok(AgentRun::new(emitter)),
            Err(e @ EmitterError::Unsettled { .. }) => {
                // Its drop guard ends the run, settling agent_started first.
                drop(AgentRun::new(emitter));
                Err(e)
            }
            Err(e) => Err(e),
        }
    }

    /// Runs `tool` as a call of `name` with `arguments` in `run`: emits `tool_executing`
    /// under a fresh `tool_call_id`, awaits the tool, and emits `tool_completed` with the
    /// measured duration and the tool's value — or its error, with `is_error`, when it
    /// returns an error or panics.
    ///
    /// # Errors
    /// [`ToolError`]: not run (the run is not running, or is new and the pool is full),
    /// failed, panicked (the payload is handed back, not re-raised), or finished without
    /// its report.
    ///
    /// # Cancel safety
    /// Cancelled while the tool runs, the call stays open and no `tool_completed` is
    /// emitted; the run's terminal event still closes it for the user.
    pub async fn run_tool<T, E, F>(
        &self,
        run: &RunContext,
        name: impl Into<String>,
        arguments: Value,
        tool: F,
    ) -> Result<T, ToolError<T, E>>
    where
        F: Future<Output = Result<T, E>>,
        T: Serialize,
        E: std::fmt::Display,
    {
        let emitter = self
            .pool
            .get_emitter(run)
            .map_err(|e| ToolError::NotRun(e.into()))?;
        crate::tool::run_tool(&emitter, name.into(), arguments, tool).await
    }

    /// Streams an answer in `run` as the agent writes it: every non-empty piece of
    /// `pieces` (a model's token stream, say) becomes a `message_delta` of a fresh
    /// `message_id`, in order, and the end of the stream a `message_completed`. Returns
    /// the message id and the whole text, which the caller may also put in
    /// `agent_completed`.
    ///
    /// # Errors
    /// See [`UnifiedWebSocketEmitter::emit`]: the first piece that could not be emitted
    /// stops the stream (the rest is not read).
    ///
    /// # Cancel safety
    /// Cancelled midway, the message stays open: the pieces emitted so far reach the user,
    /// and the run's terminal event closes the message for them.
    pub async fn stream_message<S>(
        &self,
        run: &RunContext,
        pieces: S,
    ) -> Result<StreamedMessage, EmitterError>
    where
        S: futures_util::Stream<Item = String>,
    {
        let emitter = self.pool.get_emitter(run)?;
        crate::stream::stream_message(&emitter, pieces).await
    }
}

pub(crate) async fn report_tool_started(
    emitter: &UnifiedWebSocketEmitter,
    call: &ToolCall,
) -> Result<(), EmitterError> {
    emitter
        .emit_tool_executing(
            call.tool_call_id.clone(),
            call.tool_name.clone(),
            call.arguments.clone(),
        )
        .await
        .map(drop)
}

pub(crate) async fn report_tool_finished(
    emitter: &UnifiedWebSocketEmitter,
    call: &ToolCall,
    outcome: &ToolOutcome,
) -> Result<(), EmitterError> {
    emitter
        .emit_tool_completed(
            call.tool_call_id.clone(),
            call.tool_name.clone(),
            outcome.result.clone(),
            outcome.is_error,
            Some(outcome.duration),
        )
        .await
        .map(drop)
}

#[async_trait]
impl AgentHooks for AgentWebSocketBridge {
    async fn on_run_started(&self, run: &RunContext, agent_name: &str) -> Result<(), EmitterError> {
        self.emitter(run)?
            .emit_agent_started(agent_name)
            .await
            .map(drop)
    }

    async fn on_thinking(
        &self,
        run: &RunContext,
        thought: &str,
        step: Option<u64>,
    ) -> Result<(), EmitterError> {
        self.emitter(run)?
            .emit_agent_thinking(thought, step)
            .await
            .map(drop)
    }

    async fn on_tool_started(&self, run: &RunContext, call: &ToolCall) -> Result<(), EmitterError> {
        report_tool_started(&self.emitter(run)?, call).await
    }

    async fn on_tool_finished(
        &self,
        run: &RunContext,
        call: &ToolCall,
        outcome: &ToolOutcome,
    ) -> Result<(), EmitterError> {
        report_tool_finished(&self.emitter(run)?, call, outcome).await
    }

    async fn on_run_finished(
        &self,
        run: &RunContext,
        result: &Value,
        duration: Option<Duration>,
    ) -> Result<(), EmitterError> {
        self.emitter(run)?
            .emit_agent_completed(result.clone(), duration)
            .await
            .map(drop)
    }

    async fn on_run_failed(
        &self,
        run: &RunContext,
        failure: &RunFailure,
    ) -> Result<(), EmitterError> {
        self.emitter(run)?
            .emit_agent_error(
                failure.message.clone(),
                failure.code.clone(),
                failure.retryable,
            )
            .await
            .map(drop)
    }
}
