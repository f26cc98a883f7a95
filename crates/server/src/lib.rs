//! `agentwire-server`: the axum application that puts the manager on the network —
//! WebSocket I/O, authentication, the publish HTTP API, health, metrics, configuration and
//! graceful shutdown.
//!
//! What it is not: the owner of routing or ordering; those belong to the manager and its
//! broker. It is the only crate that knows axum or sockets.
//!
//! Key decision: one reader and one batching writer per connection; the fan-out path never
//! awaits a socket.
