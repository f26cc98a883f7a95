//! The browser client (`/client.js`, `/client.d.ts`, always served) and the live demo:
//! the page at `/`, development tokens (`POST /demo/token`), simulated runs through the
//! bridge (`POST /demo/runs`, `POST /demo/runs/{run_id}/cancel`), a run that stalls for the
//! watchdog to end (`POST /demo/runs` with `{"stall": true}`) and a JSON digest of
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
    AgentBridgeExt, AgentWebSocketBridge, DEFAULT_DEMO_PACE, DEMO_AGENT_NAME, SIMULATED_RUN_EVENTS,
    demo_run_context, simulated_run,
};
use agentwire_manager::{PublisherId, UnifiedWebSocketManager};
use agentwire_protocol::{
    AgentStarted, Event, Limits, MAX_CLIENT_FRAME_DEPTH, RunId, ToolExecuting, UserId, parse_object,
};
use axum::body::Body;
use axum::extract::{FromRef, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{Value, json};
use tokio::sync::Semaphore;
use tokio::task::AbortHandle;

use crate::auth::{Auth, KeyScope, authorize};
use crate::http::body::read_body;
use crate::http::{AllowedOrigins, ApiError, ErrorCode, bearer};

mod token;

const CLIENT_JS: &str = include_str!("../../../../clients/js/src/client.js");
const CLIENT_DTS: &str = include_str!("../../../../clients/js/src/client.d.ts");
const DEMO_HTML: &str = include_str!("../../assets/demo.html");
const DEMO_CSS: &str = include_str!("../../assets/demo.css");
const DEMO_JS: &str = include_str!("../../assets/demo.js");

/// Lifetime of a development token minted by `POST /demo/token`.
pub const DEMO_TOKEN_TTL: Duration = Duration::from_secs(3600);

/// Most simulated runs in progress on one server; more are answered 429.
pub const DEMO_MAX_RUNS: usize = 32;

/// Most simulated runs in progress for one user; more are answered 429.
pub const DEMO_MAX_RUNS_PER_USER: usize = 3;

/// Largest body of a demo request (`POST /demo/token`, `POST /demo/runs`), in bytes; larger
/// is refused with 413.
pub const DEMO_MAX_BODY_BYTES: usize = 4 * 1024;

/// The slowest pace a `POST /demo/runs` may ask for (`pace_ms`).
pub const DEMO_MAX_PACE: Duration = Duration::from_secs(5);

/// The stall timeout of a demo run that stalls (`POST /demo/runs` with `"stall": true`):
/// the watchdog ends it this long after its last event.
pub const DEMO_STALL_TIMEOUT: Duration = Duration::from_secs(3);

/// What the demo's handlers need.
#[derive(Debug)]
pub(crate) struct DemoState {
    manager: UnifiedWebSocketManager,
    pub(super) auth: Arc<Auth>,
    /// The bridge runs go through; `None` when the demo is off.
    bridge: Option<AgentWebSocketBridge>,
    /// Whether `POST /demo/token` may mint (development mode only).
    pub(super) mint: bool,
    slots: Arc<Semaphore>,
    runs: Mutex<HashMap<RunId, (UserId, AbortHandle)>>,
    runs_started: AtomicU64,
    /// Pages allowed to load the browser client across origins.
    origins: AllowedOrigins,
}

impl DemoState {
    /// The demo over `manager`: served when `enabled`, minting development tokens (and
    /// showing its stats to anyone) when `mint` too; the browser client served with CORS
    /// headers for `origins`.
    pub(crate) fn new(
        manager: UnifiedWebSocketManager,
        auth: Arc<Auth>,
        enabled: bool,
        mint: bool,
        origins: AllowedOrigins,
    ) -> DemoState {
        DemoState {
            bridge: enabled.then(|| manager.create_agent_bridge()),
            manager,
            auth,
            mint: enabled && mint,
            slots: Arc::new(Semaphore::new(DEMO_MAX_RUNS)),
            runs: Mutex::new(HashMap::new()),
            runs_started: AtomicU64::new(0),
            origins,
        }
    }

    /// The bridge the demo's runs go through (its emitter pool is on `/metrics`); `None`
    /// when the demo is off.
    pub(crate) fn bridge(&self) -> Option<&AgentWebSocketBridge> {
        self.bridge.as_ref()
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
pub(crate) fn routes<S>(enabled: bool) -> Router<S>
where
    S: Clone + Send + Sync + 'static,
    Arc<DemoState>: FromRef<S>,
{
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
        .route("/demo/token", post(token::mint_token))
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

/// `GET /client.js`: the browser client, an ES module, importable from pages of the
/// allowed origins (`--allowed-origins`; any when the list is empty).
async fn client_js(State(app): State<Arc<DemoState>>, headers: HeaderMap) -> Response {
    client_asset(&app, &headers, "text/javascript; charset=utf-8", CLIENT_JS)
}

/// `GET /client.d.ts`: its TypeScript declarations, with the same CORS headers.
async fn client_dts(State(app): State<Arc<DemoState>>, headers: HeaderMap) -> Response {
    client_asset(
        &app,
        &headers,
        "application/typescript; charset=utf-8",
        CLIENT_DTS,
    )
}

/// A browser client asset, with the CORS headers a page on another origin needs to import
/// it (a module script is always fetched in CORS mode).
fn client_asset(
    app: &DemoState,
    headers: &HeaderMap,
    content_type: &'static str,
    body: &'static str,
) -> Response {
    let mut r = asset(content_type, body);
    app.origins.cors(headers, r.headers_mut());
    r.headers_mut().insert(
        header::HeaderName::from_static("cross-origin-resource-policy"),
        HeaderValue::from_static("cross-origin"),
    );
    r
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

pub(super) fn bad_request(message: impl Into<String>) -> ApiError {
    ApiError::new(ErrorCode::BadRequest, message)
}

/// A run refused for want of room; its `Retry-After` is about how long a run takes.
fn too_many(message: &str) -> ApiError {
    ApiError::new(ErrorCode::TooManyRuns, message).retry_after(5)
}

/// The JSON object of a request body (at most [`DEMO_MAX_BODY_BYTES`]); an empty body is
/// `{}`. Decoded by the protocol's decoder, so an object that names a key twice is refused
/// (`{"user_id":"alice","user_id":"bob"}` is neither user) with the key named.
pub(super) async fn body_object(
    headers: &HeaderMap,
    body: Body,
) -> Result<serde_json::Map<String, Value>, ApiError> {
    let bytes = read_body(headers, body, DEMO_MAX_BODY_BYTES, "DEMO_MAX_BODY_BYTES").await?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(serde_json::Map::new());
    }
    let limits = Limits {
        max_bytes: DEMO_MAX_BODY_BYTES,
        max_depth: MAX_CLIENT_FRAME_DEPTH,
    };
    parse_object(&bytes, limits).map_err(|e| {
        let error = bad_request(format!("the body must be a JSON object: {e}"));
        match e.field() {
            Some(field) => error.at(field),
            None => error,
        }
    })
}

/// The user of `Authorization: Bearer <client token>`.
fn user_of(auth: &Auth, headers: &HeaderMap) -> Result<UserId, ApiError> {
    let unauthorized = |message: String| ApiError::new(ErrorCode::Unauthorized, message);
    let Ok(Some(token)) = bearer(headers) else {
        return Err(unauthorized(
            "send `Authorization: Bearer <the user's token>`".into(),
        ));
    };
    auth.verify(token)
        .map(|v| v.user)
        .map_err(|e| unauthorized(e.to_string()))
}

/// `POST /demo/runs` with the user's token, body `{}` or `{"pace_ms": N}`: starts a
/// simulated run for that user through the bridge and answers at once (202); the run's
/// events arrive on the user's connections. With `{"stall": true}` the run stalls instead
/// (`start_stalling_run`).
async fn start_run(
    State(app): State<Arc<DemoState>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let bridge = app
        .bridge
        .clone()
        .ok_or_else(|| ApiError::new(ErrorCode::NotFound, "the demo is off"))?;
    let user = user_of(&app.auth, &headers)?;
    let body = body_object(&headers, body).await?;
    match body.get("stall") {
        None | Some(Value::Bool(false)) => {}
        Some(Value::Bool(true)) => return start_stalling_run(&app, user).await,
        Some(_) => return Err(bad_request("true or false").at("stall")),
    }
    let pace = match body.get("pace_ms") {
        None | Some(Value::Null) => DEFAULT_DEMO_PACE,
        Some(v) => v
            .as_u64()
            .map(Duration::from_millis)
            .filter(|p| *p <= DEMO_MAX_PACE)
            .ok_or_else(|| {
                bad_request(format!(
                    "an integer from 0 to {}",
                    DEMO_MAX_PACE.as_millis()
                ))
                .at("pace_ms")
            })?,
    };
    let permit = app.slots.clone().try_acquire_owned().map_err(|_| {
        too_many("too many demo runs in progress on this server; try again shortly")
    })?;
    let run = demo_run_context(user.clone());
    let run_id = run.run_id().clone();
    let thread_id = run.thread_id().clone();
    {
        let mut runs = app.runs();
        if runs.values().filter(|(u, _)| *u == user).count() >= DEMO_MAX_RUNS_PER_USER {
            return Err(too_many("this user has too many demo runs in progress"));
        }
        let state = app.clone();
        let id = run_id.clone();
        // Spawned while the map is held, so the task's removal cannot come before the insert.
        let task = tokio::spawn(async move {
            let _permit = permit;
            if let Err(e) = simulated_run(&bridge, run, pace).await {
                tracing::warn!(error = %e, run = %id, "demo run failed");
            }
            state.runs().remove(&id);
        });
        runs.insert(run_id.clone(), (user.clone(), task.abort_handle()));
    }
    app.runs_started.fetch_add(1, Ordering::Relaxed);
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

/// A run that goes silent after `tool_executing`, with a stall timeout of
/// [`DEMO_STALL_TIMEOUT`]: the server's watchdog ends it with `agent_error` code `stalled`,
/// which the user's connections then show.
async fn start_stalling_run(app: &DemoState, user: UserId) -> Result<Response, ApiError> {
    if app.manager.config().run_stall_timeout.is_zero() {
        return Err(bad_request(
            "the stall watchdog is off on this server (--run-stall-timeout 0)",
        )
        .at("stall"));
    }
    let run = demo_run_context(user.clone());
    let run_id = run.run_id().clone();
    let thread_id = run.thread_id().clone();
    let stall_ms = u64::try_from(DEMO_STALL_TIMEOUT.as_millis()).unwrap_or(u64::MAX);
    let events = [
        Event::new(
            Some(thread_id.clone()),
            Some(run_id.clone()),
            AgentStarted {
                agent_name: Some(DEMO_AGENT_NAME.into()),
                stall_timeout_ms: Some(stall_ms),
                extra: Default::default(),
            },
        ),
        Event::new(
            Some(thread_id.clone()),
            Some(run_id.clone()),
            ToolExecuting {
                tool_call_id: "call_1".into(),
                tool_name: "search_orders".into(),
                arguments: json!({"status": "delayed"}),
                extra: Default::default(),
            },
        ),
    ];
    for event in &events {
        let prepared = app
            .manager
            .prepare_event(&user, event, None)
            .map_err(|e| ApiError::new(ErrorCode::Internal, e.to_string()))?
            .guarded(PublisherId::embedded());
        app.manager.emit_prepared(&prepared).await.map_err(|e| {
            if e.is_transient() {
                ApiError::new(ErrorCode::Unavailable, e.to_string()).retry_after(1)
            } else {
                ApiError::new(ErrorCode::Internal, e.to_string())
            }
        })?;
    }
    app.runs_started.fetch_add(1, Ordering::Relaxed);
    tracing::info!(%user, run = %run_id, "demo run that stalls started");
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({
            "user_id": user,
            "thread_id": thread_id,
            "run_id": run_id,
            "stall_timeout_ms": stall_ms,
            "events": ["agent_started", "tool_executing"],
        })),
    )
        .into_response())
}

/// `POST /demo/runs/{run_id}/cancel` with the token of the run's user: stops the run;
/// the bridge's drop guard ends it with `agent_error` (`run_dropped`).
async fn cancel_run(
    State(app): State<Arc<DemoState>>,
    headers: HeaderMap,
    Path(run_id): Path<String>,
) -> Result<Response, ApiError> {
    let user = user_of(&app.auth, &headers)?;
    let not_found = || {
        ApiError::new(
            ErrorCode::NotFound,
            "no run of this user with that id is in progress",
        )
    };
    let run_id = RunId::new(&run_id).map_err(|_| not_found())?;
    let mut runs = app.runs();
    match runs.get(&run_id) {
        Some((owner, handle)) if *owner == user => {
            handle.abort();
            runs.remove(&run_id);
            Ok(Json(json!({ "run_id": run_id, "cancelled": true })).into_response())
        }
        _ => Err(not_found()),
    }
}

/// `GET /demo/stats`: the counters the demo page shows. In development mode to anyone
/// (the server serves this machine only); otherwise to the holder of a client token or a
/// full API key.
async fn stats(
    State(app): State<Arc<DemoState>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    if !app.mint && user_of(&app.auth, &headers).is_err() {
        authorize(&app.auth, &headers, KeyScope::Full).map_err(|_| {
            ApiError::new(
                ErrorCode::Unauthorized,
                "outside development mode the stats need `Authorization: Bearer` with a \
                 user's token or a full API key",
            )
        })?;
    }
    let s = app.manager.get_stats();
    let active = app.runs().len();
    Ok(Json(json!({
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
        "demo_runs_started": app.runs_started.load(Ordering::Relaxed),
        "demo_runs_active": active,
    }))
    .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn assets_are_embedded() {
        assert!(CLIENT_JS.contains("export class AgentwireClient"));
        assert!(CLIENT_DTS.contains("export declare class AgentwireClient"));
        assert!(DEMO_HTML.contains("/demo.js"));
    }
}
