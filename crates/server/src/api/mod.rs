//! The HTTP API: publishing events (`POST /v1/events`), reading a user's history, the admin
//! endpoints, health and readiness, with what only they use: the per-key rate limit, the
//! run-lifecycle table and the schemas of the OpenAPI document.

use std::sync::Arc;

use agentwire_manager::UnifiedWebSocketManager;

use crate::auth::Auth;
use crate::http::Draining;

pub(crate) mod admin;
pub(crate) mod health;
pub(crate) mod history;
pub(crate) mod publish;
pub(crate) mod receipts;
pub(crate) mod runs;
pub(crate) mod schema;

#[cfg(feature = "webhook")]
pub(crate) use publish::receipt_path;
pub(crate) use publish::{PublishApi, PublishLimits, PublishMetrics};
pub(crate) use receipts::ReceiptWaits;

/// What the API's handlers need.
#[derive(Debug)]
pub(crate) struct ApiState {
    pub(crate) manager: UnifiedWebSocketManager,
    pub(crate) auth: Arc<Auth>,
    pub(crate) publish: PublishApi,
    pub(crate) receipts: ReceiptWaits,
    pub(crate) draining: Draining,
}
