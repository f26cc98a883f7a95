//! `UnifiedWebSocketEmitter`: the events of one run, published through the manager with
//! retries and checked against the run lifecycle by the broker, atomically with their
//! append; an event whose outcome is unknown stays in the emitter, unsettled, until it is
//! published again under the same `event_id`.
//!
//! What it is not: a second path to the wire, nor a second lifecycle. Each event goes
//! through the manager's `prepare_event` once and `emit_prepared` per attempt — the two
//! halves of `emit_critical_event` — so validation, size limits and counting stay in one
//! place; and each carries a run guard, so the broker's run table (the one the publish
//! API uses too) decides, on every node.

use std::fmt;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use agentwire_manager::{Accepted, EmitError, PreparedEvent, PublisherId, UnifiedWebSocketManager};
use agentwire_protocol::{
    AgentCompleted, AgentError, AgentStarted, AgentThinking, Custom, Event, EventData, EventId,
    MessageCompleted, MessageDelta, RunOutcome, RunState, RunStep, RunViolation, Timestamp,
    ToolCompleted, ToolExecuting,
};
use backon::Retryable;
use serde_json::Value;
use tokio::time::Instant;

use crate::context::RunContext;
use crate::error::EmitterError;
use crate::metrics::{Counters, EmitterMetrics};
use crate::retry::RetryPolicy;

/// Told when the run of one of its emitters reaches its terminal event: how a pool lets a
/// finished run go without the emitter knowing the pool.
pub(crate) trait FinishedRuns: Send + Sync {
    /// `emitter`'s run ended with `outcome`. Called once per run, while the run's lock is
    /// held, so nothing of the run can happen before the pool has heard of it.
    fn run_finished(&self, emitter: &UnifiedWebSocketEmitter, outcome: RunOutcome);
}

/// An event prepared and stored before its first publish attempt, and kept until the
/// broker accepted or permanently refused it. Held in [`Run`] while attempts are under
/// way, so that an emit cancelled mid-attempt leaves it for the next call to settle.
#[derive(Clone)]
struct Unsettled {
    prepared: PreparedEvent,
    /// Handed back in [`EmitterError::Failed`] if the broker refuses it for good.
    event: Arc<Event>,
}

/// A run as its emitter knows it.
struct Run {
    /// What the broker accepted of the run through this emitter: a mirror of the broker's
    /// run state, which decides. Moves only when the broker accepted an event.
    state: RunState,
    /// At most one: nothing of the run is published while an earlier event is unsettled,
    /// so the run's events reach the broker in the order they were checked.
    unsettled: Option<Unsettled>,
}

pub(crate) struct Inner {
    manager: UnifiedWebSocketManager,
    /// Who the run counts against in the broker's run-state bounds.
    publisher: PublisherId,
    context: RunContext,
    retry: RetryPolicy,
    /// Held across a whole emit, retries included: a run's events are published one at a
    /// time and in the order they were checked.
    run: tokio::sync::Mutex<Run>,
    counters: Counters,
    aggregate: Arc<Counters>,
    last_active: Mutex<Instant>,
    /// The pool that hands this emitter out, told when the run finishes.
    pool: Option<Weak<dyn FinishedRuns>>,
}

