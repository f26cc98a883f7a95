//! The admin API behind a full-access API key: `GET /v1/users/{user_id}/connections`,
//! `POST /v1/users/{user_id}/disconnect`.

use std::sync::Arc;

use agentwire_protocol::{CloseCode, UserId};
use axum::Json;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::ApiState;
use crate::auth::{KeyScope, authorize};
use crate::http::{ApiError, ErrorBody, ErrorCode};

/// The user of the path, once the caller proved full access.
fn admin_user(
    app: &ApiState,
    headers: &HeaderMap,
    id: Result<Path<String>, PathRejection>,
) -> Result<UserId, ApiError> {
    authorize(&app.auth, headers, KeyScope::Full)?;
    let Path(id) = id.map_err(|e| ApiError::new(ErrorCode::BadRequest, e.body_text()))?;
    user_from_path(&id)
}

fn user_from_path(id: &str) -> Result<UserId, ApiError> {
    UserId::new(id)
        .map_err(|e| ApiError::new(ErrorCode::BadRequest, format!("a user id {e}")).at("user_id"))
}

/// `GET /v1/users/{user_id}/connections`: the user's live connections on this node.
#[utoipa::path(get, path = "/v1/users/{user_id}/connections", tag = "admin",
    security(("api_key" = [])),
    params(("user_id" = String, Path, description = "The user")),
    responses(
        (status = 200, description = "The user's live connections on this node", body = super::schema::ConnectionsDoc),
        (status = 400, description = "Not a valid user id", body = ErrorBody),
        (status = 401, description = "No API key, or an unknown one", body = ErrorBody),
        (status = 403, description = "A publish-only API key", body = ErrorBody)))]
pub(crate) async fn user_connections(
    State(app): State<Arc<ApiState>>,
    headers: HeaderMap,
    id: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let user = admin_user(&app, &headers, id)?;
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
        (status = 200, description = "How many connections were closed with 1001", body = super::schema::DisconnectedDoc),
        (status = 400, description = "Not a valid user id", body = ErrorBody),
        (status = 401, description = "No API key, or an unknown one", body = ErrorBody),
        (status = 403, description = "A publish-only API key", body = ErrorBody)))]
pub(crate) async fn disconnect_user(
    State(app): State<Arc<ApiState>>,
    headers: HeaderMap,
    id: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let user = admin_user(&app, &headers, id)?;
    let n = app.manager.disconnect_user(&user, CloseCode::GoingAway);
    tracing::info!(%user, connections = n, "disconnected by an operator");
    Ok(Json(json!({ "user_id": user, "disconnected": n })).into_response())
}
