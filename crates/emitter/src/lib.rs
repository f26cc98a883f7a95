//! `agentwire-emitter`: the API agents call to emit events for one run.
//!
//! What it is: `UnifiedWebSocketEmitter` (the five critical event methods plus errors and
//! custom events, bound to a user/thread/run context), retry with exponential backoff, and
//! the emitter factory and pool.
//!
//! What it is not: a transport. Every event goes through the manager's
//! `emit_critical_event`; there is no second path to the wire.
//!
//! Key decision: a retry reuses the event's `event_id`, so the broker's dedupe makes retries
//! safe after a success the emitter never saw.
