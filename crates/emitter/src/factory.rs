//! `WebSocketEmitterFactory`: makes emitters that share a manager, a retry policy and the
//! aggregate metrics.
//!
//! What it is not: a cache. Every call makes a new emitter with a fresh run state; the
//! pool is what reuses them.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use agentwire_manager::{PublisherId, UnifiedWebSocketManager};
use agentwire_protocol::RunState;

use crate::context::RunContext;
use crate::emitter::{FinishedRuns, UnifiedWebSocketEmitter};
use crate::metrics::{Counters, EmitterMetrics};
use crate::retry::RetryPolicy;

/// Creates [`UnifiedWebSocketEmitter`]s over one manager, and sums their metrics.
///
/// A cheap handle: clones share the aggregate metrics.
#[derive(Debug, Clone)]
pub struct WebSocketEmitterFactory {
    manager: UnifiedWebSocketManager,
    publisher: PublisherId,
    retry: RetryPolicy,
    aggregate: Arc<Counters>,
    created: Arc<AtomicU64>,
}

impl WebSocketEmitterFactory {
    /// A factory over `manager` with the default [`RetryPolicy`], whose runs count
    /// against the publisher [`PublisherId::embedded`].
    pub fn new(manager: UnifiedWebSocketManager) -> Self {
        WebSocketEmitterFactory {
            manager,
            publisher: PublisherId::embedded(),
            retry: RetryPolicy::default(),
            aggregate: Arc::default(),
            created: Arc::default(),
        }
    }

    /// The same factory making emitters with `retry`.
    #[must_use]
    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// The same factory making emitters whose runs count against `publisher` in the
    /// broker's run-state bounds (its share, `RunLimits::max_runs_per_owner`): e.g. one
    /// name per agent service, equal on every node of it.
    #[must_use]
    pub fn with_publisher(mut self, publisher: PublisherId) -> Self {
        self.publisher = publisher;
        self
    }

    /// The publisher the runs of new emitters count against.
    pub fn publisher(&self) -> &PublisherId {
        &self.publisher
    }

    /// A new emitter for the run `context`, starting in `RunState::NotStarted`.
    pub fn create_emitter(&self, context: RunContext) -> UnifiedWebSocketEmitter {
        self.create(context, RunState::NotStarted, None)
    }

    /// A new emitter for the run `context` in `state`, telling `pool` when the run ends.
    pub(crate) fn create(
        &self,
        context: RunContext,
        state: RunState,
        pool: Option<Weak<dyn FinishedRuns>>,
    ) -> UnifiedWebSocketEmitter {
        self.created.fetch_add(1, Ordering::Relaxed);
        UnifiedWebSocketEmitter::new(
            self.manager.clone(),
            self.publisher.clone(),
            context,
            self.retry,
            self.aggregate.clone(),
            state,
            pool,
        )
    }

    /// The manager emitters publish through.
    pub fn manager(&self) -> &UnifiedWebSocketManager {
        &self.manager
    }

    /// The retry policy of new emitters.
    pub fn retry_policy(&self) -> &RetryPolicy {
        &self.retry
    }

    /// The counters of every emitter this factory made, summed.
    pub fn metrics(&self) -> EmitterMetrics {
        self.aggregate.snapshot()
    }

    /// How many emitters this factory made.
    pub fn emitters_created(&self) -> u64 {
        self.created.load(Ordering::Relaxed)
    }
}
