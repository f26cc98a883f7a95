//! The run lifecycle as a state machine.
//!
//! Per run: `agent_started` comes first; `tool_completed` only for an open `tool_call_id`;
//! `message_completed` only for an open `message_id` (the first `message_delta` of a
//! message opens it); exactly one terminal event (`agent_completed` or `agent_error`) and
//! nothing after it. Tool calls and messages still open at the terminal event end with
//! the run.
//! `custom` events stand outside the lifecycle and are accepted in any state.
//!
//! [`RunState`] is the one reference of these rules. What an event does to its run is a
//! [`RunStep`] (the event without its payload), so a broker can check a run without
//! decoding the event again: [`RunState::apply_step`] is the rule, [`RunState::apply`] the
//! same for a whole event. Other implementations (the Redis broker's script) are tested
//! against it.

use std::collections::BTreeSet;

use crate::event::{EventData, EventType};

/// Most tool calls one run may have open at once. A bound on what a publisher can make a
/// server remember per run.
pub const MAX_OPEN_TOOL_CALLS: usize = 256;

/// Most streamed messages one run may have open at once (begun by a `message_delta`, not
/// yet completed). A bound on what a publisher can make a server remember per run.
pub const MAX_OPEN_MESSAGES: usize = 256;

/// How a finished run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RunOutcome {
    /// `agent_completed`.
    Completed,
    /// `agent_error`.
    Failed,
}

/// What a run event does to its run: the event's type, and the tool call it names.
/// `custom` events have none (they stand outside the lifecycle).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum RunStep {
    /// `agent_started`: the run begins.
    Start,
    /// `agent_thinking`: a step inside the running run.
    Think,
    /// `tool_executing`: the tool call with this id opens.
    OpenToolCall(String),
    /// `tool_completed`: the open tool call with this id closes.
    CloseToolCall(String),
    /// `message_delta`: the message with this id continues, or opens when it is not open.
    StreamMessage(String),
    /// `message_completed`: the open message with this id closes.
    CloseMessage(String),
    /// `agent_completed` or `agent_error`: the run ends.
    End(RunOutcome),
}

impl RunStep {
    /// The step `event` takes, or `None` for a `custom` event.
    pub fn of(event: &EventData) -> Option<RunStep> {
        let named = match event {
            EventData::ToolExecuting(t) => Some(&t.tool_call_id),
            EventData::ToolCompleted(t) => Some(&t.tool_call_id),
            EventData::MessageDelta(m) => Some(&m.message_id),
            EventData::MessageCompleted(m) => Some(&m.message_id),
            _ => None,
        };
        Self::for_type(event.event_type(), named.cloned())
    }

    /// The step a `ty` event takes, given the tool call id or message id it names (for
    /// the types that name one): `None` for a `custom` event, or for a type that names an
    /// id given none.
    pub(crate) fn for_type(ty: EventType, named: Option<String>) -> Option<RunStep> {
        Some(match ty {
            EventType::AgentStarted => RunStep::Start,
            EventType::AgentThinking => RunStep::Think,
            EventType::ToolExecuting => RunStep::OpenToolCall(named?),
            EventType::ToolCompleted => RunStep::CloseToolCall(named?),
            EventType::AgentCompleted => RunStep::End(RunOutcome::Completed),
            EventType::AgentError => RunStep::End(RunOutcome::Failed),
            EventType::MessageDelta => RunStep::StreamMessage(named?),
            EventType::MessageCompleted => RunStep::CloseMessage(named?),
            EventType::Custom => return None,
        })
    }

    /// The type of the events that take this step.
    pub fn event_type(&self) -> EventType {
        match self {
            RunStep::Start => EventType::AgentStarted,
            RunStep::Think => EventType::AgentThinking,
            RunStep::OpenToolCall(_) => EventType::ToolExecuting,
            RunStep::CloseToolCall(_) => EventType::ToolCompleted,
            RunStep::StreamMessage(_) => EventType::MessageDelta,
            RunStep::CloseMessage(_) => EventType::MessageCompleted,
            RunStep::End(outcome) => outcome.event_type(),
        }
    }

    /// The tool call the step opens or closes.
    pub fn tool_call_id(&self) -> Option<&str> {
        match self {
            RunStep::OpenToolCall(id) | RunStep::CloseToolCall(id) => Some(id),
            _ => None,
        }
    }