/// Emits the events of one run: the five critical events (`agent_started`,
/// `agent_thinking`, `tool_executing`, `tool_completed`, `agent_completed`), plus
/// `agent_error` and `custom`.
///
/// Every event is published through the manager with a run guard: the broker checks it
/// against the run's lifecycle in the same atomic step as its append — the same check,
/// against the same run state, as every other emitter and the publish API, on every node
/// — and a violation is a typed error that stores nothing. Publishes are retried on
/// transient errors under the [`RetryPolicy`] with the same `event_id` on every attempt.
/// The emitter mirrors what the broker accepted ([`Self::run_state`]); a run it saw end
/// it refuses at once (`AfterTerminal`), without asking the broker.
///
/// When every attempt fails transiently, or the emit is cancelled, the broker may or may
/// not have taken the event. The emitter then keeps it, *unsettled*
/// ([`EmitterError::Unsettled`]): [`Self::settle`] publishes it again under the same
/// `event_id` and applies its transition, and so does the run's next emit before its own
/// event. So a lost answer shows the user the event once, and the run's state follows
/// what the broker holds.
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
        publisher: PublisherId,
        context: RunContext,
        retry: RetryPolicy,
        aggregate: Arc<Counters>,
        state: RunState,
        pool: Option<Weak<dyn FinishedRuns>>,
    ) -> Self {
        UnifiedWebSocketEmitter {
            inner: Arc::new(Inner {
                manager,
                publisher,
                context,
                retry,
                run: tokio::sync::Mutex::new(Run {
                    state,
                    unsettled: None,
                }),
                counters: Counters::default(),
                aggregate,
                last_active: Mutex::new(Instant::now()),
                pool,
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

    /// The run's lifecycle state as this emitter saw the broker accept it, without an
    /// unsettled event (the broker's own state decides: another publisher of the run may
    /// have moved it on). Waits while an emit is in flight.
    pub async fn run_state(&self) -> RunState {
        self.inner.run.lock().await.state.clone()
    }

    /// The id of the run's unsettled event, if there is one (see
    /// [`EmitterError::Unsettled`]). Waits while an emit is in flight.
    pub async fn unsettled(&self) -> Option<EventId> {
        let run = self.inner.run.lock().await;
        run.unsettled
            .as_ref()
            .map(|u| u.prepared.event_id().clone())
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

    /// Whether the pool may drop this emitter without losing anything: no one else holds
    /// it, no emit is under way, the run is not running and nothing is unsettled.
    ///
    /// The pool asks under its own lock, where it hands out every new handle, so a count of
    /// one cannot grow while it decides.
    pub(crate) fn carries_nothing(&self) -> bool {
        Arc::strong_count(&self.inner) == 1
            && self.inner.run.try_lock().is_ok_and(|run| {
                run.unsettled.is_none() && !matches!(run.state, RunState::Running { .. })
            })
    }

    /// Whether the run holds an unsettled event and no emit is under way to settle it.
    pub(crate) fn needs_settling(&self) -> bool {
        self.inner
            .run
            .try_lock()
            .is_ok_and(|run| run.unsettled.is_some())
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

    /// Emits `message_delta`: the next piece of the streamed message `message_id`. The
    /// first piece of a message opens it (at most
    /// [`MAX_OPEN_MESSAGES`](agentwire_protocol::MAX_OPEN_MESSAGES) open at once).
    ///
    /// # Errors
    /// See [`Self::emit`].
    pub async fn emit_message_delta(
        &self,
        message_id: impl Into<String>,
        delta: impl Into<String>,
    ) -> Result<Accepted, EmitterError> {
        self.emit(MessageDelta {
            message_id: message_id.into(),
            delta: delta.into(),
            ..Default::default()
        })
        .await
    }

    /// Emits `message_completed`: the streamed message `message_id`, open in this run, is
    /// complete. `text` is the whole message, when the caller wants to send it again.
    ///
    /// # Errors
    /// See [`Self::emit`].
    pub async fn emit_message_completed(
        &self,
        message_id: impl Into<String>,
        text: Option<String>,
    ) -> Result<Accepted, EmitterError> {
        self.emit(MessageCompleted {
            message_id: message_id.into(),
            text,
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
    /// If an earlier event of the run is unsettled, it is settled first (published again
    /// under its `event_id`); only then is this event published, so the run's events reach
    /// the broker in order. The broker checks the event against its run (rule 11 of the
    /// broker contract), atomically with its append.
    ///
    /// # Errors
    /// - [`EmitterError::Violation`] when the event breaks the run lifecycle — as the
    ///   broker found, or at once for a run this emitter saw end;
    /// - [`EmitterError::Refused`] when the manager refuses it (invalid, too large);
    /// - [`EmitterError::Failed`] when the broker refused it with a permanent error (also
    ///   when its run does not fit the broker's run-state bounds,
    ///   [`EmitError::TooManyRuns`]);
    /// - [`EmitterError::Unsettled`] when every attempt failed transiently: the event stays
    ///   in the emitter and is published again by [`Self::settle`] or the next emit;
    /// - [`EmitterError::EarlierUnsettled`] when an earlier event could not be settled:
    ///   this one was not published and is not kept.
    ///
    /// In every case the run's state is as before this event. An earlier event settled by
    /// this call stays settled whatever happens to this one.
    ///
    /// # Cancel safety
    /// Cancel safe in this sense: cancelled while waiting for another emit of the run,
    /// nothing happened; cancelled later, the event stays unsettled exactly as after
    /// [`EmitterError::Unsettled`], and the next emit or [`Self::settle`] publishes it
    /// under the same `event_id` before anything else of the run. Cancelling never
    /// duplicates an event or leaves the run's state behind the broker — but the event
    /// may still reach the user after the cancellation.
    pub async fn emit(&self, data: impl Into<EventData>) -> Result<Accepted, EmitterError> {
        let data = data.into();
        let inner = &*self.inner;
        let ctx = &inner.context;
        let mut run = inner.run.lock().await;
        self.touch();
        if let Some(earlier) = run.unsettled.clone() {
            // Accepted, or refused for good (logged and counted): either way settled, and
            // this event goes after it. Still unsettled: this event must not overtake it.
            if let Err(EmitterError::Unsettled {
                event_id,
                attempts,
                source,
            }) = self.publish(&mut run, earlier, true).await
            {
                return Err(EmitterError::EarlierUnsettled {
                    event_id,
                    attempts,
                    source,
                });
            }
        }
        if let (RunState::Finished(outcome), Some(step)) = (&run.state, RunStep::of(&data)) {
            return Err(self.violation(RunViolation::AfterTerminal {
                event: step.event_type(),
                ended_with: outcome.event_type(),
            }));
        }
        let event = Event::new(
            Some(ctx.thread_id().clone()),
            Some(ctx.run_id().clone()),
            data,
        );
        let prepared = match inner.manager.prepare_event(ctx.user_id(), &event, None) {
            Ok(p) => p.guarded(inner.publisher.clone()),
            Err(e) => {
                self.record(Counters::failure);
                return Err(EmitterError::Refused(e));
            }
        };
        let unsettled = Unsettled {
            prepared,
            event: Arc::new(event),
        };
        // Stored before the first attempt: from here on a cancelled emit leaves the event
        // for the next call to settle.
        run.unsettled = Some(unsettled.clone());
        self.publish(&mut run, unsettled, false).await
    }

    /// Counts and logs a violation, and makes it the error.
    fn violation(&self, violation: RunViolation) -> EmitterError {
        let ctx = &self.inner.context;
        self.record(Counters::violation);
        tracing::warn!(
            user = %ctx.user_id(), run = %ctx.run_id(),
            request_id = ctx.request_id().unwrap_or(""),
            %violation, "event refused: run lifecycle violation"
        );
        EmitterError::Violation(violation)
    }

    /// Settles the run's unsettled event, if there is one: publishes it again under its
    /// `event_id` (with the emitter's retries) and, once the broker accepted it — now, or
    /// in an attempt whose answer was lost — follows its step in [`Self::run_state`]. Returns `Ok(None)`
    /// when nothing is unsettled, so calling it again is harmless.
    ///
    /// This is how to retry after [`EmitterError::Unsettled`]; emitting the event again
    /// would make it a second event. The run's next emit settles it too, first.
    ///
    /// # Errors
    /// - [`EmitterError::Unsettled`] when every attempt failed transiently again: still
    ///   unsettled;
    /// - [`EmitterError::Violation`] or [`EmitterError::Failed`] when the broker refused it
    ///   for good: it is dropped and the run's state stays as it was.
    ///
    /// # Cancel safety
    /// Cancel safe: a cancelled settle leaves the event unsettled.
    ///
    /// # Examples
    /// A broker that stores the event but whose answer is lost:
    /// ```
    /// use std::sync::Arc;
    ///
    /// use agentwire_emitter::{EmitterError, RetryPolicy, RunContext, WebSocketEmitterFactory};
    /// use agentwire_manager::conformance::{Fault, FaultyBroker};
    /// use agentwire_manager::{BrokerError, InMemoryBroker, ManagerConfig, UnifiedWebSocketManager};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let broker = FaultyBroker::new(InMemoryBroker::default(), |attempt| {
    ///     (attempt == 0).then(|| Fault::LoseAnswer(BrokerError::Timeout("reply lost".into())))
    /// });
    /// let manager = UnifiedWebSocketManager::new(ManagerConfig::default(), Arc::new(broker));
    /// let emitter = WebSocketEmitterFactory::new(manager)
    ///     .with_retry(RetryPolicy::no_retry())
    ///     .create_emitter(RunContext::new("alice".parse()?, "t1".parse()?, "r1".parse()?));
    ///
    /// let event_id = match emitter.emit_agent_started("triage").await {
    ///     Err(EmitterError::Unsettled { event_id, .. }) => event_id,
    ///     other => panic!("the answer was lost, yet: {other:?}"),
    /// };
    /// // Not `emit_agent_started` again: that would be a second event.
    /// let accepted = emitter.settle().await?.expect("an unsettled event");
    /// assert_eq!(accepted.event_id, event_id);
    /// assert!(accepted.duplicate, "the broker had it from the first attempt");
    /// emitter.emit_agent_thinking("the run has started", None).await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn settle(&self) -> Result<Option<Accepted>, EmitterError> {
        let mut run = self.inner.run.lock().await;
        self.touch();
        let Some(unsettled) = run.unsettled.clone() else {
            return Ok(None);
        };
        self.publish(&mut run, unsettled, true).await.map(Some)
    }

    /// Publishes `unsettled` — the run's unsettled event, which `run` holds — with
    /// retries, and settles it by the outcome: accepted, the run's mirror follows its
    /// step; refused for good, it is dropped; still failing transiently, it stays.
    /// `again` says whether an earlier call already tried it.
    async fn publish(
        &self,
        run: &mut Run,
        unsettled: Unsettled,
        again: bool,
    ) -> Result<Accepted, EmitterError> {
        let inner = &*self.inner;
        let ctx = &inner.context;
        let prepared = &unsettled.prepared;
        let event_type = prepared.event_type();
        let mut attempts: u32 = 0;
        let result = (|| {
            attempts += 1;
            self.record(Counters::attempt);
            inner.manager.emit_prepared(prepared)
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
        let event_id = prepared.event_id().clone();
        match result {
            Ok(accepted) => {
                run.unsettled = None;
                let was_finished = run.state.is_finished();
                if let Some(step) = prepared.run_step() {
                    follow(&mut run.state, step);
                }
                let finishing = !was_finished && run.state.is_finished();
                self.record(|c| c.emitted(event_type, Timestamp::now()));
                if again {
                    self.record(Counters::settled);
                }
                tracing::debug!(
                    user = %ctx.user_id(), run = %ctx.run_id(),
                    request_id = ctx.request_id().unwrap_or(""),
                    event = %event_type, seq = %accepted.seq, attempts, settled = again,
                    "event emitted"
                );
                if let (true, RunState::Finished(outcome)) = (finishing, &run.state)
                    && let Some(pool) = inner.pool.as_ref().and_then(Weak::upgrade)
                {
                    pool.run_finished(self, *outcome);
                }
                Ok(accepted)
            }
            Err(source) if source.is_transient() => {
                self.record(Counters::failure);
                tracing::error!(
                    user = %ctx.user_id(), run = %ctx.run_id(),
                    request_id = ctx.request_id().unwrap_or(""),
                    event = %event_type, %event_id, attempts, error = %source,
                    "event unsettled: the broker may or may not have it; kept to publish again"
                );
                Err(EmitterError::Unsettled {
                    event_id,
                    attempts,
                    source,
                })
            }
            Err(EmitError::Violation(violation)) => {
                run.unsettled = None;
                Err(self.violation(violation))
            }
            Err(source) => {
                run.unsettled = None;
                self.record(Counters::failure);
                tracing::error!(
                    user = %ctx.user_id(), run = %ctx.run_id(),
                    request_id = ctx.request_id().unwrap_or(""),
                    event = %event_type, %event_id, attempts, error = %source,
                    "event not emitted: refused by the broker"
                );
                Err(EmitterError::Failed {
                    event_id,
                    attempts,
                    source,
                    event: Box::new(Arc::unwrap_or_clone(unsettled.event)),
                })
            }
        }
    }
}

/// Moves `state` to where the broker's acceptance of `step` leaves the run. The broker
/// decides: when this mirror did not see the run's earlier steps (another publisher of the
/// run made them), it follows anyway — a start, a tool call or message opened or closed,
/// the end.
fn follow(state: &mut RunState, step: &RunStep) {
    if state.apply_step(step).is_ok() {
        return;
    }
    match step {
        RunStep::End(outcome) => *state = RunState::Finished(*outcome),
        _ => {
            if !matches!(state, RunState::Running { .. }) {
                *state = RunState::Running {
                    open_tool_calls: Default::default(),
                    open_messages: Default::default(),
                };
            }
            if let RunState::Running {
                open_tool_calls,
                open_messages,
            } = state
            {
                match step {
                    RunStep::OpenToolCall(id) => {
                        open_tool_calls.insert(id.clone());
                    }
                    RunStep::CloseToolCall(id) => {
                        open_tool_calls.remove(id);
                    }
                    RunStep::StreamMessage(id) => {
                        open_messages.insert(id.clone());
                    }
                    RunStep::CloseMessage(id) => {
                        open_messages.remove(id);
                    }
                    _ => {}
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mirror_follows_what_the_broker_accepted() {
        let mut state = RunState::NotStarted;
        // Another publisher started the run and opened "a": this mirror saw neither.
        follow(&mut state, &RunStep::CloseToolCall("a".into()));
        assert_eq!(
            state,
            RunState::Running {
                open_tool_calls: Default::default(),
                open_messages: Default::default(),
            }
        );
        follow(&mut state, &RunStep::OpenToolCall("b".into()));
        follow(&mut state, &RunStep::OpenToolCall("b".into()));
        follow(&mut state, &RunStep::CloseMessage("m".into()));
        follow(&mut state, &RunStep::StreamMessage("m2".into()));
        assert_eq!(
            state,
            RunState::Running {
                open_tool_calls: ["b".to_owned()].into_iter().collect(),
                open_messages: ["m2".to_owned()].into_iter().collect(),
            }
        );
        follow(&mut state, &RunStep::End(RunOutcome::Failed));
        assert_eq!(state, RunState::Finished(RunOutcome::Failed));
    }
}
