//! `GET /v1/stream`: the user's events as Server-Sent Events, for clients that cannot keep
//! a WebSocket (proxies that break them) and for `EventSource`.
//!
//! The same connection as `/ws` under another transport: the same token carriers (minus
//! the subprotocol a browser's `EventSource` cannot send), the same registration in the
//! manager (so SSE and WebSocket connections count against the same per-user and node
//! limits), the same queue bounds and slow-consumer policy, the same write timeout and
//! heartbeat interval. What differs is the direction: the peer sends nothing after its
//! request, so resume comes from `Last-Event-ID` (every event's SSE `id` is
//! `<epoch>:<seq>`), heartbeats are SSE comments, and a close code becomes a final `close`
//! event before the answer ends.
//!
//! hyper writes the answer's body, so the stream's writer hands it whole chunks through a
//! channel of one; a chunk hyper does not take within the write timeout cuts the TCP
//! connection through its slot at the front door.
//!
//! Files: `handshake` (the request, up to the manager's registration) → `writer` (the
//! stream's life) → `encode` (the bytes of each SSE message); `metrics` beside them.

use std::sync::Arc;

use crate::ws::WsState;

mod encode;
pub(crate) mod handshake;
mod metrics;
mod writer;

pub(crate) use metrics::SseMetrics;

/// What `/v1/stream` needs: everything `/ws` has (manager, verifier, settings, draining)
/// and its own metrics.
#[derive(Debug)]
pub(crate) struct SseState {
    pub(crate) conn: Arc<WsState>,
    pub(crate) metrics: SseMetrics,
}
