//! An agent service that embeds agentwire in its own axum app: one process holds the
//! manager, the bridge (and its emitter pool) and the service's routes, and mounts
//! `agentwire_server::router(manager, auth)` beside them, so the browser that asks the service
//! for a run watches that run over `/ws` on the same address.
//!
//! ```text
//! export AGENTWIRE_JWT_SECRET=$(openssl rand -hex 32)   # signs client tokens; 32+ bytes
//! cargo run -p agentwire --example embedded_agent_service            # 127.0.0.1:3000
//! cargo run -p agentwire --example embedded_agent_service 0.0.0.0:8000
//! ```
//!
//! Then mint a token with the same secret (`cargo run -p agentwire-server -- token --user
//! alice` reads `AGENTWIRE_JWT_SECRET` too), open the printed address in a browser, paste
//! the token, connect, and start a run.
//!
//! The routes: `GET /` a page that connects to `/ws` and starts runs; `POST /runs`
//! (`Authorization: Bearer <token>`) starts a simulated run for the token's user and
//! answers `202` with its ids; and agentwire's own `/ws`, `/healthz`, `/readyz`, `/metrics`
//! and admin API.
//!
//! The e2e test `tests/tests/e2e_embedded_example.rs` compiles this file as a module and
//! serves [`app`], so what it checks is this code.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use agentwire::bridge::{DEFAULT_DEMO_PACE, demo_run_context, simulated_run};
use agentwire::protocol::CloseCode;
use agentwire::server::Auth;
use agentwire::{AgentBridgeExt, AgentWebSocketBridge, UnifiedWebSocketManager};
use anyhow::Context;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;

/// The environment variable with the HS256 secret of client tokens (the server's own).
pub const SECRET_ENV: &str = "AGENTWIRE_JWT_SECRET";

/// Where the service listens when neither an argument nor [`ADDR_ENV`] says otherwise.
pub const DEFAULT_ADDR: &str = "127.0.0.1:3000";

/// The environment variable with the address to listen on (an argument wins over it).
pub const ADDR_ENV: &str = "AGENTWIRE_EXAMPLE_ADDR";

/// What the service's own routes share: the bridge its runs report through, and the
/// verifier of its users' tokens — the same tokens `/ws` accepts, so one token serves the
/// service and the socket.
#[derive(Debug, Clone)]
pub struct AgentService {
    bridge: AgentWebSocketBridge,
    auth: Arc<Auth>,
    pace: Duration,
}

impl AgentService {
    /// A service whose runs report through `bridge`, for users whose tokens `auth`
    /// verifies, at [`DEFAULT_DEMO_PACE`].
    pub fn new(bridge: AgentWebSocketBridge, auth: Auth) -> Self {
        AgentService {
            bridge,
            auth: Arc::new(auth),
            pace: DEFAULT_DEMO_PACE,
        }
    }

    /// The same service with runs at `pace` (see `agentwire::bridge::simulated_run`).
    #[must_use]
    pub fn with_pace(mut self, pace: Duration) -> Self {
        self.pace = pace;
        self
    }
}

/// The service's axum app: its own routes (`GET /`, `POST /runs`) with `agentwire` — the
/// router of `agentwire_server::router(manager, auth)` or `router_with` — merged in.
pub fn app(service: AgentService, agentwire: Router) -> Router {
    Router::new()
        .route("/", get(index))
        .route("/runs", post(start_run))
        .with_state(service)
        .merge(agentwire)
}

/// `GET /`: the page a person watches runs on.
async fn index() -> Html<&'static str> {
    Html(INDEX_HTML)
}

/// `POST /runs`: starts a simulated run for the user of the bearer token and answers
/// `202 {"user_id", "thread_id", "run_id"}` at once; the run's events follow on the
/// user's `/ws` connections.
async fn start_run(State(service): State<AgentService>, headers: HeaderMap) -> Response {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim());
    let verified = match token.map(|t| service.auth.verify(t)) {
        Some(Ok(v)) => v,
        Some(Err(e)) => return unauthorized(&e.to_string()),
        None => return unauthorized("send `Authorization: Bearer <token>`"),
    };
    let run = demo_run_context(verified.user);
    let reply = json!({
        "user_id": run.user_id().as_str(),
        "thread_id": run.thread_id().as_str(),
        "run_id": run.run_id().as_str(),
    });
    // The run outlives the request: the answer says which run to watch, the events say
    // how it goes.
    let AgentService { bridge, pace, .. } = service;
    tokio::spawn(async move {
        let ids = (run.user_id().clone(), run.run_id().clone());
        if let Err(e) = simulated_run(&bridge, run, pace).await {
            tracing::warn!(user = %ids.0, run = %ids.1, error = %e, "simulated run failed");
        }
    });
    (StatusCode::ACCEPTED, Json(reply)).into_response()
}

