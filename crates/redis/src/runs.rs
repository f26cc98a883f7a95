//! Run guards on Redis (rule 11 of the broker contract): the pieces the broker puts
//! together around the publish script.
//!
//! A run's state lives in its user's slot (`UserKeys::run`), checked and changed by the
//! publish script in the same atomic step as the append. What the cluster holds in all
//! is counted by the run registry (`lua/runs.lua`), under a hash tag of its own: a run
//! *reserves* its room there before its `agent_started` is published, and tells it when it
//! ends. See the crate docs for the protocol and its failure modes.

use agentwire_manager::{NewEvent, PublisherId, RunLimit, run_base_bytes};
use agentwire_protocol::{EventType, RunId, RunOutcome, RunStep, RunViolation, UserId};
use redis::Value;

use crate::keys::UserKeys;
use crate::script::Malformed;

/// Room a reservation takes beyond what its run needs now, when the bounds leave it:
/// a run opening a few tool calls does not ask the registry again.
pub(crate) const ROOM_SLACK_BYTES: u64 = 1024;

/// How a run's reservation came about in this call. Whatever the kind, a call whose
/// publish did not start the run on the reservation drops its hold on it
/// ([`RegistryOp::Drop`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ReserveKind {
    /// A new reservation.
    Created,
    /// The reservation of a finished run, taken again.
    Revived,
    /// The run was already reserved (in progress, or reserved by another caller now):
    /// this call shares its token.
    Exists,
}

/// One run that a batch's guarded events touch.
#[derive(Debug)]
pub(crate) struct RunSlot {
    /// The run's state key, also its name in the registry.
    pub(crate) key: String,
    pub(crate) owner: PublisherId,
    /// [`run_base_bytes`] of the run.
    pub(crate) base: u64,
    /// Whether an event of the batch starts the run.
    pub(crate) starts: bool,
    /// The reservation made for this call: its kind and token.
    pub(crate) reserved: Option<(ReserveKind, String)>,
    /// The room the registry granted, passed to the script.
    pub(crate) grant: Option<u64>,
    /// The bound that refused the run's reservation.
    pub(crate) refusal: Option<RunLimit>,
}

/// The runs of one batch, numbered from 1 in the order the script is given their keys.
#[derive(Debug, Default)]
pub(crate) struct BatchRuns {
    pub(crate) slots: Vec<RunSlot>,
    /// Each event's run number (0: unguarded) and step.
    pub(crate) of_event: Vec<(usize, Option<RunStep>)>,
}

impl BatchRuns {
    pub(crate) fn of(keys: &UserKeys, user: &UserId, events: &[NewEvent]) -> Self {
        let mut runs = BatchRuns::default();
        let mut ids: Vec<&RunId> = Vec::new();
        for event in events {
            let Some(guard) = &event.run else {
                runs.of_event.push((0, None));
                continue;
            };
            let j = match ids.iter().position(|id| **id == guard.run_id) {
                Some(j) => j,
                None => {
                    ids.push(&guard.run_id);
                    runs.slots.push(RunSlot {
                        key: keys.run(&guard.run_id),
                        owner: guard.owner.clone(),
                        base: run_base_bytes(user, &guard.run_id) as u64,
                        starts: false,
                        reserved: None,
                        grant: None,
                        refusal: None,
                    });
                    runs.slots.len() - 1
                }
            };
            let slot = &mut runs.slots[j];
            if guard.step == RunStep::Start && !slot.starts {
                // The run counts against whoever starts it.
                slot.starts = true;
                slot.owner = guard.owner.clone();
            }
            runs.of_event.push((j + 1, Some(guard.step.clone())));
        }
        runs
    }

    /// The step of event `index`.
    pub(crate) fn step(&self, index: usize) -> Option<&RunStep> {
        self.of_event.get(index).and_then(|(_, s)| s.as_ref())
    }
}

/// The script's code and argument for `step`.
pub(crate) fn step_args(step: &RunStep) -> (&'static str, &str) {
    match step {
        RunStep::Start => ("s", ""),
        RunStep::Think => ("t", ""),
        RunStep::OpenToolCall(id) => ("o", id),
        RunStep::CloseToolCall(id) => ("c", id),
        RunStep::StreamMessage(id) => ("d", id),
        RunStep::CloseMessage(id) => ("m", id),
        RunStep::End(RunOutcome::Completed) => ("e", "c"),
        RunStep::End(RunOutcome::Failed) => ("e", "f"),
    }
}

