//! `agentwire-server`: the axum application that puts the manager on the network —
//! WebSocket I/O, authentication, health, metrics, configuration and graceful shutdown —
//! and the `agentwire-server` binary built on it.
//!
//! What it is not: the owner of routing or ordering; those belong to the manager and its
//! broker. It is the only crate that knows axum or sockets.
//!
//! Key decision: one reader and one batching writer per connection; the writer drains the
//! manager's queue and sends the batch in one vectored write straight from the events'
//! shared bytes (no per-connection write buffer), under a write timeout, and the fan-out
//! path never awaits a socket.
//!
//! The library takes its configuration explicitly: a [`ServerConfig`] (a plain struct with
//! a builder) or, to mount agentwire in another axum application, the [`Auth`] its routes
//! verify tokens and API keys with. It has no development credentials and never makes a
//! secret up; those, the command line and the process-wide setup (logs, open-file limit,
//! allocator) belong to the `agentwire-server` binary, built with the `cli` feature (on by
//! default; embedders turn it off).
//!
//! ```no_run
//! use agentwire_manager::UnifiedWebSocketManager;
//! use agentwire_server::Auth;
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! // Mount agentwire in another axum application.
//! let manager = UnifiedWebSocketManager::in_memory();
//! let auth = Auth::hs256(std::env::var("AGENTWIRE_JWT_SECRET")?.as_bytes())?;
//! let app = axum::Router::new().merge(agentwire_server::router(manager, auth));
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! axum::serve(listener, app).await?;
//! # Ok(())
//! # }
//! ```
//!
//! Why each dependency:
//! - `axum`: the HTTP routes and extractors.
//! - `hyper` and `hyper-util`: `Server::serve` runs hyper's HTTP/1 connections itself and
//!   `/ws` takes hyper's upgrade, so the upgraded connection is still the `TcpStream` and
//!   splits without a lock (axum's own WebSocket keeps the stream behind tungstenite).
//! - `tokio-tungstenite`: reads client frames (masking, UTF-8, `--max-message-size`) and
//!   names the errors (1009 vs 1007 vs 1002); the same version as axum's (the lock file
//!   pins axum 0.8.8, which uses 0.28). The server writes its own frames (`wire.rs`).
//! - `socket2`: `sendmsg` with several buffers on the socket tokio owns.
//! - `tower-service`: the `Service` trait through which `Server::serve` calls the router
//!   for each request, after putting the peer's address in its extensions.
//! - `memchr`: finds an event frame's `ts` for the latency metric.
//! - `sha2` (already in the tree through `jsonwebtoken`'s `rust_crypto`): the fingerprint
//!   an API key's runs count against in the broker (`key:<hex>`), the same on every node
//!   and no way back to the key.
//! - `form_urlencoded`: decodes the `/ws` query string (`?token=…&last_seq=…&epoch=…`).
//! - `jsonwebtoken` with `rust_crypto`: JWT verification in pure Rust (no C toolchain) for
//!   HS256, RS256, ES256 and EdDSA, and the JWK types of a key set; with exactly that
//!   backend enabled it selects its crypto provider by itself.
//!
//! Behind the `jwks` feature (on by default), for `--jwt-jwks-url`: an HTTP/1 client to
//! fetch the key set, kept as small as one GET needs. `hyper-util`'s client over the
//! `hyper` the server runs already, `http-body-util` to read a body up to a bound, and
//! `hyper-rustls` with `rustls` on `ring` and the system's CA certificates for https.
//! `reqwest` was the alternative: it brings redirects, proxies, cookies, decompression and
//! (in its current release) aws-lc-rs, which needs cmake — none of which one GET of a
//! public document needs. An embedder without a JWKS URL turns the feature off and has no
//! TLS stack at all.
//!
//! Behind the `webhook` feature (on by default), for `--receipt-webhook-url`: the same
//! client (one POST per notice needs no more than one GET did; reqwest was passed over for
//! the same reasons), and `hmac` to sign each notice with HMAC-SHA256 over the `sha2`
//! already here — both were in the tree already (`jsonwebtoken`'s `rust_crypto` uses
//! them), so the feature adds no crate to the build.
//! - `subtle`: constant-time comparison of API keys.
//! - `prometheus-client`: one registry per server instance (no global recorder), so several
//!   servers in one process report exact values; a collector reads `get_stats()` at
//!   scrape time.
//! - `rand`: the jitter of each connection's first ping (and the binary's development
//!   credentials).
//! - `utoipa`: the OpenAPI document at `/openapi.json`, generated from the handlers'
//!   attributes, so the document and the routes cannot drift apart unnoticed.
//!
//! Behind the `redis` feature (on with `cli`, so the binary has it): `agentwire-redis`, the
//! broker of `--broker redis` (the `redis` client crate beneath it). [`ServerBroker`]
//! builds the configured broker; an embedder without the feature has no Redis client.
//!
//! The binary's own, behind the `cli` feature (`src/bin/agentwire-server/main.rs`):
//! - `clap` (derive, env): every flag with its environment variable and default in `--help`;
//!   `humantime`: the durations of those flags.
//! - `toml`: the optional `--config` file.
//! - `rlimit`: a safe API to raise `RLIMIT_NOFILE` (`unsafe` is forbidden here).
//! - `tracing-subscriber`: text or JSON logs.
//! - `mimalloc` (without transparent huge pages): see `main.rs`.
//! - `anyhow`: the binary's errors.

// Layers, top to bottom (docs/architecture.md; `cargo xtask tidy` checks that every
// import points down): `app` → `sse` (which shares the WebSocket endpoint's state) →
// `api`, `ws`, `demo` (side by side, never importing each other) → `auth` → `http`.
mod api;
mod app;
mod auth;
mod demo;
mod http;
mod sse;
mod webhook;
mod ws;

#[cfg(feature = "redis")]
pub use app::broker::redis_config;
pub use app::broker::{BrokerSetupError, ServerBroker};
pub use app::config::{
    BrokerKind, DemoMode, PerUserPolicy, RunLifecycle, SOCKET_SEND_BUFFER_RANGE, ServerConfig,
    ServerConfigBuilder,
};
pub use app::server::{
    FD_RESERVE, Server, ServerError, build_manager, clamp_max_connections, clamp_tcp_connections,
    router, router_with, run, websocket_share,
};
pub use app::shutdown::signal as shutdown_signal;
pub use auth::{
    Auth, AuthConfigError, AuthError, DEFAULT_JWKS_MAX_BYTES, DEFAULT_JWKS_MAX_KEYS,
    DEFAULT_JWKS_MIN_REFRESH_INTERVAL, DEFAULT_JWKS_REFRESH_INTERVAL, DEFAULT_JWKS_TIMEOUT,
    DEFAULT_MAX_TOKEN_BYTES, JwksSettings, MAX_CREDENTIALS_FILE_BYTES, MIN_API_KEY_CHARS,
    MIN_SECRET_BYTES, TokenReport, Verified, mint_hs256, read_credentials_file, writable_by_others,
};
pub use demo::{
    DEMO_MAX_BODY_BYTES, DEMO_MAX_PACE, DEMO_MAX_RUNS, DEMO_MAX_RUNS_PER_USER, DEMO_STALL_TIMEOUT,
    DEMO_TOKEN_TTL,
};
pub use webhook::{
    RETRY_BASE as WEBHOOK_RETRY_BASE, RETRY_MAX as WEBHOOK_RETRY_MAX, WebhookConfigError,
};
