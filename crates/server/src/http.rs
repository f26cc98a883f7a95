//! Plain HTTP endpoints: `/healthz`, `/readyz`, `/metrics`, and the admin API behind an
//! API key (`GET /v1/users/{user_id}/connections`, `POST /v1/users/{user_id}/disconnect`).

use std::sync::Arc;

use agentwire_protocol::{CloseCode, UserId};
use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::auth::KeyScope;
use crate::server::AppState;

/// A JSON error body: `{"error": kind, "message": …}`.
pub(crate) fn json_error(status: StatusCode, kind: &str, message: &str) -> Response {
    (status, Json(json!({ "error": kind, "message": message }))).into_response()
}

/// `GET /healthz`: the process is alive.
#[utoipa::path(get, path = "/healthz", tag = "operations",
    responses((status = 200, description = "The process is alive", body = crate::openapi::StatusDoc)))]
pub(crate) async fn healthz() -> Response {
    Json(json!({ "status": "ok" })).into_response()
}

/// `GET /readyz`: 200 while the broker answers and the server is not shutting down.
#[utoipa::path(get, path = "/readyz", tag = "operations", responses(
    (status = 200, description = "Ready: the broker answers", body = crate::openapi::StatusDoc),
    (status = 503, description = "The broker is unavailable, or the server is shutting down", body = crate::openapi::StatusDoc)))]
pub(crate) async fn readyz(State(app): State<Arc<AppState>>) -> Response {
    if app.is_shutting_down() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "status": "shutting_down" })),
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

/// `GET /metrics`: Prometheus text.
#[utoipa::path(get, path = "/metrics", tag = "operations", responses(
    (status = 200, description = "Every metric (docs/operations.md), OpenMetrics text",
        content_type = "application/openmetrics-text")))]
pub(crate) async fn metrics(State(app): State<Arc<AppState>>) -> Response {
    let body = app.metrics.render();
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
        )],
        body,
    )
        .into_response()
}

/// A refused admin request, answered as a JSON error.
#[derive(Debug)]
pub(crate) struct ApiError {
    status: StatusCode,
    kind: &'static str,
    message: String,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut r = json_error(self.status, self.kind, &self.message);
        if self.status == StatusCode::UNAUTHORIZED {
            r.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        r
    }
}

fn unauthorized(message: &str) -> ApiError {
    ApiError {
        status: StatusCode::UNAUTHORIZED,
        kind: "unauthorized",
        message: message.to_owned(),
    }
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

/// Checks `Authorization: Bearer <api key>`: a full-access key passes, a publish-only one
/// is forbidden.
fn admin_auth(app: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    if !app.auth.has_api_keys() {
        return Err(unauthorized("no API key is configured (--api-keys)"));
    }
    match bearer_key(headers).map(|k| app.auth.api_key(k)) {
        None => Err(unauthorized("send `Authorization: Bearer <api key>`")),
        Some(Some(k)) if k.scope == KeyScope::Full => Ok(()),
        Some(Some(_)) => Err(ApiError {
            status: StatusCode::FORBIDDEN,
            kind: "forbidden",
            message: "this API key may only publish (--publish-api-keys)".to_owned(),
        }),
        Some(None) => Err(unauthorized("unknown API key")),
    }
}

fn user_from_path(id: &str) -> Result<UserId, ApiError> {
    UserId::new(id).map_err(|e| ApiError {
        status: StatusCode::BAD_REQUEST,
        kind: "bad_request",
        message: format!("path `user_id`: a user id {e}"),
    })
}

/// `GET /v1/users/{user_id}/connections`: the user's live connections on this node.
#[utoipa::path(get, path = "/v1/users/{user_id}/connections", tag = "admin",
    security(("api_key" = [])),
    params(("user_id" = String, Path, description = "The user")),
    responses(
        (status = 200, description = "The user's live connections on this node", body = crate::openapi::ConnectionsDoc),
        (status = 400, description = "Not a valid user id", body = crate::openapi::AdminErrorDoc),
        (status = 401, description = "No API key, or an unknown one", body = crate::openapi::AdminErrorDoc),
        (status = 403, description = "A publish-only API key", body = crate::openapi::AdminErrorDoc)))]
pub(crate) async fn user_connections(
    State(app): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    admin_auth(&app, &headers)?;
    let user = user_from_path(&id)?;
    let connections: Vec<_> = app
        .manager
        .connections_of(&user)
        .into_iter()
        .map(|c| {
            json!({
                "connection_id": c.connection_id,
                "connected_for_ms": u64::try_from(c.connected_for.as_millis()).unwrap_or(u64::MAX),
                "acked_seq": c.acked_seq,
                "queued_frames": c.queued_frames,
                "queued_bytes": c.queued_bytes,
            })
        })
        .collect();
    Ok(Json(json!({ "user_id": user, "connections": connections })).into_response())
}

/// `POST /v1/users/{user_id}/disconnect`: closes the user's connections with 1001 so their
/// clients reconnect and resume.
#[utoipa::path(post, path = "/v1/users/{user_id}/disconnect", tag = "admin",
    security(("api_key" = [])),
    params(("user_id" = String, Path, description = "The user")),
    responses(
        (status = 200, description = "How many connections were closed with 1001", body = crate::openapi::DisconnectedDoc),
        (status = 400, description = "Not a valid user id", body = crate::openapi::AdminErrorDoc),
        (status = 401, description = "No API key, or an unknown one", body = crate::openapi::AdminErrorDoc),
        (status = 403, description = "A publish-only API key", body = crate::openapi::AdminErrorDoc)))]
pub(crate) async fn disconnect_user(
    State(app): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    admin_auth(&app, &headers)?;
    let user = user_from_path(&id)?;
    let n = app.manager.disconnect_user(&user, CloseCode::GoingAway);
    tracing::info!(%user, connections = n, "disconnected by an operator");
    Ok(Json(json!({ "user_id": user, "disconnected": n })).into_response())
}
