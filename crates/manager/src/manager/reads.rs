//! What callers read from the broker behind the manager, which keeps the broker handle to
//! itself: a user's history, the acceptance of an `event_id`, the broker's and the control
//! channel's health.

use agentwire_protocol::{EventId, Seq, UserId};

use super::UnifiedWebSocketManager;
use crate::broker::{Accepted, BrokerError};

impl UnifiedWebSocketManager {
    /// Up to `limit` events of `user` with `seq > after`, and the stream's epoch and
    /// newest `seq` (see [`Broker::history`](crate::Broker::history)).
    ///
    /// # Errors
    /// [`BrokerError`] when history could not be read.
    pub async fn history(
        &self,
        user: &UserId,
        after: Seq,
        limit: usize,
    ) -> Result<crate::broker::History, BrokerError> {
        self.inner.broker.history(user, after, limit).await
    }

    /// The first acceptance of `event_id` in `user`'s stream while it is inside the
    /// broker's dedupe window (see [`Broker::lookup`](crate::Broker::lookup)).
    ///
    /// # Errors
    /// [`BrokerError`] when the broker could not be asked.
    pub async fn lookup_event(
        &self,
        user: &UserId,
        event_id: &EventId,
    ) -> Result<Option<Accepted>, BrokerError> {
        self.inner.broker.lookup(user, event_id).await
    }

    /// Whether the broker can accept events now (for readiness checks).
    ///
    /// # Errors
    /// The [`BrokerError`] that makes it unavailable.
    pub async fn broker_health(&self) -> Result<(), BrokerError> {
        self.inner.broker.health().await
    }

    /// Whether this node's control channel to the other nodes of its cluster is up (for
    /// readiness checks); `Ok` for a manager without one.
    ///
    /// # Errors
    /// The [`BrokerError`] of [`ClusterControl::health`](crate::ClusterControl::health).
    pub fn cluster_health(&self) -> Result<(), BrokerError> {
        self.inner.control.as_ref().map_or(Ok(()), |c| c.health())
    }
}