fn unauthorized(message: &str) -> Response {
    let mut response = (
        StatusCode::UNAUTHORIZED,
        Json(json!({ "error": "unauthorized", "message": message })),
    )
        .into_response();
    response
        .headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    response
}

#[tokio::main]
#[allow(
    clippy::print_stdout,
    reason = "an example tells the person who started it where to go next"
)]
async fn main() -> anyhow::Result<()> {
    let addr: SocketAddr = std::env::args()
        .nth(1)
        .or_else(|| std::env::var(ADDR_ENV).ok())
        .unwrap_or_else(|| DEFAULT_ADDR.to_owned())
        .parse()
        .context("the address to listen on, e.g. 127.0.0.1:3000")?;

    // One manager for the process: installed globally, code written against
    // `UnifiedWebSocketManager::global()` reaches the same connections.
    let manager = UnifiedWebSocketManager::in_memory();
    if UnifiedWebSocketManager::install_global(manager.clone()).is_err() {
        anyhow::bail!("a process-wide manager was installed already");
    }
    let bridge = manager.create_agent_bridge();
    // agentwire's routes and the service's own check tokens against one secret, so one
    // token (`agentwire-server token`) serves both. The library never makes one up.
    let secret = std::env::var(SECRET_ENV).with_context(|| {
        format!("set {SECRET_ENV}: the HS256 secret client tokens are signed with")
    })?;
    let auth = || Auth::hs256(secret.as_bytes());
    let app = app(
        AgentService::new(bridge, auth()?),
        agentwire::server::router(manager.clone(), auth()?),
    );

    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    let addr = listener.local_addr()?;
    println!("agent service on http://{addr}/ (agentwire's WebSocket at ws://{addr}/ws)");
    println!("mint a token: cargo run -p agentwire-server -- token --user alice");
    println!("start a run:  curl -X POST -H \"Authorization: Bearer $TOKEN\" http://{addr}/runs");

    let shutdown = async move {
        agentwire::server::shutdown_signal().await;
        // Open sockets would keep the server from finishing; close them (1001) so
        // clients reconnect elsewhere, as the standalone server does.
        manager.close_all(CloseCode::GoingAway);
    };
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
        .context("serving failed")
}

/// The page: a token field, a connection to `/ws`, a button that starts a run, and the
/// frames as they arrive.
const INDEX_HTML: &str = r#"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>agentwire — embedded agent service</title>
<style>
  body { font: 15px/1.4 system-ui, sans-serif; max-width: 50rem; margin: 2rem auto; padding: 0 1rem; }
  input { width: 100%; font-family: monospace; }
  ol { font-family: monospace; font-size: 13px; }
  .agent_completed { color: #060; } .agent_error { color: #a00; }
</style>
</head>
<body>
<h1>An agent service embedding agentwire</h1>
<p>Mint a token with <code>cargo run -p agentwire-server -- token --user alice</code> and paste it here.</p>
<input id="token" placeholder="token" autocomplete="off">
<p>
  <button id="connect">Connect</button>
  <button id="run" disabled>Start a run</button>
  <span id="status">not connected</span>
</p>
<ol id="events"></ol>
<script>
const $ = (id) => document.getElementById(id);
let ws;
function show(kind, text) {
  const li = document.createElement("li");
  li.className = kind;
  li.textContent = kind + (text ? " — " + text : "");
  $("events").appendChild(li);
}
function summary(f) {
  const d = f.data || {};
  switch (f.type) {
    case "agent_started": return d.agent_name + " (" + f.run_id + ")";
    case "agent_thinking": return d.thought;
    case "tool_executing": return d.tool_name + " " + JSON.stringify(d.arguments);
    case "tool_completed": return d.tool_name + " → " + JSON.stringify(d.result) + " in " + d.duration_ms + " ms";
    case "agent_completed": return d.result && d.result.answer;
    case "agent_error": return d.message;
    case "message_delta": return JSON.stringify(d.delta);
    case "connection_established": return f.connection_id;
    default: return "";
  }
}
$("connect").onclick = () => {
  if (ws) ws.close();
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  ws = new WebSocket(scheme + "://" + location.host + "/ws?token=" + encodeURIComponent($("token").value.trim()));
  ws.onopen = () => { $("status").textContent = "connected"; $("run").disabled = false; };
  ws.onclose = (e) => { $("status").textContent = "closed (" + e.code + ")"; $("run").disabled = true; };
  ws.onmessage = (m) => { const f = JSON.parse(m.data); show(f.type, summary(f)); };
};
$("run").onclick = async () => {
  const r = await fetch("/runs", { method: "POST", headers: { Authorization: "Bearer " + $("token").value.trim() } });
  if (!r.ok) show("agent_error", "POST /runs: " + r.status + " " + (await r.text()));
};
</script>
</body>
</html>
"#;
