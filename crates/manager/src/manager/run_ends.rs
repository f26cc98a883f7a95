//! Run ends: one observer the manager tells of every run's terminal event that the broker
//! accepted through this manager for the first time (a duplicate publish is not told).
//! The broker accepts one terminal event per guarded run (rule 11 of [`crate::Broker`]),
//! and a stalled run's `agent_error` is published the same way by the one node whose stall
//! claim won (rule 12), so across the nodes sharing a broker exactly one node hears of each
//! run's end: what the server's receipt webhook relies on to send one notice per run.

use std::sync::Arc;

use agentwire_protocol::{Epoch, EventType, RunId, RunStep, Seq, UserId};

use super::{PreparedEvent, UnifiedWebSocketManager};
use crate::broker::Accepted;

/// A run's terminal event, as the broker accepted it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RunEnded {
    /// Whose run.
    pub user_id: UserId,
    /// The run.
    pub run_id: RunId,
    /// The stream the terminal event belongs to.
    pub epoch: Epoch,
    /// Where the terminal event sits in the user's stream.
    pub seq: Seq,
    /// `agent_completed` or `agent_error`.
    pub event_type: EventType,
    /// Whether the server ended the run as stalled (its watchdog's `agent_error`).
    pub stalled: bool,
}

/// What the manager calls for each [`RunEnded`].
pub(crate) type RunEndObserver = Arc<dyn Fn(RunEnded) + Send + Sync>;

/// A second observer was offered; the first stays.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("this manager already has a run-end observer")]
#[non_exhaustive]
pub struct ObserverTaken;

impl UnifiedWebSocketManager {
    /// Sets the one observer of run ends: `observer` is called, on the publishing task and
    /// so without blocking, for each run's terminal event this manager published and the
    /// broker accepted for the first time.
    ///
    /// # Errors
    /// [`ObserverTaken`] when the manager has one already.
    pub fn observe_run_ends(
        &self,
        observer: impl Fn(RunEnded) + Send + Sync + 'static,
    ) -> Result<(), ObserverTaken> {
        self.inner
            .run_end_observer
            .set(Arc::new(observer))
            .map_err(|_| ObserverTaken)
    }

    /// Tells the observer of `event` when it ended its run.
    pub(super) fn tell_run_end(&self, event: &PreparedEvent, accepted: &Accepted) {
        let Some(observer) = self.inner.run_end_observer.get() else {
            return;
        };
        let (Some(run_id), Some(RunStep::End(_))) = (event.run_id(), event.run_step()) else {
            return;
        };
        observer(RunEnded {
            user_id: event.user_id().clone(),
            run_id: run_id.clone(),
            epoch: accepted.epoch.clone(),
            seq: accepted.seq,
            event_type: event.event_type(),
            stalled: event.is_stall_claim(),
        });
    }
}
