//! `UnifiedWebSocketEmitter`: the events of one run, checked against the run lifecycle and
//! published through the manager with retries.
//!
//! What it is not: a second path to the wire. Each event goes through the manager's
//! `prepare_event` once and `emit_prepared` per attempt — the two halves of
//! `emit_critical_event` — so validation, size limits and counting stay in one place.

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agentwire_manager::{Accepted, EmitError, UnifiedWebSocketManager};
use agentwire_protocol::{
    AgentCompleted, AgentError, AgentStarted, AgentThinking, Custom, Event, EventData, EventId,
    RunState, RunViolation, Timestamp, ToolCompleted, ToolExecuting,
};
use backon::Retryable;
use serde_json::Value;
use tokio::time::Instant;

use crate::context::RunContext;
use crate::metrics::{Counters, EmitterMetrics};
use crate::retry::RetryPolicy;

/// Why an emitter did not emit an event.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum EmitterError {
    /// The event breaks the run lifecycle (e.g. `tool_completed` for a call that is not
    /// open, anything after the terminal event). Nothing was published and the run's state
    /// is unchanged.
    #[error("run lifecycle violation: {0}")]
    Violation(#[from] RunViolation),
    /// The manager refused the event before publishing it (invalid, or larger than
    /// `max_event_bytes`). Never retried; the run's state is unchanged.
    #[error("event refused: {0}")]
    Refused(EmitError),
    /// Publishing failed with a permanent error, or with transient errors on every
    /// attempt. The run's state is unchanged. After a transient error the broker may still
    /// have accepted the event; emitting it again under `event_id` cannot duplicate it.
    #[error("event {event_id} not emitted after {attempts} attempt(s): {source}")]
    Failed {
        /// The id every attempt used.
        event_id: EventId,
        /// Attempts made.
        attempts: u32,
        /// The last attempt's error.
        source: EmitError,
        /// The event that was not emitted, handed back.
        event: Box<Event>,
    },
}

impl EmitterError {
    /// The lifecycle violation, when that is what this is.
    pub fn violation(&self) -> Option<&RunViolation> {
        match self {
            EmitterError::Violation(v) => Some(v),
            _ => None,
        }
    }
}

pub(crate) struct Inner {
    manager: UnifiedWebSocketManager,
    context: RunContext,
    retry: RetryPolicy,
    /// Held across a whole emit, retries included: a run's events are published one at a
    /// time and in the order they were checked.
    run: tokio::sync::Mutex<RunState>,
    counters: Counters,
    aggregate: Arc<Counters>,
    last_active: Mutex<Instant>,
}

/// Emits the events of one run: the five critical events (`agent_started`,
/// `agent_thinking`, `tool_executing`, `tool_completed`, `agent_completed`), plus
/// `agent_error` and `custom`.
///
/// Every event is checked against the run's [`RunState`] first — a violation is a typed
/// error and changes nothing — then published through the manager, retried on transient
/// errors under the [`RetryPolicy`] with the same `event_id` on every attempt. The state
/// advances only when the broker accepted the event.
///
/// A cheap handle: clones share the run state and the metrics. Create one with
/// [`crate::WebSocketEmitterFactory::create_emitter`], or get the shared one of a run from
/// a [`crate::WebSocketEmitterPool`].
///
/// # Examples
/// ```
/// use agentwire_emitter::{RunContext, WebSocketEmitterFactory};
/// use agentwire_manager::UnifiedWebSocketManager;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let manager = UnifiedWebSocketManager::in_memory();
/// let context = RunContext::new("alice".parse()?, "t1".parse()?, "r1".parse()?);
/// let emitter = WebSocketEmitterFactory::new(manager).create_emitter(context);
///
/// emitter.emit_agent_started("triage").await?;
/// emitter.emit_agent_thinking("Looking up the order", Some(1)).await?;
/// emitter.emit_agent_completed(serde_json::json!("done"), None).await?;
/// // Nothing may follow the terminal event.
/// assert!(emitter.emit_agent_thinking("too late", None).await.is_err());
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct UnifiedWebSocketEmitter {
    inner: Arc<Inner>,
}

