//! `GET /healthz` (the process is alive) and `GET /readyz` (the broker answers, the server
//! is not draining, and tokens can be verified).

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::ApiState;

/// `GET /healthz`: the process is alive.
#[utoipa::path(get, path = "/healthz", tag = "operations",
    responses((status = 200, description = "The process is alive", body = super::schema::StatusDoc)))]
pub(crate) async fn healthz() -> Response {
    Json(json!({ "status": "ok" })).into_response()
}

/// `GET /readyz`: 200 while the broker answers, the server is not shutting down, and —
/// with `--jwt-jwks-url` — a key set has been fetched at least once. With `--broker redis`
/// the broker answers when Redis answers `PING` within `--redis-command-timeout` and this
/// node's pub/sub connection is up.
#[utoipa::path(get, path = "/readyz", tag = "operations", responses(
    (status = 200, description = "Ready: the broker answers (with --broker redis: Redis answers PING and this node's subscriptions are in place)", body = super::schema::StatusDoc),
    (status = 503, description = "The broker is unavailable (Redis unreachable, paused or reconnecting; `reason` says which), the server is shutting down, or no JWKS key set has been fetched yet", body = super::schema::StatusDoc)))]
pub(crate) async fn readyz(State(app): State<Arc<ApiState>>) -> Response {
    if app.draining.is_set() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "status": "shutting_down" })),
        )
            .into_response();
    }
    if let Some(why) = app.auth.not_ready() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "status": "unavailable", "reason": why })),
        )
            .into_response();
    }
    match app.manager.broker_health().await {
        Ok(()) => Json(json!({ "status": "ready" })).into_response(),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "status": "unavailable", "reason": e.to_string() })),
        )
            .into_response(),
    }
}
