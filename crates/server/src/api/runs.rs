//! A publisher's calls about one run: `POST /v1/users/{user_id}/runs/{run_id}/heartbeat`,
//! a sign of life for the stall watchdog that is not an event (nothing is appended or
//! delivered).

use std::sync::Arc;

use agentwire_manager::RunPresence;
use agentwire_protocol::{RunId, UserId};
use axum::Json;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::ApiState;
use crate::auth::{KeyScope, authorize};
use crate::http::{ApiError, ErrorBody, ErrorCode};

/// The user and run of the path.
pub(super) fn run_path(
    path: Result<Path<(String, String)>, PathRejection>,
) -> Result<(UserId, RunId), ApiError> {
    let Path((user, run)) =
        path.map_err(|e| ApiError::new(ErrorCode::BadRequest, e.body_text()))?;
    let user = UserId::new(&user).map_err(|e| {
        ApiError::new(ErrorCode::BadRequest, format!("a user id {e}")).at("user_id")
    })?;
    let run = run
        .parse::<RunId>()
        .map_err(|e| ApiError::new(ErrorCode::BadRequest, format!("a run id {e}")).at("run_id"))?;
    Ok((user, run))
}

/// `POST /v1/users/{user_id}/runs/{run_id}/heartbeat`: the run's publisher is alive. The
/// run's stall timeout starts again, on every node; clients see nothing.
#[utoipa::path(post, path = "/v1/users/{user_id}/runs/{run_id}/heartbeat", tag = "publish",
    security(("api_key" = [])),
    params(("user_id" = String, Path, description = "Whose run"),
        ("run_id" = String, Path, description = "The run")),
    responses(
        (status = 200, description = "The run is in progress; its stall timeout starts again", body = super::schema::HeartbeatDoc),
        (status = 400, description = "Not a valid user or run id; or more than one Authorization header (`field`: Authorization)", body = ErrorBody),
        (status = 401, description = "No API key, or an unknown one", body = ErrorBody),
        (status = 404, description = "No such run in progress: never started, or forgotten (--run-ttl after its last event)", body = ErrorBody),
        (status = 409, description = "The run ended (`run_violation`, `AfterTerminal`): by its publisher, or by the server as stalled", body = ErrorBody),
        (status = 429, description = "The API key exceeds --publish-rate (a heartbeat counts as one event)", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds to wait"))),
        (status = 503, description = "The broker is unavailable", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds to wait before retrying")))))]
pub(crate) async fn run_heartbeat(
    State(app): State<Arc<ApiState>>,
    headers: HeaderMap,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Result<Response, ApiError> {
    let key = authorize(&app.auth, &headers, KeyScope::Publish)?;
    let (user, run) = run_path(path)?;
    let publisher = super::publish::publisher_of(&app, key)?;
    app.publish.take_rate(&publisher, 1).await?;
    let presence = app.manager.heartbeat_run(&user, &run).await.map_err(|e| {
        if e.is_transient() {
            ApiError::new(ErrorCode::Unavailable, e.to_string()).retry_after(1)
        } else {
            ApiError::new(ErrorCode::Internal, e.to_string())
        }
    })?;
    match presence {
        RunPresence::Running => {
            Ok(Json(json!({ "user_id": user, "run_id": run, "state": "running" })).into_response())
        }
        RunPresence::Ended => Err(ApiError::new(
            ErrorCode::RunViolation,
            "AfterTerminal: the run already ended",
        )
        .at("run_id")),
        _ => Err(ApiError::new(
            ErrorCode::NotFound,
            "no such run in progress: never started, or forgotten (--run-ttl)",
        )
        .at("run_id")),
    }
}
