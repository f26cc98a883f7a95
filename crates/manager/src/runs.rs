//! The run lifecycle in the broker contract: the guard a run event carries
//! ([`RunGuard`]), who a run counts against ([`PublisherId`]), the bounds of the run state
//! a broker keeps ([`RunLimits`]) and what it costs ([`run_base_bytes`],
//! [`tool_call_bytes`]), which bound refused a run ([`RunLimit`]), and the counters a
//! broker reports ([`RunStats`]).
//!
//! The rule itself is [`agentwire_protocol::RunState`]; a broker applies a guard's
//! [`RunStep`] to its run in the same atomic step as the append (rule 11 of
//! [`crate::Broker`]).

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use agentwire_protocol::{IdError, RunId, RunStep, RunViolation, UserId, validate_id};

/// Who a run counts against: a stable name of the publisher, equal on every node — for
/// an API key a fingerprint of it (the server's `key:<hex>`, never the key itself), for
/// embedded emitters a name their factory is given. It follows the identifier rule
/// (1–256 bytes, no control characters). Not a secret, and not a credential: a broker may
/// store it.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PublisherId(Arc<str>);

impl PublisherId {
    /// The publisher named `name`.
    ///
    /// # Errors
    /// [`IdError`] when `name` breaks the identifier rule.
    pub fn new(name: impl AsRef<str>) -> Result<Self, IdError> {
        let name = name.as_ref();
        validate_id(name)?;
        Ok(PublisherId(Arc::from(name)))
    }

    /// The publisher embedded emitters count as unless told otherwise: `embedded`.
    pub fn embedded() -> Self {
        PublisherId(Arc::from("embedded"))
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for PublisherId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublisherId({:?})", &*self.0)
    }
}

impl fmt::Display for PublisherId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The run check a run event asks of the broker (rule 11 of [`crate::Broker`]): the
/// event's run, the [`RunStep`] it takes, and the publisher a new run counts against.
///
/// Built by the manager from the event itself ([`crate::PreparedEvent::guarded`]), so the
/// step always matches the event's type and tool call.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RunGuard {
    /// The run the event belongs to (within its user's stream).
    pub run_id: RunId,
    /// What the event does to the run.
    pub step: RunStep,
    /// Who the run counts against when this event starts it.
    pub owner: PublisherId,
}

impl RunGuard {
    /// A guard applying `step` to `run_id`, a new run counting against `owner`.
    pub fn new(run_id: RunId, step: RunStep, owner: PublisherId) -> Self {
        RunGuard {
            run_id,
            step,
            owner,
        }
    }
}

/// What one run costs beyond its ids, as counted against [`RunLimits::max_bytes`]: its
/// map slot, state, owner and order entries, rounded up.
pub const RUN_OVERHEAD_BYTES: usize = 256;

/// What one open tool call, or one open streamed message, costs beyond its id, as counted
/// against [`RunLimits::max_bytes`].
pub const TOOL_CALL_OVERHEAD_BYTES: usize = 64;

/// The bytes a run of `user` with no open tool call is counted as (a finished run too).
pub fn run_base_bytes(user: &UserId, run: &RunId) -> usize {
    RUN_OVERHEAD_BYTES + user.as_str().len() + run.as_str().len()
}

/// The bytes one open tool call adds to its run; an open streamed message adds the same
/// for its `message_id`.
pub fn tool_call_bytes(tool_call_id: &str) -> usize {
    TOOL_CALL_OVERHEAD_BYTES + tool_call_id.len()
}

/// Bounds of the run state a broker keeps for guarded events.
///
/// Runs in progress are never evicted, by anyone: they are forgotten only `ttl` after
/// their last event. A finished run is remembered (so a late event is refused as
/// `AfterTerminal`) until a bound needs room — finished runs are forgotten first, oldest
/// first — or its `ttl` passes. A new run, or a tool call, that does not fit once every
/// finished run is forgotten is refused ([`BrokerError::TooManyRuns`](crate::BrokerError)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunLimits {
    /// Most runs held, in progress and finished (default 100,000).
    pub max_runs: usize,
    /// Most bytes of run state held (default 128 MiB), counted as [`run_base_bytes`] per
    /// run plus [`tool_call_bytes`] per open tool call and per open message.
    pub max_bytes: usize,
    /// Most runs in progress that count against one publisher (default 10,000): one
    /// publisher's runs cannot take every place.
    pub max_runs_per_owner: usize,
    /// Most bytes of run state in progress that count against one publisher (default
    /// 32 MiB).
    pub max_bytes_per_owner: usize,
    /// How long a run is remembered after its last event (default 1 hour); then it is
    /// forgotten, and its next event must be `agent_started` again.
    pub ttl: Duration,
}

