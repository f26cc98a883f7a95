//! The emitter's errors: [`EmitterError`], why an emitter did not emit an event, and
//! [`TooManyRuns`], why a pool refused a new run.
//!
//! What it is not: a mapping to HTTP statuses or close codes; only the server makes those.
//! Both types sit below the emitter and the pool so that neither imports the other's
//! module for them.

use agentwire_manager::EmitError;
use agentwire_protocol::{Event, EventId, RunViolation};

/// Why an emitter did not emit an event.
///
/// The run's state never moves on an error. What the caller does next depends on the
/// variant: a [`Violation`](Self::Violation), [`Refused`](Self::Refused) or
/// [`Failed`](Self::Failed) event is gone for good; an [`Unsettled`](Self::Unsettled)
/// one is kept by the emitter and published again by
/// [`settle`](crate::UnifiedWebSocketEmitter::settle) or by the run's next emit — never
/// emit it again yourself, which would make it a second event.
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
    /// The broker refused the event with a permanent error: it was not accepted, nothing
    /// of it remains in the emitter, and the run's state is unchanged.
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
    /// Every attempt failed with a transient error, so the broker may or may not have
    /// taken the event (an answer can be lost after the broker stored it). The event stays
    /// in the emitter, unsettled: [`settle`](crate::UnifiedWebSocketEmitter::settle), the
    /// run's next emit, or (for a pooled emitter) the pool's cleanup task publishes it
    /// again under `event_id` — which the broker's dedupe makes safe — and only then moves
    /// the run's state on. Until then the run's state is as before the event.
    #[error("event {event_id} unsettled after {attempts} attempt(s): {source}")]
    Unsettled {
        /// The id of the unsettled event, which every later attempt reuses.
        event_id: EventId,
        /// Attempts made.
        attempts: u32,
        /// The last attempt's error.
        source: EmitError,
    },
    /// An earlier event of the run is unsettled and could not be settled now (its
    /// attempts failed transiently again), so this event was neither checked nor
    /// published and is not kept. The earlier event stays unsettled; emit this one again
    /// once the broker is back.
    #[error(
        "event not emitted: the run's earlier event {event_id} is still unsettled after \
         {attempts} more attempt(s): {source}"
    )]
    EarlierUnsettled {
        /// The id of the earlier, unsettled event.
        event_id: EventId,
        /// Attempts made to settle it in this call.
        attempts: u32,
        /// The last attempt's error.
        source: EmitError,
    },
    /// The run is new and its pool is full of live runs, so it was refused rather than
    /// evicting one. Nothing was published.
    #[error(transparent)]
    TooManyRuns(#[from] TooManyRuns),
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

/// A [`crate::WebSocketEmitterPool`] refused a new run: it holds
/// [`max_emitters`](crate::PoolConfig::max_emitters) runs and every one of them is live
/// (started and not finished, holding an unsettled event, or held outside the pool), and
/// a live run is never evicted. Counted in [`crate::PoolStats::refused`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "the emitter pool holds its limit of {limit} live runs; a new run must wait for one to end"
)]
#[non_exhaustive]
pub struct TooManyRuns {
    /// The pool's bound, `max_emitters`.
    pub limit: usize,
}
