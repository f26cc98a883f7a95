//! `GET /healthz` (the process is alive) and `GET /readyz` (the broker answers, the cluster
//! control channel is up, the server is not draining, and tokens can be verified).

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
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
/// node's pub/sub connection is up, and the node is ready only while its control channel
/// (the subscription carrying the admin's disconnects and other nodes' evictions) is up.
/// An unavailable answer carries `Retry-After: 1`.
#[utoipa::path(get, path = "/readyz", tag = "operations", responses(
    (status = 200, description = "Ready: the broker answers (with --broker redis: Redis answers PING, this node's subscriptions and its control channel are in place)", body = super::schema::StatusDoc),
    (status = 503, description = "The broker is unavailable (Redis unreachable, paused or reconnecting; `reason` says which), the cluster control channel is down (`reason` says so), no JWKS key set has been fetched yet (all with Retry-After), or the server is shutting down", body = super::schema::StatusDoc,
        headers(("Retry-After" = u32, description = "Seconds to wait before asking again (not when shutting down)")))))]
pub(crate) async fn readyz(State(app): State<Arc<ApiState>>) -> Response {
    if app.draining.is_set() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "status": "shutting_down" })),
        )
            .into_response();
    }
    if let Some(why) = app.auth.not_ready() {
        return unavailable(why);
    }
    if let Err(e) = app.manager.broker_health().await {
        return unavailable(e.to_string());
    }
    if let Err(e) = app.manager.cluster_health() {
        return unavailable(e.to_string());
    }
    Json(json!({ "status": "ready" })).into_response()
}

/// A 503 that names `reason` and asks to retry in a second.
fn unavailable(reason: String) -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        [(header::RETRY_AFTER, "1")],
        Json(json!({ "status": "unavailable", "reason": reason })),
    )
        .into_response()
}