/// The violation the script named, for the event taking `step`.
pub(crate) fn violation(name: &str, step: &RunStep, terminal: &str) -> Option<RunViolation> {
    let tool_call_id = || step.tool_call_id().map(str::to_owned);
    Some(match name {
        "NotStarted" => RunViolation::NotStarted {
            event: step.event_type(),
        },
        "AlreadyStarted" => RunViolation::AlreadyStarted,
        "DuplicateToolCall" => RunViolation::DuplicateToolCall {
            tool_call_id: tool_call_id()?,
        },
        "UnknownToolCall" => RunViolation::UnknownToolCall {
            tool_call_id: tool_call_id()?,
        },
        "TooManyOpenToolCalls" => RunViolation::TooManyOpenToolCalls,
        "UnknownMessage" => RunViolation::UnknownMessage {
            message_id: step.message_id()?.to_owned(),
        },
        "TooManyOpenMessages" => RunViolation::TooManyOpenMessages,
        "AfterTerminal" => RunViolation::AfterTerminal {
            event: step.event_type(),
            ended_with: match terminal {
                "c" => EventType::AgentCompleted,
                "f" => EventType::AgentError,
                _ => return None,
            },
        },
        _ => return None,
    })
}

/// What the publish script reports of one run after an accepted batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RunAfter {
    /// The token of the reservation the run's state names now (empty: no state).
    pub(crate) token: String,
    pub(crate) started: bool,
    pub(crate) ended: bool,
    /// The registry should be told the run is still going.
    pub(crate) refresh: bool,
}

/// Room one run needs beyond its reservation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Growth {
    /// The run's number (1-based).
    pub(crate) run: usize,
    pub(crate) needed: u64,
    /// The first event of the batch needing it.
    pub(crate) index: usize,
    /// The run's reservation token and owner, as its state names them.
    pub(crate) token: String,
    pub(crate) owner: String,
}

/// An operation of the run registry.
#[derive(Debug, Clone, Copy)]
pub(crate) enum RegistryOp<'a> {
    Reserve {
        owner: &'a str,
        base: u64,
    },
    Grow {
        needed: u64,
    },
    Finish {
        base: u64,
    },
    /// Drops this caller's hold on a reservation its publish did not use; the last hold
    /// gone, the reservation is forgotten (a revived one finished again, at `base`).
    Drop {
        base: u64,
    },
    Refresh,
}

impl RegistryOp<'_> {
    pub(crate) fn name(&self) -> &'static str {
        match self {
            RegistryOp::Reserve { .. } => "reserve",
            RegistryOp::Grow { .. } => "grow",
            RegistryOp::Finish { .. } => "finish",
            RegistryOp::Drop { .. } => "drop",
            RegistryOp::Refresh => "refresh",
        }
    }

    /// The operation's own arguments, after the common ones.
    pub(crate) fn args(&self) -> Vec<String> {
        match *self {
            RegistryOp::Reserve { owner, base } => {
                vec![
                    owner.to_owned(),
                    base.to_string(),
                    ROOM_SLACK_BYTES.to_string(),
                ]
            }
            RegistryOp::Grow { needed } => {
                vec![needed.to_string(), ROOM_SLACK_BYTES.to_string()]
            }
            RegistryOp::Finish { base } | RegistryOp::Drop { base } => vec![base.to_string()],
            RegistryOp::Refresh => Vec::new(),
        }
    }
}

/// The registry's sizes, as every answer reports them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Totals {
    pub(crate) runs: u64,
    pub(crate) live: u64,
    pub(crate) bytes: u64,
    pub(crate) expired: u64,
}

/// What the registry answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum RegistryAnswer {
    Reserved {
        kind: ReserveKind,
        token: String,
        allowance: u64,
        /// State keys of finished runs forgotten to make room.
        evicted: Vec<String>,
    },
    Grown {
        allowance: u64,
    },
    Full(RunLimit),
    /// The reservation is not (or no longer) there.
    Gone,
    Done,
}

pub(crate) fn text(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    }
}

pub(crate) fn int(v: &Value) -> Option<u64> {
    match v {
        Value::Int(n) => u64::try_from(*n).ok(),
        _ => None,
    }
}

