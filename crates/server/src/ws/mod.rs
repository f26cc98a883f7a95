//! `GET /ws`: the handshake (token, Origin, resume point) and, per connection, one reader
//! task and one batching writer.
//!
//! The writer is the only code that writes to the socket: it drains the connection's
//! queue in batches (each batch one vectored write, see [`wire`]), sends protocol
//! pings and the pongs the reader asks for, and ends the connection with the close code
//! the manager decided — all under a write timeout, so a peer that stopped reading is
//! dropped even when no close frame can reach it. The reader answers client frames by
//! queueing control frames through the manager, never by writing itself.
//!
//! Files, top to bottom: `handshake` (the HTTP side of `/ws`) → `session` (one
//! connection's life) → `reader`, `writer` → `news` (what those two share) → `wire` (the
//! upgrade and the frames the server writes); `metrics`, `cooldown` (users refused for a
//! while after a frame flood) and `format` (agentwire's frames or their AG-UI projection,
//! also used by `/v1/stream`) beside them.

use std::sync::Arc;
use std::time::Duration;

use agentwire_manager::UnifiedWebSocketManager;

use crate::auth::Auth;
use crate::http::{AllowedOrigins, Draining};

mod cooldown;
mod format;
pub(crate) mod handshake;
mod metrics;
mod news;
mod reader;
mod session;
mod wire;
mod writer;

pub(crate) use cooldown::Cooldowns;
pub(crate) use format::{Format, Projector, close_event};
pub(crate) use metrics::{Rejection, WsMetrics, close_label};

/// What the WebSocket endpoint needs: the manager, the verifier, its settings and
/// metrics, and whether the server is draining.
#[derive(Debug)]
pub(crate) struct WsState {
    pub(crate) manager: UnifiedWebSocketManager,
    pub(crate) auth: Arc<Auth>,
    pub(crate) ws: WsSettings,
    pub(crate) metrics: WsMetrics,
    pub(crate) draining: Draining,
    /// Users refused for a while after a frame flood (`--client-frame-cooldown`).
    pub(crate) cooldowns: Cooldowns,
}

impl WsState {
    pub(crate) fn is_shutting_down(&self) -> bool {
        self.draining.is_closing()
    }
}

/// Per-connection settings of the WebSocket endpoint.
#[derive(Debug, Clone)]
pub(crate) struct WsSettings {
    pub(crate) write_timeout: Duration,
    pub(crate) close_timeout: Duration,
    pub(crate) write_batch_frames: usize,
    pub(crate) read_buffer_size: usize,
    pub(crate) max_message_size: usize,
    pub(crate) max_frame_size: usize,
    pub(crate) max_bad_frames: u32,
    pub(crate) client_frame_rate: u32,
    pub(crate) client_frame_burst: u32,
    pub(crate) client_frame_cooldown: Duration,
    pub(crate) resume_wait: Duration,
    pub(crate) allowed_origins: AllowedOrigins,
}