    /// The message the step streams or closes.
    pub fn message_id(&self) -> Option<&str> {
        match self {
            RunStep::StreamMessage(id) | RunStep::CloseMessage(id) => Some(id),
            _ => None,
        }
    }
}

impl RunOutcome {
    /// The terminal event that ends a run this way.
    pub fn event_type(self) -> EventType {
        match self {
            RunOutcome::Completed => EventType::AgentCompleted,
            RunOutcome::Failed => EventType::AgentError,
        }
    }
}

/// Where a run is in its lifecycle.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum RunState {
    /// Nothing yet; only `agent_started` may come.
    #[default]
    NotStarted,
    /// Started, not finished.
    Running {
        /// Tool calls begun (`tool_executing`) and not yet completed.
        open_tool_calls: BTreeSet<String>,
        /// Messages begun (`message_delta`) and not yet completed.
        open_messages: BTreeSet<String>,
    },
    /// Ended; nothing more may come.
    Finished(RunOutcome),
}

/// An event that does not fit its run's state.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RunViolation {
    /// The first event of a run was not `agent_started`.
    #[error("`{event}` before `agent_started`")]
    NotStarted {
        /// The event that came too early.
        event: EventType,
    },
    /// A second `agent_started`.
    #[error("`agent_started` for a run that already started")]
    AlreadyStarted,
    /// `tool_executing` for a call that is already open.
    #[error("`tool_executing` for tool call `{tool_call_id}`, which is already open")]
    DuplicateToolCall {
        /// The call id.
        tool_call_id: String,
    },
    /// `tool_completed` for a call that is not open.
    #[error("`tool_completed` for tool call `{tool_call_id}`, which is not open")]
    UnknownToolCall {
        /// The call id.
        tool_call_id: String,
    },
    /// More than [`MAX_OPEN_TOOL_CALLS`] calls open at once.
    #[error("more than {MAX_OPEN_TOOL_CALLS} tool calls open at once")]
    TooManyOpenToolCalls,
    /// `message_completed` for a message that is not open.
    #[error("`message_completed` for message `{message_id}`, which is not open")]
    UnknownMessage {
        /// The message id.
        message_id: String,
    },
    /// More than [`MAX_OPEN_MESSAGES`] messages open at once.
    #[error("more than {MAX_OPEN_MESSAGES} messages open at once")]
    TooManyOpenMessages,
    /// Anything after the terminal event.
    #[error("`{event}` after the run ended with `{ended_with}`")]
    AfterTerminal {
        /// The event that came too late.
        event: EventType,
        /// The terminal event the run ended with.
        ended_with: EventType,
    },
}

impl RunViolation {
    /// Every violation's [`name`](Self::name), in the order of docs/protocol.md §7.
    pub const NAMES: [&'static str; 8] = [
        "NotStarted",
        "AlreadyStarted",
        "DuplicateToolCall",
        "UnknownToolCall",
        "TooManyOpenToolCalls",
        "UnknownMessage",
        "TooManyOpenMessages",
        "AfterTerminal",
    ];

    /// The position of this violation's name in [`Self::NAMES`].
    pub fn index(&self) -> usize {
        match self {
            RunViolation::NotStarted { .. } => 0,
            RunViolation::AlreadyStarted => 1,
            RunViolation::DuplicateToolCall { .. } => 2,
            RunViolation::UnknownToolCall { .. } => 3,
            RunViolation::TooManyOpenToolCalls => 4,
            RunViolation::UnknownMessage { .. } => 5,
            RunViolation::TooManyOpenMessages => 6,
            RunViolation::AfterTerminal { .. } => 7,
        }
    }

    /// The violation's name, as docs/protocol.md §7 lists them (`NotStarted`,
    /// `AlreadyStarted`, …): what an error body or a metric label names it by.
    pub fn name(&self) -> &'static str {
        Self::NAMES[self.index()]
    }

    /// The field of the event the violation is about: `data.tool_call_id` for the tool
    /// call violations, `data.message_id` for the message violations, `type` for the
    /// others.
    pub fn field(&self) -> &'static str {
        match self {
            RunViolation::DuplicateToolCall { .. }
            | RunViolation::UnknownToolCall { .. }
            | RunViolation::TooManyOpenToolCalls => "data.tool_call_id",
            RunViolation::UnknownMessage { .. } | RunViolation::TooManyOpenMessages => {
                "data.message_id"
            }
            _ => "type",
        }
    }
}

