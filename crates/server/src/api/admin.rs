//! The admin API behind a full-access API key: `GET /v1/users/{user_id}/connections`,
//! `POST /v1/users/{user_id}/disconnect`.

use std::sync::Arc;

use agentwire_manager::{BrokerError, NodeId};
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

/// The answer to a control channel that could not carry an admin request (503).
fn control_problem(e: &BrokerError) -> ApiError {
    ApiError::new(
        ErrorCode::Unavailable,
        format!("the other nodes cannot be reached: {e}; nothing was done"),
    )
    .retry_after(CONTROL_RETRY_AFTER_SECS)
}

/// `Retry-After` of an admin request the control channel could not carry.
const CONTROL_RETRY_AFTER_SECS: u64 = 1;

fn node_names(nodes: &[NodeId]) -> Vec<&str> {
    nodes.iter().map(NodeId::as_str).collect()
}

/// `GET /v1/users/{user_id}/connections`: the user's live connections on every node, each
/// with the node it is open on.
#[utoipa::path(get, path = "/v1/users/{user_id}/connections", tag = "admin",
    security(("api_key" = [])),
    params(("user_id" = String, Path, description = "The user")),
    responses(
        (status = 200, description = "The user's live connections on every node (with --broker redis; this node's with the in-memory broker), and the live nodes that did not answer in time", body = super::schema::ConnectionsDoc),
        (status = 400, description = "Not a valid user id; or more than one Authorization header (`field`: Authorization)", body = ErrorBody),
        (status = 401, description = "No API key, or an unknown one", body = ErrorBody),
        (status = 403, description = "A publish-only API key", body = ErrorBody),
        (status = 503, description = "The other nodes cannot be reached (Redis down)", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds to wait before retrying")))))]
pub(crate) async fn user_connections(
    State(app): State<Arc<ApiState>>,
    headers: HeaderMap,
    id: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let user = admin_user(&app, &headers, id)?;
    let seen = app
        .manager
        .cluster_connections_of(&user)
        .await
        .map_err(|e| control_problem(&e))?;
    let connections: Vec<_> = seen
        .answers
        .iter()
        .flat_map(|(node, conns)| {
            conns.iter().map(move |c| {
                json!({
                    "connection_id": c.connection_id,
                    "node": node.as_str(),
                    "connected_for_ms": u64::try_from(c.connected_for.as_millis()).unwrap_or(u64::MAX),
                    "acked_seq": c.acked_seq,
                    "queued_frames": c.queued_frames,
                    "queued_bytes": c.queued_bytes,
                })
            })
        })
        .collect();
    Ok(Json(json!({
        "user_id": user,
        "node": app.manager.node_id().as_str(),
        "connections": connections,
        "unanswered_nodes": node_names(&seen.unanswered),
    }))
    .into_response())
}

/// `POST /v1/users/{user_id}/disconnect`: closes the user's connections on every node with
/// 1001 so their clients reconnect and resume.
#[utoipa::path(post, path = "/v1/users/{user_id}/disconnect", tag = "admin",
    security(("api_key" = [])),
    params(("user_id" = String, Path, description = "The user")),
    responses(
        (status = 200, description = "How many connections were closed with 1001, on every node (with --broker redis; on this node with the in-memory broker), and the live nodes that did not answer in time", body = super::schema::DisconnectedDoc),
        (status = 400, description = "Not a valid user id; or more than one Authorization header (`field`: Authorization)", body = ErrorBody),
        (status = 401, description = "No API key, or an unknown one", body = ErrorBody),
        (status = 403, description = "A publish-only API key", body = ErrorBody),
        (status = 503, description = "The other nodes cannot be reached (Redis down); nothing was closed", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds to wait before retrying")))))]
pub(crate) async fn disconnect_user(
    State(app): State<Arc<ApiState>>,
    headers: HeaderMap,
    id: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let user = admin_user(&app, &headers, id)?;
    let done = app
        .manager
        .cluster_disconnect_user(&user, CloseCode::GoingAway)
        .await
        .map_err(|e| control_problem(&e))?;
    let n: usize = done.answers.iter().map(|(_, n)| n).sum();
    let nodes: serde_json::Map<String, serde_json::Value> = done
        .answers
        .iter()
        .map(|(node, n)| (node.as_str().to_owned(), json!(n)))
        .collect();
    tracing::info!(%user, connections = n, "disconnected by an operator");
    Ok(Json(json!({
        "user_id": user,
        "disconnected": n,
        "nodes": nodes,
        "unanswered_nodes": node_names(&done.unanswered),
    }))
    .into_response())
}
