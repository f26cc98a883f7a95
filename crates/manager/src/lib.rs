//! `agentwire-manager`: the connection registry, the per-user event streams and the broker
//! seam of agentwire.
//!
//! What it is: `UnifiedWebSocketManager`, which knows who is connected and routes every
//! event to its user's connections, and the `Broker` trait that owns each user's ordered,
//! resumable stream.
//!
//! What it is not: it holds bounded queues, never sockets, and knows nothing of HTTP.
//!
//! Key decision: events reach connections only through the broker subscription, never
//! straight from `emit`, so one node and many nodes deliver the same way.