impl fmt::Debug for UnifiedWebSocketEmitter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UnifiedWebSocketEmitter")
            .field("context", &self.inner.context)
            .field("retry", &self.inner.retry)
            .finish_non_exhaustive()
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl UnifiedWebSocketEmitter {
    pub(crate) fn new(
        manager: UnifiedWebSocketManager,
        context: RunContext,
        retry: RetryPolicy,
        aggregate: Arc<Counters>,
    ) -> Self {
        UnifiedWebSocketEmitter {
            inner: Arc::new(Inner {
                manager,
                context,
                retry,
                run: tokio::sync::Mutex::new(RunState::NotStarted),
                counters: Counters::default(),
                aggregate,
                last_active: Mutex::new(Instant::now()),
            }),
        }
    }

    /// The run this emitter speaks for.
    pub fn context(&self) -> &RunContext {
        &self.inner.context
    }

    /// The manager events go through.
    pub fn manager(&self) -> &UnifiedWebSocketManager {
        &self.inner.manager
    }

    /// The retry policy in force.
    pub fn retry_policy(&self) -> &RetryPolicy {
        &self.inner.retry
    }

    /// This emitter's counters.
    pub fn metrics(&self) -> EmitterMetrics {
        self.inner.counters.snapshot()
    }

    /// The run's lifecycle state. Waits while an emit is in flight.
    pub async fn run_state(&self) -> RunState {
        self.inner.run.lock().await.clone()
    }

    /// Whether two handles are the same emitter.
    pub fn same_as(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }

    /// When this emitter was last created, handed out by a pool, or used to emit.
    pub(crate) fn last_active(&self) -> Instant {
        *self
            .inner
            .last_active
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn touch(&self) {
        *self
            .inner
            .last_active
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Instant::now();
    }

    fn record(&self, f: impl Fn(&Counters)) {
        f(&self.inner.counters);
        f(&self.inner.aggregate);
    }

    /// Emits `agent_started`: the first event of every run.
    ///
    /// # Errors
    /// See [`Self::emit`].
    pub async fn emit_agent_started(
        &self,
        agent_name: impl Into<String>,
    ) -> Result<Accepted, EmitterError> {
        self.emit(AgentStarted {
            agent_name: Some(agent_name.into()),
            ..Default::default()
        })
        .await
    }

    /// Emits `agent_thinking`: a step of the agent's reasoning, as the user should read it.
    ///
    /// # Errors
    /// See [`Self::emit`].
    pub async fn emit_agent_thinking(
        &self,
        thought: impl Into<String>,
        step: Option<u64>,
    ) -> Result<Accepted, EmitterError> {
        self.emit(AgentThinking {
            thought: thought.into(),
            step,
            ..Default::default()
        })
        .await
    }

    /// Emits `tool_executing`: the tool call `tool_call_id` began. The id must not be open
    /// in this run already.
    ///
    /// # Errors
    /// See [`Self::emit`].
    pub async fn emit_tool_executing(
        &self,
        tool_call_id: impl Into<String>,
        tool_name: impl Into<String>,
        arguments: Value,
    ) -> Result<Accepted, EmitterError> {
        self.emit(ToolExecuting {
            tool_call_id: tool_call_id.into(),
            tool_name: tool_name.into(),
            arguments,
            ..Default::default()
        })
        .await
    }

    /// Emits `tool_completed`: the open tool call `tool_call_id` ended, with `result` (its
    /// error when `is_error`).
    ///
    /// # Errors
    /// See [`Self::emit`].
    pub async fn emit_tool_completed(
        &self,
        tool_call_id: impl Into<String>,
        tool_name: impl Into<String>,
        result: Value,
        is_error: bool,
        duration: Option<Duration>,
    ) -> Result<Accepted, EmitterError> {
        self.emit(ToolCompleted {
            tool_call_id: tool_call_id.into(),
            tool_name: tool_name.into(),
            result,
            is_error,
            duration_ms: duration.map(millis),
            ..Default::default()
        })
        .await
    }

    /// Emits `agent_completed`: the run finished with `result`. Nothing may follow.
    ///
    /// # Errors
    /// See [`Self::emit`].
    pub async fn emit_agent_completed(
        &self,
        result: Value,
        duration: Option<Duration>,
    ) -> Result<Accepted, EmitterError> {
        self.emit(AgentCompleted {
            result,
            duration_ms: duration.map(millis),
            ..Default::default()
        })
        .await
    }

    /// Emits `agent_error`: the run failed. Like `agent_completed`, it ends the run.
    ///
    /// # Errors
    /// See [`Self::emit`].
    pub async fn emit_agent_error(
        &self,
        message: impl Into<String>,
        code: Option<String>,
        retryable: bool,
    ) -> Result<Accepted, EmitterError> {
        self.emit(AgentError {
            message: message.into(),
            code,
            retryable,
            ..Default::default()
        })
        .await
    }

    /// Emits a `custom` event, which stands outside the run lifecycle and is accepted in
    /// any state of the run.
    ///
    /// # Errors
    /// See [`Self::emit`].
    pub async fn emit_custom(
        &self,
        name: impl Into<String>,
        value: Value,
    ) -> Result<Accepted, EmitterError> {
        self.emit(Custom {
            name: name.into(),
            value,
            ..Default::default()
        })
        .await
    }

    /// Emits any event of this run, with its full payload (extra fields included). Every
    /// `emit_*` method comes here.
    ///
    /// # Errors
    /// - [`EmitterError::Violation`] when the event breaks the run lifecycle;
    /// - [`EmitterError::Refused`] when the manager refuses it (invalid, too large);
    /// - [`EmitterError::Failed`] when publishing failed permanently or every attempt
    ///   failed transiently.
    ///
    /// In every case the run's state is unchanged.
    ///
    /// # Cancel safety
    /// Not cancel safe: cancelled during a publish attempt, the broker may have accepted
    /// the event while the run's state did not advance.
    pub async fn emit(&self, data: impl Into<EventData>) -> Result<Accepted, EmitterError> {
        let data = data.into();
        let inner = &*self.inner;
        let ctx = &inner.context;
        let mut run = inner.run.lock().await;
        self.touch();
        let next = match run.transition(&data) {
            Ok(next) => next,
            Err(violation) => {
                self.record(Counters::violation);
                tracing::warn!(
                    user = %ctx.user_id(), run = %ctx.run_id(),
                    request_id = ctx.request_id().unwrap_or(""),
                    %violation, "event refused: run lifecycle violation"
                );
                return Err(EmitterError::Violation(violation));
            }
        };
        let event_type = data.event_type();
        let event = Event::new(
            Some(ctx.thread_id().clone()),
            Some(ctx.run_id().clone()),
            data,
        );
        let prepared = match inner.manager.prepare_event(ctx.user_id(), &event, None) {
            Ok(p) => p,
            Err(e) => {
                self.record(Counters::failure);
                return Err(EmitterError::Refused(e));
            }
        };
        let mut attempts: u32 = 0;
        let result = (|| {
            attempts += 1;
            self.record(Counters::attempt);
            inner.manager.emit_prepared(&prepared)
        })
        .retry(inner.retry.backoff())
        .sleep(tokio::time::sleep)
        .when(EmitError::is_transient)
        .notify(|error, delay| {
            self.record(Counters::retry);
            tracing::warn!(
                user = %ctx.user_id(), run = %ctx.run_id(),
                request_id = ctx.request_id().unwrap_or(""),
                event_id = %prepared.event_id(), %error, ?delay,
                "transient emit failure; retrying"
            );
        })
        .await;
        self.touch();
        match result {
            Ok(accepted) => {
                *run = next;
                self.record(|c| c.emitted(event_type, Timestamp::now()));
                tracing::debug!(
                    user = %ctx.user_id(), run = %ctx.run_id(),
                    request_id = ctx.request_id().unwrap_or(""),
                    event = %event_type, seq = %accepted.seq, attempts, "event emitted"
                );
                Ok(accepted)
            }
            Err(source) => {
                self.record(Counters::failure);
                tracing::error!(
                    user = %ctx.user_id(), run = %ctx.run_id(),
                    request_id = ctx.request_id().unwrap_or(""),
                    event = %event_type, event_id = %prepared.event_id(), attempts,
                    error = %source, "event not emitted"
                );
                Err(EmitterError::Failed {
                    event_id: prepared.event_id().clone(),
                    attempts,
                    source,
                    event: Box::new(event),
                })
            }
        }
    }
}
