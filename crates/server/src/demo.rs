//! The browser client (`/client.js`, `/client.d.ts`, always served) and the live demo:
//! the page at `/`, development tokens (`POST /demo/token`), simulated runs through the
//! bridge (`POST /demo/runs`, `POST /demo/runs/{run_id}/cancel`) and a JSON digest of
//! the server's stats (`GET /demo/stats`).
//!
//! What it is not: part of the production surface. The demo routes exist only when
//! `--demo` says so (`auto`: only in development mode, where no secret is configured),
//! and tokens are minted only from the development secret, never from a configured one.
//!
//! The assets are embedded with `include_str!`: one binary, no build step, no files to
//! ship beside it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use agentwire_bridge::{
    AgentBridgeExt, AgentWebSocketBridge, DEFAULT_DEMO_PACE, SIMULATED_RUN_EVENTS,
    demo_run_context, simulated_run,
};
use agentwire_manager::UnifiedWebSocketManager;
use agentwire_protocol::{RunId, UserId};
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{Value, json};
use tokio::sync::Semaphore;
use tokio::task::AbortHandle;

use crate::auth::Auth;
use crate::config::ServerConfig;
use crate::http::json_error;
use crate::server::AppState;

const CLIENT_JS: &str = include_str!("../../../clients/js/src/client.js");
const CLIENT_DTS: &str = include_str!("../../../clients/js/src/client.d.ts");
const DEMO_HTML: &str = include_str!("../assets/demo.html");
const DEMO_CSS: &str = include_str!("../assets/demo.css");
const DEMO_JS: &str = include_str!("../assets/demo.js");

/// Lifetime of a development token minted by `POST /demo/token`.
pub const DEMO_TOKEN_TTL: Duration = Duration::from_secs(3600);

/// Most simulated runs in progress on one server; more are answered 429.
pub const DEMO_MAX_RUNS: usize = 32;

/// Most simulated runs in progress for one user; more are answered 429.
pub const DEMO_MAX_RUNS_PER_USER: usize = 3;

/// The slowest pace a `POST /demo/runs` may ask for (`pace_ms`).
pub const DEMO_MAX_PACE: Duration = Duration::from_secs(5);

/// Whether the demo page and its endpoints are served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum DemoMode {
    /// Only in development mode (no `--jwt-secret`, no `--jwt-public-key`).
    #[default]
    Auto,
    /// Always. Development tokens are still minted only in development mode; with a
    /// configured secret the page asks for a token of the user's own.
    On,
    /// Never.
    Off,
}

impl DemoMode {
    /// Whether the demo is served under `config`.
    pub fn is_enabled(self, config: &ServerConfig) -> bool {
        match self {
            DemoMode::Auto => config.is_dev_mode(),
            DemoMode::On => true,
            DemoMode::Off => false,
        }
    }
}

/// The demo's share of the server state.
#[derive(Debug)]
pub(crate) struct Demo {
    /// The bridge runs go through; `None` when the demo is off.
    bridge: Option<AgentWebSocketBridge>,
    /// Whether `POST /demo/token` may mint (development mode only).
    mint: bool,
    slots: Arc<Semaphore>,
    runs: Mutex<HashMap<RunId, (UserId, AbortHandle)>>,
    runs_started: AtomicU64,
}

impl Demo {
    pub(crate) fn new(manager: &UnifiedWebSocketManager, config: &ServerConfig) -> Demo {
        let enabled = config.demo.is_enabled(config);
        Demo {
            bridge: enabled.then(|| manager.create_agent_bridge()),
            mint: enabled && config.is_dev_mode(),
            slots: Arc::new(Semaphore::new(DEMO_MAX_RUNS)),
            runs: Mutex::new(HashMap::new()),
            runs_started: AtomicU64::new(0),
        }
    }

    /// Whether the demo page and endpoints are served.
    pub(crate) fn is_enabled(&self) -> bool {
        self.bridge.is_some()
    }

    fn runs(&self) -> std::sync::MutexGuard<'_, HashMap<RunId, (UserId, AbortHandle)>> {
        // The map stays consistent whatever panicked while it was held.
        self.runs.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The client routes, and the demo routes when the demo is on.
pub(crate) fn routes(enabled: bool) -> Router<Arc<AppState>> {
    let router = Router::new()
        .route("/client.js", get(client_js))
        .route("/client.d.ts", get(client_dts));
    if !enabled {
        return router;
    }
    router
        .route("/", get(page))
        .route("/demo.css", get(demo_css))
        .route("/demo.js", get(demo_js))
        .route("/demo/token", post(mint_token))
        .route("/demo/runs", post(start_run))
        .route("/demo/runs/{run_id}/cancel", post(cancel_run))
        .route("/demo/stats", get(stats))
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
            (
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ),
        ],
        body,
    )
        .into_response()
}

