//! The run lifecycle as a state machine.
//!
//! Per run: `agent_started` comes first; `tool_completed` only for an open `tool_call_id`;
//! exactly one terminal event (`agent_completed` or `agent_error`) and nothing after it.
//! `custom` events stand outside the lifecycle and are accepted in any state.

use std::collections::BTreeSet;

use crate::event::{EventData, EventType};

/// Most tool calls one run may have open at once. A bound on what a publisher can make a
/// server remember per run.
pub const MAX_OPEN_TOOL_CALLS: usize = 256;

/// How a finished run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RunOutcome {
    /// `agent_completed`.
    Completed,
    /// `agent_error`.
    Failed,
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
    /// Anything after the terminal event.
    #[error("`{event}` after the run ended with `{ended_with}`")]
    AfterTerminal {
        /// The event that came too late.
        event: EventType,
        /// The terminal event the run ended with.
        ended_with: EventType,
    },
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
    ///
    /// # Errors
    /// The [`RunViolation`] the event commits.
    pub fn apply(&mut self, event: &EventData) -> Result<(), RunViolation> {
        let ty = event.event_type();
        if ty == EventType::Custom {
            return Ok(());
        }
        match self {
            RunState::Finished(outcome) => Err(RunViolation::AfterTerminal {
                event: ty,
                ended_with: match outcome {
                    RunOutcome::Completed => EventType::AgentCompleted,
                    RunOutcome::Failed => EventType::AgentError,
                },
            }),
            RunState::NotStarted => match event {
                EventData::AgentStarted(_) => {
                    *self = RunState::Running {
                        open_tool_calls: BTreeSet::new(),
                    };
                    Ok(())
                }
                _ => Err(RunViolation::NotStarted { event: ty }),
            },
            RunState::Running { open_tool_calls } => match event {
                EventData::AgentStarted(_) => Err(RunViolation::AlreadyStarted),
                EventData::AgentThinking(_) | EventData::Custom(_) => Ok(()),
                EventData::ToolExecuting(t) => {
                    if open_tool_calls.contains(&t.tool_call_id) {
                        return Err(RunViolation::DuplicateToolCall {
                            tool_call_id: t.tool_call_id.clone(),
                        });
                    }
                    if open_tool_calls.len() >= MAX_OPEN_TOOL_CALLS {
                        return Err(RunViolation::TooManyOpenToolCalls);
                    }
                    open_tool_calls.insert(t.tool_call_id.clone());
                    Ok(())
                }
                EventData::ToolCompleted(t) => {
                    if open_tool_calls.remove(&t.tool_call_id) {
                        Ok(())
                    } else {
                        Err(RunViolation::UnknownToolCall {
                            tool_call_id: t.tool_call_id.clone(),
                        })
                    }
                }
                EventData::AgentCompleted(_) => {
                    *self = RunState::Finished(RunOutcome::Completed);
                    Ok(())
                }
                EventData::AgentError(_) => {
                    *self = RunState::Finished(RunOutcome::Failed);
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
