//! The admin API behind a full-access API key: `GET /v1/users/{user_id}/connections`,
//! `POST /v1/users/{user_id}/disconnect`.

use std::sync::Arc;

use agentwire_protocol::{CloseCode, UserId};
use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::ApiState;
use crate::auth::KeyScope;
use crate::http::{bearer_key, json_error};

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

/// Checks `Authorization: Bearer <api key>`: a full-access key passes, a publish-only one
/// is forbidden.
fn admin_auth(app: &ApiState, headers: &HeaderMap) -> Result<(), ApiError> {
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
        (status = 200, description = "The user's live connections on this node", body = super::schema::ConnectionsDoc),
        (status = 400, description = "Not a valid user id", body = crate::http::AdminErrorDoc),
        (status = 401, description = "No API key, or an unknown one", body = crate::http::AdminErrorDoc),
        (status = 403, description = "A publish-only API key", body = crate::http::AdminErrorDoc)))]
pub(crate) async fn user_connections(
    State(app): State<Arc<ApiState>>,
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
        (status = 200, description = "How many connections were closed with 1001", body = super::schema::DisconnectedDoc),
        (status = 400, description = "Not a valid user id", body = crate::http::AdminErrorDoc),
        (status = 401, description = "No API key, or an unknown one", body = crate::http::AdminErrorDoc),
        (status = 403, description = "A publish-only API key", body = crate::http::AdminErrorDoc)))]
pub(crate) async fn disconnect_user(
    State(app): State<Arc<ApiState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    admin_auth(&app, &headers)?;
    let user = user_from_path(&id)?;
    let n = app.manager.disconnect_user(&user, CloseCode::GoingAway);
    tracing::info!(%user, connections = n, "disconnected by an operator");
    Ok(Json(json!({ "user_id": user, "disconnected": n })).into_response())
}