/// `GET /client.js`: the browser client, an ES module.
async fn client_js() -> Response {
    asset("text/javascript; charset=utf-8", CLIENT_JS)
}

/// `GET /client.d.ts`: its TypeScript declarations.
async fn client_dts() -> Response {
    asset("application/typescript; charset=utf-8", CLIENT_DTS)
}

/// `GET /`: the demo page. Everything it loads comes from this server.
async fn page() -> Response {
    let mut r = asset("text/html; charset=utf-8", DEMO_HTML);
    r.headers_mut().insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
             img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
        ),
    );
    r
}

async fn demo_css() -> Response {
    asset("text/css; charset=utf-8", DEMO_CSS)
}

async fn demo_js() -> Response {
    asset("text/javascript; charset=utf-8", DEMO_JS)
}

/// A refused demo request, answered as a JSON error (`{"error": kind, "message": …}`).
#[derive(Debug)]
struct Refusal {
    status: StatusCode,
    kind: &'static str,
    message: String,
}

impl Refusal {
    fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Refusal {
        Refusal {
            status,
            kind,
            message: message.into(),
        }
    }

    fn bad_request(message: impl Into<String>) -> Refusal {
        Refusal::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    fn too_many(message: &str) -> Refusal {
        Refusal::new(StatusCode::TOO_MANY_REQUESTS, "too_many_runs", message)
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let mut r = json_error(self.status, self.kind, &self.message);
        let extra = match self.status {
            StatusCode::UNAUTHORIZED => Some((header::WWW_AUTHENTICATE, "Bearer")),
            StatusCode::TOO_MANY_REQUESTS => Some((header::RETRY_AFTER, "5")),
            _ => None,
        };
        if let Some((name, value)) = extra {
            r.headers_mut()
                .insert(name, HeaderValue::from_static(value));
        }
        r
    }
}

/// The JSON object of a request body; an empty body is `{}`.
fn body_object(body: &Bytes) -> Result<serde_json::Map<String, Value>, Refusal> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(serde_json::Map::new());
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(Refusal::bad_request("the body must be a JSON object")),
        Err(e) => Err(Refusal::bad_request(format!("the body is not JSON: {e}"))),
    }
}

/// `POST /demo/token` `{"user_id": "alice"}`: a development token for that user.
async fn mint_token(State(app): State<Arc<AppState>>, body: Bytes) -> Result<Response, Refusal> {
    if !app.demo.mint {
        return Err(Refusal::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "development tokens are minted only in development mode (no --jwt-secret or \
             --jwt-public-key); sign in with a token of your own",
        ));
    }
    let body = body_object(&body)?;
    let id = body
        .get("user_id")
        .and_then(Value::as_str)
        .ok_or_else(|| Refusal::bad_request("field `user_id`: a string is required"))?;
    let user = UserId::new(id)
        .map_err(|e| Refusal::bad_request(format!("field `user_id`: a user id {e}")))?;
    let token = app
        .auth
        .mint(&user, DEMO_TOKEN_TTL)
        .map_err(|e| Refusal::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?;
    let expires_at = jsonwebtoken::get_current_timestamp() + DEMO_TOKEN_TTL.as_secs();
    Ok(Json(json!({ "token": token, "user_id": user, "expires_at": expires_at })).into_response())
}

/// The user of `Authorization: Bearer <client token>`.
fn user_of(auth: &Auth, headers: &HeaderMap) -> Result<UserId, Refusal> {
    let unauthorized =
        |message: String| Refusal::new(StatusCode::UNAUTHORIZED, "unauthorized", message);
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, t)| t.trim())
        .ok_or_else(|| unauthorized("send `Authorization: Bearer <the user's token>`".into()))?;
    auth.verify(token)
        .map(|v| v.user)
        .map_err(|e| unauthorized(e.to_string()))
}

