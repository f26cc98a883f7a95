//! `agentwire-emitter`: the API agents call to emit the events of one run.
//!
//! What it is: [`UnifiedWebSocketEmitter`], bound to a [`RunContext`] (user, thread, run,
//! optional request id), with one method per event — the five critical events
//! `agent_started`, `agent_thinking`, `tool_executing`, `tool_completed` and
//! `agent_completed`, plus `agent_error` and `custom`; retry with exponential backoff and
//! jitter ([`RetryPolicy`]); per-emitter and aggregate [`EmitterMetrics`]; the
//! [`WebSocketEmitterFactory`] and the [`WebSocketEmitterPool`].
//!
//! What it is not: a transport. Every event goes through the manager's `prepare_event`
//! and `emit_prepared`, the two halves of `emit_critical_event`; there is no second path
//! to the wire.
//!
//! Key decisions:
//! - One run lifecycle for everyone: every event carries a run guard
//!   (`PreparedEvent::guarded`), and the broker checks it against the run's state in the
//!   same atomic step as the append — the state the publish API's events and every other
//!   emitter of the run (in this process or another, on any node) move too. An emitter
//!   mirrors what the broker accepted ([`UnifiedWebSocketEmitter::run_state`]) and refuses
//!   at once only what follows a run's end it saw. A run counts against the factory's
//!   publisher ([`WebSocketEmitterFactory::with_publisher`]) in the broker's run-state
//!   bounds, and the broker forgets a run its ttl (`RunLimits::ttl`, default 1 h) after its
//!   last event.
//! - A retry reuses the event's `event_id` (the event is prepared once, published per
//!   attempt), so the broker's dedupe makes a retry safe after a success the emitter
//!   never saw.
//! - An event whose outcome is unknown — every attempt failed transiently, or the emit
//!   was cancelled — stays in the emitter, *unsettled*
//!   ([`EmitterError::Unsettled`]). [`UnifiedWebSocketEmitter::settle`], or the run's next
//!   emit before its own event, publishes it again under the same `event_id` and applies
//!   its transition; nothing of the run overtakes it ([`EmitterError::EarlierUnsettled`]).
//!   So a lost answer never shows the user an event twice, and the run's state never
//!   falls behind what the broker holds. One unsettled event per run at most.
//! - The pool never evicts a live run: a run that is going keeps its one emitter however
//!   many other runs come and go and however long it is quiet; it leaves at its terminal
//!   event. At `max_emitters` live runs a *new* run is refused ([`TooManyRuns`]) — a typed
//!   error the caller sees, instead of a run that silently loses its state.
//! - The retry loop is [`backon`]'s rather than our own: it is small, maintained, has the
//!   exponential backoff with jitter we need, takes tokio's sleep (so tests run on the
//!   paused clock), and its `when`/`notify` hooks are exactly "retry only transient
//!   errors" and "count every retry".
//!
//! ```
//! use agentwire_emitter::{PoolConfig, RunContext, WebSocketEmitterFactory, WebSocketEmitterPool};
//! use agentwire_manager::UnifiedWebSocketManager;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let pool = WebSocketEmitterPool::new(
//!     WebSocketEmitterFactory::new(UnifiedWebSocketManager::in_memory()),
//!     PoolConfig::default(),
//! );
//! let run = RunContext::new("alice".parse()?, "t1".parse()?, "r1".parse()?);
//! pool.get_emitter(&run)?.emit_agent_started("triage").await?;
//! // Another part of the runtime reporting on the same run shares its emitter and state.
//! pool.get_emitter(&run)?
//!     .emit_tool_executing("tc1", "search", serde_json::json!({"q": "rust"}))
//!     .await?;
//! assert_eq!(pool.stats().reused, 1);
//! assert_eq!(pool.factory().metrics().events_total(), 2);
//! # Ok(())
//! # }
//! ```

mod context;
mod emitter;
mod error;
mod factory;
mod metrics;
mod pool;
mod retry;

pub use context::{RunContext, RunKey};
pub use emitter::UnifiedWebSocketEmitter;
pub use error::{EmitterError, TooManyRuns};
pub use factory::WebSocketEmitterFactory;
pub use metrics::EmitterMetrics;
pub use pool::{PoolConfig, PoolStats, WebSocketEmitterPool};
pub use retry::RetryPolicy;