impl RunState {
    /// The state after `event`, or the violation it commits. Pure: `self` is unchanged.
    ///
    /// # Errors
    /// The [`RunViolation`] the event commits.
    pub fn transition(&self, event: &EventData) -> Result<RunState, RunViolation> {
        let mut next = self.clone();
        next.apply(event)?;
        Ok(next)
    }

    /// Moves to the state after `event`; on a violation the state is left as it was.
    /// A `custom` event changes nothing.
    ///
    /// # Errors
    /// The [`RunViolation`] the event commits.
    pub fn apply(&mut self, event: &EventData) -> Result<(), RunViolation> {
        match RunStep::of(event) {
            Some(step) => self.apply_step(&step),
            None => Ok(()),
        }
    }

    /// Moves to the state after `step`; on a violation the state is left as it was.
    ///
    /// The checks, in this order: a finished run takes nothing (`AfterTerminal`); a run
    /// not started takes only `Start` (`NotStarted`); a running run takes no second
    /// `Start` (`AlreadyStarted`), opens a tool call that is not open (`DuplicateToolCall`)
    /// while fewer than [`MAX_OPEN_TOOL_CALLS`] are (`TooManyOpenToolCalls`), and closes
    /// only an open one (`UnknownToolCall`); it streams into an open message, or opens one
    /// while fewer than [`MAX_OPEN_MESSAGES`] are (`TooManyOpenMessages`), and closes only
    /// an open one (`UnknownMessage`). The terminal step ends the run with whatever tool
    /// calls and messages are still open.
    ///
    /// # Errors
    /// The [`RunViolation`] the step commits.
    pub fn apply_step(&mut self, step: &RunStep) -> Result<(), RunViolation> {
        match self {
            RunState::Finished(outcome) => Err(RunViolation::AfterTerminal {
                event: step.event_type(),
                ended_with: outcome.event_type(),
            }),
            RunState::NotStarted => match step {
                RunStep::Start => {
                    *self = RunState::Running {
                        open_tool_calls: BTreeSet::new(),
                        open_messages: BTreeSet::new(),
                    };
                    Ok(())
                }
                _ => Err(RunViolation::NotStarted {
                    event: step.event_type(),
                }),
            },
            RunState::Running {
                open_tool_calls,
                open_messages,
            } => match step {
                RunStep::Start => Err(RunViolation::AlreadyStarted),
                RunStep::Think => Ok(()),
                RunStep::OpenToolCall(id) => {
                    if open_tool_calls.contains(id) {
                        return Err(RunViolation::DuplicateToolCall {
                            tool_call_id: id.clone(),
                        });
                    }
                    if open_tool_calls.len() >= MAX_OPEN_TOOL_CALLS {
                        return Err(RunViolation::TooManyOpenToolCalls);
                    }
                    open_tool_calls.insert(id.clone());
                    Ok(())
                }
                RunStep::CloseToolCall(id) => {
                    if open_tool_calls.remove(id) {
                        Ok(())
                    } else {
                        Err(RunViolation::UnknownToolCall {
                            tool_call_id: id.clone(),
                        })
                    }
                }
                RunStep::StreamMessage(id) => {
                    if !open_messages.contains(id) {
                        if open_messages.len() >= MAX_OPEN_MESSAGES {
                            return Err(RunViolation::TooManyOpenMessages);
                        }
                        open_messages.insert(id.clone());
                    }
                    Ok(())
                }
                RunStep::CloseMessage(id) => {
                    if open_messages.remove(id) {
                        Ok(())
                    } else {
                        Err(RunViolation::UnknownMessage {
                            message_id: id.clone(),
                        })
                    }
                }
                RunStep::End(outcome) => {
                    *self = RunState::Finished(*outcome);
                    Ok(())
                }
            },
        }
    }

    /// Whether the run has ended.
    pub fn is_finished(&self) -> bool {
        matches!(self, RunState::Finished(_))
    }
}