/// Decodes the registry's answer to `op`.
pub(crate) fn registry_answer(
    op: &RegistryOp<'_>,
    reply: Vec<Value>,
) -> Result<(RegistryAnswer, Option<Totals>), Malformed> {
    let bad = || Malformed {
        what: "run registry reply",
    };
    let mut items = reply.into_iter();
    let kind = items.next().as_ref().and_then(text).ok_or_else(bad)?;
    let next_text = |items: &mut std::vec::IntoIter<Value>| {
        items.next().as_ref().and_then(text).ok_or_else(bad)
    };
    let next_int =
        |items: &mut std::vec::IntoIter<Value>| items.next().as_ref().and_then(int).ok_or_else(bad);
    let answer = match (kind.as_str(), op) {
        ("gone", _) => return Ok((RegistryAnswer::Gone, None)),
        ("created" | "revived" | "exists", RegistryOp::Reserve { .. }) => {
            let kind = match kind.as_str() {
                "created" => ReserveKind::Created,
                "revived" => ReserveKind::Revived,
                _ => ReserveKind::Exists,
            };
            let token = next_text(&mut items)?;
            let allowance = next_int(&mut items)?;
            RegistryAnswer::Reserved {
                kind,
                token,
                allowance,
                evicted: Vec::new(),
            }
        }
        ("full", RegistryOp::Reserve { .. } | RegistryOp::Grow { .. }) => {
            let bound = next_text(&mut items)?;
            RegistryAnswer::Full(RunLimit::from_name(&bound).ok_or_else(bad)?)
        }
        ("ok", RegistryOp::Grow { .. }) => RegistryAnswer::Grown {
            allowance: next_int(&mut items)?,
        },
        ("ok", _) => RegistryAnswer::Done,
        _ => return Err(bad()),
    };
    let totals = Totals {
        runs: next_int(&mut items)?,
        live: next_int(&mut items)?,
        bytes: next_int(&mut items)?,
        expired: next_int(&mut items)?,
    };
    let answer = match answer {
        RegistryAnswer::Reserved {
            kind,
            token,
            allowance,
            ..
        } => RegistryAnswer::Reserved {
            kind,
            token,
            allowance,
            evicted: items
                .map(|v| text(&v).ok_or_else(bad))
                .collect::<Result<_, _>>()?,
        },
        other => other,
    };
    Ok((answer, Some(totals)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_violation_the_script_names_decodes() {
        let steps = [
            RunStep::Start,
            RunStep::Think,
            RunStep::OpenToolCall("a".into()),
            RunStep::CloseToolCall("a".into()),
            RunStep::StreamMessage("m".into()),
            RunStep::CloseMessage("m".into()),
            RunStep::End(RunOutcome::Failed),
        ];
        for name in RunViolation::NAMES {
            let decoded = steps
                .iter()
                .filter_map(|s| violation(name, s, "c"))
                .collect::<Vec<_>>();
            assert!(!decoded.is_empty(), "{name}");
            assert!(decoded.iter().all(|v| v.name() == name));
        }
        assert_eq!(violation("AfterTerminal", &RunStep::Think, "x"), None);
        assert_eq!(violation("Nope", &RunStep::Think, "c"), None);
    }

    #[test]
    fn registry_answers_decode() {
        let s = |t: &str| Value::BulkString(t.as_bytes().to_vec());
        let reserve = RegistryOp::Reserve {
            owner: "k",
            base: 300,
        };
        let reply = vec![
            s("created"),
            s("tok"),
            Value::Int(1324),
            Value::Int(3),
            Value::Int(2),
            Value::Int(2000),
            Value::Int(1),
            s("p{u}:run:old"),
        ];
        let (answer, totals) = registry_answer(&reserve, reply).expect("decodes");
        assert_eq!(
            answer,
            RegistryAnswer::Reserved {
                kind: ReserveKind::Created,
                token: "tok".into(),
                allowance: 1324,
                evicted: vec!["p{u}:run:old".into()],
            }
        );
        assert_eq!(
            totals,
            Some(Totals {
                runs: 3,
                live: 2,
                bytes: 2000,
                expired: 1
            })
        );
        let zero = Value::Int(0);
        let full = vec![
            s("full"),
            s("owner_runs"),
            zero.clone(),
            zero.clone(),
            zero.clone(),
            zero,
        ];
        assert_eq!(
            registry_answer(&reserve, full).expect("decodes").0,
            RegistryAnswer::Full(RunLimit::OwnerRuns)
        );
        assert!(registry_answer(&RegistryOp::Refresh, vec![s("what")]).is_err());
        assert_eq!(
            registry_answer(&RegistryOp::Grow { needed: 1 }, vec![s("gone")])
                .expect("decodes")
                .0,
            RegistryAnswer::Gone
        );
    }
}