/// `POST /demo/runs` with the user's token, body `{}` or `{"pace_ms": N}`: starts a
/// simulated run for that user through the bridge and answers at once (202); the run's
/// events arrive on the user's connections.
async fn start_run(
    State(app): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Refusal> {
    let bridge = app
        .demo
        .bridge
        .clone()
        .ok_or_else(|| Refusal::new(StatusCode::NOT_FOUND, "not_found", "the demo is off"))?;
    let user = user_of(&app.auth, &headers)?;
    let body = body_object(&body)?;
    let pace = match body.get("pace_ms") {
        None | Some(Value::Null) => DEFAULT_DEMO_PACE,
        Some(v) => v
            .as_u64()
            .map(Duration::from_millis)
            .filter(|p| *p <= DEMO_MAX_PACE)
            .ok_or_else(|| {
                Refusal::bad_request(format!(
                    "field `pace_ms`: an integer from 0 to {}",
                    DEMO_MAX_PACE.as_millis()
                ))
            })?,
    };
    let permit = app.demo.slots.clone().try_acquire_owned().map_err(|_| {
        Refusal::too_many("too many demo runs in progress on this server; try again shortly")
    })?;
    let run = demo_run_context(user.clone());
    let run_id = run.run_id().clone();
    let thread_id = run.thread_id().clone();
    {
        let mut runs = app.demo.runs();
        if runs.values().filter(|(u, _)| *u == user).count() >= DEMO_MAX_RUNS_PER_USER {
            return Err(Refusal::too_many(
                "this user has too many demo runs in progress",
            ));
        }
        let state = app.clone();
        let id = run_id.clone();
        // Spawned while the map is held, so the task's removal cannot come before the insert.
        let task = tokio::spawn(async move {
            let _permit = permit;
            if let Err(e) = simulated_run(&bridge, run, pace).await {
                tracing::warn!(error = %e, run = %id, "demo run failed");
            }
            state.demo.runs().remove(&id);
        });
        runs.insert(run_id.clone(), (user.clone(), task.abort_handle()));
    }
    app.demo.runs_started.fetch_add(1, Ordering::Relaxed);
    tracing::info!(%user, run = %run_id, "demo run started");
    let events: Vec<&str> = SIMULATED_RUN_EVENTS.iter().map(|t| t.as_str()).collect();
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({
            "user_id": user,
            "thread_id": thread_id,
            "run_id": run_id,
            "pace_ms": u64::try_from(pace.as_millis()).unwrap_or(u64::MAX),
            "events": events,
        })),
    )
        .into_response())
}

/// `POST /demo/runs/{run_id}/cancel` with the token of the run's user: stops the run;
/// the bridge's drop guard ends it with `agent_error` (`run_dropped`).
async fn cancel_run(
    State(app): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(run_id): Path<String>,
) -> Result<Response, Refusal> {
    let user = user_of(&app.auth, &headers)?;
    let not_found = || {
        Refusal::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "no run of this user with that id is in progress",
        )
    };
    let run_id = RunId::new(&run_id).map_err(|_| not_found())?;
    let mut runs = app.demo.runs();
    match runs.get(&run_id) {
        Some((owner, handle)) if *owner == user => {
            handle.abort();
            runs.remove(&run_id);
            Ok(Json(json!({ "run_id": run_id, "cancelled": true })).into_response())
        }
        _ => Err(not_found()),
    }
}

/// `GET /demo/stats`: the counters the demo page shows.
async fn stats(State(app): State<Arc<AppState>>) -> Response {
    let s = app.manager.get_stats();
    let active = app.demo.runs().len();
    Json(json!({
        "connections": s.connections,
        "users": s.users,
        "connections_opened": s.connections_opened,
        "connections_closed": s.connections_closed,
        "events_emitted": s.events_emitted,
        "events_delivered": s.events_delivered,
        "events_replayed": s.events_replayed,
        "replay_gaps": s.replay_gaps,
        "evictions": s.evictions,
        "history_events": s.history_events,
        "demo_runs_started": app.demo.runs_started.load(Ordering::Relaxed),
        "demo_runs_active": active,
    }))
    .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_is_on_only_in_development_mode() {
        let mut c = ServerConfig::default();
        assert!(DemoMode::Auto.is_enabled(&c));
        assert!(!DemoMode::Off.is_enabled(&c));
        c.jwt_secret = Some("configured".into());
        assert!(!DemoMode::Auto.is_enabled(&c));
        assert!(DemoMode::On.is_enabled(&c));
    }

    #[test]
    fn assets_are_embedded() {
        assert!(CLIENT_JS.contains("export class AgentwireClient"));
        assert!(CLIENT_DTS.contains("export declare class AgentwireClient"));
        assert!(DEMO_HTML.contains("/demo.js"));
    }
}