impl Default for RunLimits {
    fn default() -> Self {
        RunLimits {
            max_runs: 100_000,
            max_bytes: 128 * 1024 * 1024,
            max_runs_per_owner: 10_000,
            max_bytes_per_owner: 32 * 1024 * 1024,
            ttl: Duration::from_secs(3600),
        }
    }
}

/// Which bound of [`RunLimits`] refused a run event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RunLimit {
    /// [`RunLimits::max_runs`]: that many runs are in progress.
    Runs,
    /// [`RunLimits::max_bytes`]: the run state in progress holds that many bytes.
    Bytes,
    /// [`RunLimits::max_runs_per_owner`]: the publisher has that many runs in progress.
    OwnerRuns,
    /// [`RunLimits::max_bytes_per_owner`]: the publisher's runs in progress hold that many
    /// bytes.
    OwnerBytes,
}

impl RunLimit {
    /// Every bound, in the order of [`RunStats::refused`].
    pub const ALL: [RunLimit; 4] = [
        RunLimit::Runs,
        RunLimit::Bytes,
        RunLimit::OwnerRuns,
        RunLimit::OwnerBytes,
    ];

    /// A short name for metrics and error messages: `runs`, `bytes`, `owner_runs`,
    /// `owner_bytes`.
    pub fn name(self) -> &'static str {
        match self {
            RunLimit::Runs => "runs",
            RunLimit::Bytes => "bytes",
            RunLimit::OwnerRuns => "owner_runs",
            RunLimit::OwnerBytes => "owner_bytes",
        }
    }

    /// The bound named `name` (see [`Self::name`]).
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|l| l.name() == name)
    }

    /// The position of this bound in [`Self::ALL`].
    pub fn index(self) -> usize {
        match self {
            RunLimit::Runs => 0,
            RunLimit::Bytes => 1,
            RunLimit::OwnerRuns => 2,
            RunLimit::OwnerBytes => 3,
        }
    }
}

impl fmt::Display for RunLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RunLimit::Runs => "the most runs in progress (max_runs) are",
            RunLimit::Bytes => "the most bytes of run state (max_bytes) are",
            RunLimit::OwnerRuns => "this publisher's share of runs (max_runs_per_owner) is",
            RunLimit::OwnerBytes => {
                "this publisher's share of run-state bytes (max_bytes_per_owner) is"
            }
        })?;
        f.write_str(" in use")
    }
}

/// The run state a broker holds and what it refused. Sizes are what this process knows
/// (a broker whose state lives elsewhere reports what its calls saw); counters only grow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct RunStats {
    /// Runs held, in progress and finished.
    pub runs: u64,
    /// Runs in progress.
    pub live_runs: u64,
    /// Bytes of run state held (see [`RunLimits::max_bytes`]).
    pub bytes: u64,
    /// Finished runs forgotten to make room at a bound.
    pub evicted: u64,
    /// Runs forgotten [`RunLimits::ttl`] after their last event.
    pub expired: u64,
    /// Guarded events refused for breaking their run, by kind, in the order of
    /// [`RunViolation::NAMES`].
    pub violations: [u64; RunViolation::NAMES.len()],
    /// Guarded events refused at a bound, by bound, in the order of [`RunLimit::ALL`].
    pub refused: [u64; 4],
}

impl RunStats {
    /// Guarded events refused for `violation`'s kind.
    pub fn violations_of(&self, violation: &RunViolation) -> u64 {
        self.violations[violation.index()]
    }

    /// Guarded events refused at `limit`.
    pub fn refused_at(&self, limit: RunLimit) -> u64 {
        self.refused[limit.index()]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publisher_ids_follow_the_identifier_rule() {
        assert_eq!(
            PublisherId::new("key:0123").map(|p| p.to_string()),
            Ok("key:0123".into())
        );
        assert!(PublisherId::new("").is_err());
        assert!(PublisherId::new("a\nb").is_err());
        assert!(PublisherId::new("x".repeat(257)).is_err());
        assert_eq!(PublisherId::embedded().as_str(), "embedded");
    }

    #[test]
    fn limits_have_names_and_places() {
        for (i, l) in RunLimit::ALL.into_iter().enumerate() {
            assert_eq!(l.index(), i);
            assert_eq!(RunLimit::from_name(l.name()), Some(l));
        }
        assert!(
            RunLimit::OwnerRuns
                .to_string()
                .contains("max_runs_per_owner")
        );
    }

    #[test]
    fn a_run_costs_its_ids_and_open_calls() {
        let user = UserId::new("alice").expect("id");
        let run: RunId = "r1".parse().expect("id");
        assert_eq!(run_base_bytes(&user, &run), RUN_OVERHEAD_BYTES + 7);
        assert_eq!(tool_call_bytes("tc1"), TOOL_CALL_OVERHEAD_BYTES + 3);
    }
}
