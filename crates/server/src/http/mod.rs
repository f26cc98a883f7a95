//! What every HTTP handler shares, below all of them: the JSON error answer, the bearer
//! credential of a request, and the flag that says the server is draining.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Json;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// A JSON error body: `{"error": kind, "message": …}`.
pub(crate) fn json_error(status: StatusCode, kind: &str, message: &str) -> Response {
    (status, Json(json!({ "error": kind, "message": message }))).into_response()
}

/// The error body of `/ws` and the admin endpoints (for the OpenAPI document).
#[allow(dead_code, reason = "a schema for the OpenAPI document only")]
#[derive(serde::Serialize, utoipa::ToSchema)]
pub(crate) struct AdminErrorDoc {
    /// A machine-readable kind (`unauthorized`, `forbidden`, `bad_request`, …).
    error: String,
    /// What is wrong.
    message: String,
}

/// The credential of `Authorization: Bearer <credential>`, when the header has that form.
pub(crate) fn bearer_key(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, key)| key.trim())
}

/// Whether the server is shutting down: set once by the drain, read by `/readyz` and the
/// `/ws` handshake. Clones share the flag.
#[derive(Debug, Clone, Default)]
pub(crate) struct Draining(Arc<AtomicBool>);

impl Draining {
    pub(crate) fn is_set(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }

    pub(crate) fn set(&self) {
        self.0.store(true, Ordering::Release);
    }
}
