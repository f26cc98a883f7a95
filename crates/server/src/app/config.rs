//! The server's configuration: a plain struct (every field public, with its default) and a
//! builder, and the translation into the manager's and the broker's bounds.
//!
//! The command line, the environment and the config file are the binary's business
//! (`src/bin/agentwire-server/cli.rs`): it parses them into a [`ServerConfig`]. Every
//! setting is named after its flag (`max_connections` is `--max-connections`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use agentwire_manager::{
    HeartbeatPolicy, HistoryConfig, LimitPolicy, ManagerConfig, QueueLimits, RunLimits,
};

use crate::auth::{
    Auth, AuthConfigError, DEFAULT_JWKS_MAX_BYTES, DEFAULT_JWKS_MAX_KEYS,
    DEFAULT_JWKS_MIN_REFRESH_INTERVAL, DEFAULT_JWKS_REFRESH_INTERVAL, DEFAULT_JWKS_TIMEOUT,
    DEFAULT_MAX_TOKEN_BYTES, JwksSettings,
};
use crate::http::door::DoorLimits;
use crate::webhook::{WebhookConfig, WebhookConfigError, WebhookSettings};

/// The values `socket_send_buffer` (`--socket-send-buffer`) may take besides 0: below 4 KiB
/// a connection could not hold one batch of frames; above 64 MiB it would pin more kernel
/// memory per connection than any link needs.
pub const SOCKET_SEND_BUFFER_RANGE: std::ops::RangeInclusive<usize> = 4096..=64 * 1024 * 1024;

/// Which broker owns the per-user streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
pub enum BrokerKind {
    /// In-process history: one node, no other process.
    Memory,
    /// Redis (standalone or Cluster), for many nodes sharing every user's stream:
    /// `--redis-url` or `--redis-cluster-nodes` says where (needs the `redis` feature).
    Redis,
}

/// What a connection beyond `--max-connections-per-user` does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
pub enum PerUserPolicy {
    /// Close the user's oldest connection with 4003 and accept the new one.
    EvictOldest,
    /// Refuse the new connection with 4004.
    Reject,
}

/// Whether the publish API has the broker check each run's lifecycle (docs/protocol.md §7).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
pub enum RunLifecycle {
    /// Refuse an event that breaks its run's order with 409.
    Enforce,
    /// Accept events in any order (the publisher is trusted to keep it).
    Off,
}

/// Whether the demo page and its endpoints are served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
pub enum DemoMode {
    /// Only in development mode ([`ServerConfig::dev_mode`]).
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
            DemoMode::Auto => config.dev_mode,
            DemoMode::On => true,
            DemoMode::Off => false,
        }
    }
}

/// Everything the server can be told. Start from [`ServerConfig::default`] (or
/// [`ServerConfig::builder`]) and change what differs:
///
/// ```
/// use std::time::Duration;
/// use agentwire_server::ServerConfig;
///
/// let config = ServerConfig::builder()
///     .listen(([127, 0, 0, 1], 9000).into())
///     .jwt_secret("a secret of at least thirty-two bytes")
///     .api_keys(["publisher-key"])
///     .heartbeat_interval(Duration::from_secs(15))
///     .build();
/// assert_eq!(config.max_connections, ServerConfig::default().max_connections);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ServerConfig {
    /// Address to listen on. Port 0 picks a free port (printed at start).
    pub listen: SocketAddr,

    /// Length of the TCP accept queue.
    pub listen_backlog: u32,

    /// HS256 secret that signs client tokens (`--jwt-secret`), at least 32 bytes outside
    /// development mode. A server needs this, `jwt_public_key` or `jwt_jwks_url`: without
    /// any it refuses to start.
    pub jwt_secret: Option<String>,

    /// PEM file with a public key: RSA (RS256), EC P-256 (ES256) or Ed25519 (EdDSA). Tokens
    /// signed by its private key are accepted too. Refused when users other than its owner
    /// can write it.
    pub jwt_public_key: Option<PathBuf>,

    /// URL of a JWKS key set (`https://`, or `http://` on a loopback host): RS256, ES256
    /// and EdDSA tokens signed by its keys are accepted too. Fetched at start, every
    /// `jwt_jwks_refresh_interval`, and for a token with an unknown `kid`.
    pub jwt_jwks_url: Option<String>,

    /// How often the JWKS key set is fetched again: a key removed from it is refused at
    /// most this long after its removal.
    pub jwt_jwks_refresh_interval: Duration,

    /// The shortest time between two JWKS fetches: a token with an unknown `kid` triggers a
    /// fetch at most this often, and a failed fetch is retried after it.
    pub jwt_jwks_min_refresh_interval: Duration,

    /// Longest one JWKS fetch may take (connection and body).
    pub jwt_jwks_timeout: Duration,

    /// Largest JWKS document read, in bytes.
    pub jwt_jwks_max_bytes: usize,

    /// Most keys a JWKS key set may hold; a larger one is refused (the last good one
    /// stays).
    pub jwt_jwks_max_keys: usize,

    /// Longest client token accepted, in bytes: a longer one is refused with 431 in a
    /// header, 400 in the query string, and an `error` frame in `refresh_token`.
    pub jwt_max_bytes: usize,

    /// Required `iss` claim, when set.
    pub jwt_issuer: Option<String>,

    /// Required `aud` claim, when set.
    pub jwt_audience: Option<String>,

    /// Clock skew tolerated on `exp`, `nbf` and `iat`, at the handshake and while
    /// connected.
    pub jwt_leeway: Duration,

    /// API keys with full access: publish, history reads and the admin endpoints
    /// (`--api-keys`), each at least 16 characters outside development mode.
    pub api_keys: Vec<String>,

    /// API keys that may only publish (POST /v1/events), comma-separated, each at least
    /// 16 characters outside development mode: they get 403 on history reads and the
    /// admin endpoints.
    pub publish_api_keys: Vec<String>,

    /// Development mode (`agentwire-server --dev`, or no secret on a loopback address):
    /// `--demo auto` serves the demo, and `POST /demo/token` mints tokens for loopback
    /// peers. The credentials are still `jwt_secret` and `api_keys`; the binary fills them
    /// from its development credentials file.
    pub dev_mode: bool,

    /// Which broker owns the event streams: `memory` (one node) or `redis` (many nodes).
    pub broker: BrokerKind,

    /// The Redis of `--broker redis`, e.g. `redis://127.0.0.1:6379` (a password as
    /// `redis://:password@host:6379`; never logged). Give this or `redis_cluster_nodes`.
    pub redis_url: Option<String>,

    /// With `--broker redis`, a Redis Cluster given by some of its nodes (e.g.
    /// `redis://10.0.0.1:7000`); the rest are discovered. Give this or `redis_url`.
    pub redis_cluster_nodes: Vec<String>,

    /// Prefix of every Redis key and channel, so several deployments can share one Redis
    /// (at most 64 bytes, no `{`, `}` or whitespace).
    pub redis_key_prefix: String,

    /// With `rediss://` addresses, the CA certificates (PEM) to trust instead of the
    /// system's; every Redis address must then be `rediss://`. The server's certificate
    /// and name are always verified.
    pub redis_tls_ca_file: Option<PathBuf>,

    /// With `rediss://` addresses, the client certificate chain (PEM) to present to a
    /// Redis that requires one (`tls-auth-clients yes`); needs `redis_tls_key_file`.
    pub redis_tls_cert_file: Option<PathBuf>,

    /// The private key (PEM: PKCS#8, PKCS#1 or SEC1) of `redis_tls_cert_file`.
    pub redis_tls_key_file: Option<PathBuf>,

    /// Longest wait for one Redis command (and for the connection at start); past it a
    /// publish answers 503, `/readyz` 503.
    pub redis_command_timeout: Duration,

    /// With `--broker redis`, how long a connection's lease counts against its user's
    /// `max_connections_per_user` without being renewed (renewed every third of it): the
    /// longest a connection of a node that died keeps counting (default 30 s).
    pub connection_lease: Duration,

    /// With `--broker redis`, how long an admin request (a user's connections, a
    /// disconnect) waits for the other nodes' answers (default 1 s); nodes that did not
    /// answer are named in the answer.
    pub redis_control_wait: Duration,

    /// Most WebSocket connections on this node; more are refused with 1013. Clamped to
    /// 7/8 of `max_tcp_connections`, so HTTP requests always have room.
    pub max_connections: usize,

    /// Most open TCP connections — WebSockets, HTTP requests and idle keep-alive connections
    /// together. At the cap the oldest idle HTTP connection is closed to make room; when
    /// none is idle the new connection is answered 503. Clamped to the open-file limit
    /// minus [`FD_RESERVE`](crate::FD_RESERVE).
    pub max_tcp_connections: usize,

    /// The kernel send buffer (`SO_SNDBUF`) of each accepted connection, in bytes; 0 leaves
    /// the kernel's autotuning on. Small enough that a slow reader's backpressure reaches
    /// the connection's own queue (where streamed text merges and a slow consumer gets
    /// 1013) instead of megabytes waiting in the kernel; within
    /// [`SOCKET_SEND_BUFFER_RANGE`] unless 0 (default 256 KiB).
    pub socket_send_buffer: usize,

    /// How long a new connection has to send its first request head whole, and any
    /// request head once its first bytes arrived; past it the connection is closed.
    pub header_read_timeout: Duration,

    /// How long a keep-alive connection may wait for its next request before it is closed.
    pub idle_timeout: Duration,

    /// How long a request body may take to arrive, from the end of its head; past it the
    /// request is answered 408.
    pub body_read_timeout: Duration,

    /// Largest request head (request line and headers), in bytes; larger is answered 431.
    pub max_header_bytes: usize,

    /// Longest request target (path and query), in bytes; longer is answered 414.
    pub max_uri_bytes: usize,

    /// Most connections one user may hold on this node.
    pub max_connections_per_user: usize,

    /// What a connection beyond --max-connections-per-user does.
    pub per_user_policy: PerUserPolicy,

    /// Most frames waiting for one connection's writer; beyond it the connection is a
    /// slow consumer and is closed with 1013.
    pub queue_max_frames: usize,

    /// Most bytes waiting for one connection's writer (same policy).
    pub queue_max_bytes: usize,

    /// Time between WebSocket pings.
    pub heartbeat_interval: Duration,

    /// How long past a ping a silent peer is given before it is closed with 1001.
    pub heartbeat_timeout: Duration,

    /// How often the manager sweeps dead connections and trims history.
    pub sweep_interval: Duration,

    /// Longest a batch write (or a ping, or a close frame) may take; a peer that stopped
    /// reading is dropped after it.
    pub write_timeout: Duration,

    /// How long after sending a close frame the server waits for the peer's.
    pub close_timeout: Duration,

    /// Most frames one write batch takes from a connection's queue before flushing.
    pub write_batch_frames: usize,

    /// Per-connection read buffer, in bytes (at least 256). Client frames are tiny; a
    /// larger message grows it, up to --max-message-size.
    pub read_buffer_size: usize,

    /// Largest client message, in bytes; larger ones close the connection with 1009.
    pub max_message_size: usize,

    /// Largest client WebSocket frame, in bytes (same policy).
    pub max_frame_size: usize,

    /// Largest event, in bytes of JSON.
    pub max_event_bytes: usize,

    /// Most events in one publish body (a JSON array); more are refused with 413.
    pub max_batch: usize,

    /// Largest publish request body, in bytes; larger ones are refused with 413.
    pub max_request_bytes: usize,

    /// Events per second each API key may publish (GCRA, `PublishRates`); beyond it the
    /// publish API answers 429 with Retry-After. 0 turns the limit off.
    pub publish_rate: u32,

    /// Events an API key may publish at once before --publish-rate applies (the bucket's
    /// size).
    pub publish_burst: u32,

    /// Whether the publish API has the broker check each run's lifecycle.
    pub run_lifecycle: RunLifecycle,

    /// Most runs whose lifecycle state the broker holds, in progress and finished; finished
    /// runs are forgotten first to make room, and a new run that does not fit is refused
    /// (429 too_many_runs).
    pub max_runs: usize,

    /// How long a run's state is remembered after its last event (finished or not).
    pub run_ttl: Duration,

    /// Most bytes of run state the broker holds (per run its ids and a few hundred bytes,
    /// per open tool call its id and 64); a new run or tool call beyond it is refused.
    pub run_state_max_bytes: usize,

    /// Most runs in progress one API key's publishes (or one embedded publisher's) may
    /// hold: its share, so one publisher cannot take every place.
    pub max_runs_per_key: usize,

    /// Most bytes of run state in progress one API key (or embedded publisher) may hold.
    pub run_state_max_bytes_per_key: usize,

    /// How long a run in progress may go without an event or a heartbeat before the
    /// server ends it with `agent_error` code `stalled` (zero: never). A run's
    /// `agent_started` may set its own (`stall_timeout_ms`).
    pub run_stall_timeout: Duration,

    /// Most runs the stall watchdog watches at once on this node; a run beyond it is not
    /// watched here (`agentwire_runs_unwatched_total`).
    pub max_watched_runs: usize,

    /// Most users whose delivery receipt this node keeps (the least recently updated
    /// forgotten first).
    pub max_receipt_users: usize,

    /// How long a receipt nothing moved is kept once its user has no connection on this
    /// node (`agentwire_receipts_expired_total` counts what it forgets).
    pub receipt_ttl: Duration,

    /// Longest `wait_acked` a run receipt may ask for.
    pub receipt_max_wait: Duration,

    /// Most run receipt long polls waiting at once; more are refused with 503.
    pub receipt_max_waiters: usize,

    /// Where the receipt webhook POSTs a notice for a run whose terminal event no client
    /// acknowledged within `receipt_webhook_after`: `https://…`, or `http://` on a loopback
    /// host. `None` (the default) turns the webhook off.
    pub receipt_webhook_url: Option<String>,

    /// The HMAC-SHA256 key that signs each notice, at least 32 bytes outside development
    /// mode. The webhook needs this or `receipt_webhook_secret_file`, not both.
    pub receipt_webhook_secret: Option<String>,

    /// A file holding the webhook's key (one trailing newline is ignored); the same rules
    /// as `receipt_webhook_secret`.
    pub receipt_webhook_secret_file: Option<PathBuf>,

    /// How long after a run's terminal event was accepted the webhook looks whether a
    /// client acknowledged it, and sends its notice if none did.
    pub receipt_webhook_after: Duration,

    /// Longest one webhook request may take, connection included; a request that takes
    /// longer is retried.
    pub receipt_webhook_timeout: Duration,

    /// How many times a notice is sent again after a failed attempt (a timeout, a
    /// connection error, 5xx or 429); a 4xx other than 429 is not retried.
    pub receipt_webhook_retries: u32,

    /// Most notices pending at once on this node (waiting for their time, or being sent);
    /// a run that ends when this many are pending gets no notice
    /// (`agentwire_receipt_webhook_dropped_total{reason="full"}`).
    pub receipt_webhook_max_pending: usize,

    /// Most events one history read (GET /v1/users/{user_id}/events) returns.
    pub history_read_max: usize,

    /// Bad client frames (each answered with an `error` frame) tolerated per connection;
    /// one more closes it with 1008.
    pub max_bad_frames: u32,

    /// Frames per second one connection may send (a token bucket, WebSocket pings
    /// included); frames beyond it are dropped unread, the first of a run answered with a
    /// `rate_limited` error frame, and a client that keeps on for another burst is closed
    /// with 1008. 0 turns the limit off.
    pub client_frame_rate: u32,

    /// Frames a connection may send at once before --client-frame-rate applies (the
    /// bucket's size).
    pub client_frame_burst: u32,

    /// How long a user whose connection was closed with 1008 for exceeding
    /// --client-frame-rate is refused at the handshake on this node (429 `rate_limited`
    /// with `Retry-After`), so a flooder that reconnects at once costs a token check, not
    /// a connection and another flood. 0 turns the cool-down off.
    pub client_frame_cooldown: Duration,

    /// Without a resume in the query string, how long to wait for a `resume` first frame
    /// before streaming from the start of history. 0 turns the first-frame resume off.
    pub resume_wait: Duration,

    /// Most events of history kept per user.
    pub history_max_events: usize,

    /// Oldest event of history kept.
    pub history_max_age: Duration,

    /// Most bytes of history kept for all users together.
    pub history_max_bytes: usize,

    /// How long after its acceptance an `event_id` is recognised as a retry (and another
    /// event under it refused with 409). Default (`None`): `history_max_age`. Never shorter
    /// than the time its event stays in history.
    pub dedupe_window: Option<Duration>,

    /// Longest a graceful shutdown may take before the process exits anyway (after the
    /// drain delay).
    pub shutdown_timeout: Duration,

    /// On shutdown, how long `/readyz` answers 503 — while everything else is served as
    /// before — before the listener closes and connections are closed, so load balancers
    /// stop sending first.
    pub drain_delay: Duration,

    /// Origins allowed to open /ws (comma-separated, e.g. `https://app.example.com`); empty
    /// allows any. Requests without an Origin header (non-browsers) are always allowed.
    pub allowed_origins: Vec<String>,

    /// The live demo page at / (with /demo/* endpoints that mint development tokens and
    /// start simulated runs): auto = on only in development mode, on, or off. /client.js is
    /// served in every mode.
    pub demo: DemoMode,

    /// Serve `/metrics` on this address of its own (a private interface, for Prometheus),
    /// to anyone who reaches it, and not on `listen`. Without it `/metrics` is served on
    /// `listen` to full API keys only.
    pub metrics_listen: Option<SocketAddr>,

    /// The process's open-file limit, when known: `max_connections` is clamped to it,
    /// keeping [`FD_RESERVE`](crate::FD_RESERVE) descriptors free. The binary raises the
    /// limit and sets this; an embedding application may set it too.
    pub open_file_limit: Option<u64>,
}

impl Default for ServerConfig {
    /// The documented default of every setting (docs/operations.md).
    fn default() -> Self {
        ServerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            listen_backlog: 4096,
            jwt_secret: None,
            jwt_public_key: None,
            jwt_jwks_url: None,
            jwt_jwks_refresh_interval: DEFAULT_JWKS_REFRESH_INTERVAL,
            jwt_jwks_min_refresh_interval: DEFAULT_JWKS_MIN_REFRESH_INTERVAL,
            jwt_jwks_timeout: DEFAULT_JWKS_TIMEOUT,
            jwt_jwks_max_bytes: DEFAULT_JWKS_MAX_BYTES,
            jwt_jwks_max_keys: DEFAULT_JWKS_MAX_KEYS,
            jwt_max_bytes: DEFAULT_MAX_TOKEN_BYTES,
            jwt_issuer: None,
            jwt_audience: None,
            jwt_leeway: Duration::from_secs(30),
            api_keys: Vec::new(),
            publish_api_keys: Vec::new(),
            dev_mode: false,
            broker: BrokerKind::Memory,
            redis_url: None,
            redis_cluster_nodes: Vec::new(),
            redis_key_prefix: "agentwire:".to_owned(),
            redis_tls_ca_file: None,
            redis_tls_cert_file: None,
            redis_tls_key_file: None,
            redis_command_timeout: Duration::from_secs(2),
            connection_lease: Duration::from_secs(30),
            redis_control_wait: Duration::from_secs(1),
            max_connections: 10_000,
            max_tcp_connections: 12_000,
            socket_send_buffer: 256 * 1024,
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(120),
            body_read_timeout: Duration::from_secs(30),
            max_header_bytes: 16 * 1024,
            max_uri_bytes: 12 * 1024,
            max_connections_per_user: 3,
            per_user_policy: PerUserPolicy::EvictOldest,
            queue_max_frames: 1024,
            queue_max_bytes: 4 * 1024 * 1024,
            heartbeat_interval: Duration::from_secs(30),
            heartbeat_timeout: Duration::from_secs(10),
            sweep_interval: Duration::from_secs(5),
            write_timeout: Duration::from_secs(10),
            close_timeout: Duration::from_secs(2),
            write_batch_frames: 256,
            read_buffer_size: 256,
            max_message_size: agentwire_protocol::MAX_CLIENT_FRAME_BYTES,
            max_frame_size: agentwire_protocol::MAX_CLIENT_FRAME_BYTES,
            max_event_bytes: agentwire_protocol::DEFAULT_MAX_EVENT_BYTES,
            max_batch: 100,
            max_request_bytes: 4 * 1024 * 1024,
            publish_rate: 1_000,
            publish_burst: 2_000,
            run_lifecycle: RunLifecycle::Enforce,
            max_runs: RunLimits::default().max_runs,
            run_ttl: RunLimits::default().ttl,
            run_state_max_bytes: RunLimits::default().max_bytes,
            max_runs_per_key: RunLimits::default().max_runs_per_owner,
            run_state_max_bytes_per_key: RunLimits::default().max_bytes_per_owner,
            run_stall_timeout: ManagerConfig::default().run_stall_timeout,
            max_watched_runs: ManagerConfig::default().max_watched_runs,
            max_receipt_users: ManagerConfig::default().max_receipt_users,
            receipt_ttl: ManagerConfig::default().receipt_ttl,
            receipt_max_wait: Duration::from_secs(60),
            receipt_max_waiters: 1_000,
            receipt_webhook_url: None,
            receipt_webhook_secret: None,
            receipt_webhook_secret_file: None,
            receipt_webhook_after: Duration::from_secs(30),
            receipt_webhook_timeout: Duration::from_secs(5),
            receipt_webhook_retries: 5,
            receipt_webhook_max_pending: 10_000,
            history_read_max: 1_000,
            max_bad_frames: 10,
            client_frame_rate: 50,
            client_frame_burst: 100,
            client_frame_cooldown: Duration::from_secs(10),
            resume_wait: Duration::from_millis(50),
            history_max_events: 1_000,
            history_max_age: Duration::from_secs(600),
            history_max_bytes: 256 * 1024 * 1024,
            dedupe_window: None,
            shutdown_timeout: Duration::from_secs(10),
            drain_delay: Duration::from_secs(5),
            allowed_origins: Vec::new(),
            demo: DemoMode::Auto,
            metrics_listen: None,
            open_file_limit: None,
        }
    }
}

/// Builds a [`ServerConfig`] from the defaults, one setting at a time.
#[derive(Debug, Clone, Default)]
#[must_use]
pub struct ServerConfigBuilder(ServerConfig);

impl ServerConfigBuilder {
    /// Sets [`ServerConfig::listen`].
    pub fn listen(mut self, value: SocketAddr) -> Self {
        self.0.listen = value;
        self
    }

    /// Sets [`ServerConfig::listen_backlog`].
    pub fn listen_backlog(mut self, value: u32) -> Self {
        self.0.listen_backlog = value;
        self
    }

    /// Sets [`ServerConfig::jwt_secret`].
    pub fn jwt_secret(mut self, value: impl Into<String>) -> Self {
        self.0.jwt_secret = Some(value.into());
        self
    }

    /// Sets [`ServerConfig::jwt_public_key`].
    pub fn jwt_public_key(mut self, value: impl Into<PathBuf>) -> Self {
        self.0.jwt_public_key = Some(value.into());
        self
    }

    /// Sets [`ServerConfig::jwt_jwks_url`].
    pub fn jwt_jwks_url(mut self, value: impl Into<String>) -> Self {
        self.0.jwt_jwks_url = Some(value.into());
        self
    }

    /// Sets [`ServerConfig::jwt_jwks_refresh_interval`].
    pub fn jwt_jwks_refresh_interval(mut self, value: Duration) -> Self {
        self.0.jwt_jwks_refresh_interval = value;
        self
    }

    /// Sets [`ServerConfig::jwt_jwks_min_refresh_interval`].
    pub fn jwt_jwks_min_refresh_interval(mut self, value: Duration) -> Self {
        self.0.jwt_jwks_min_refresh_interval = value;
        self
    }

    /// Sets [`ServerConfig::jwt_jwks_timeout`].
    pub fn jwt_jwks_timeout(mut self, value: Duration) -> Self {
        self.0.jwt_jwks_timeout = value;
        self
    }

    /// Sets [`ServerConfig::jwt_jwks_max_bytes`].
    pub fn jwt_jwks_max_bytes(mut self, value: usize) -> Self {
        self.0.jwt_jwks_max_bytes = value;
        self
    }

    /// Sets [`ServerConfig::jwt_jwks_max_keys`].
    pub fn jwt_jwks_max_keys(mut self, value: usize) -> Self {
        self.0.jwt_jwks_max_keys = value;
        self
    }

    /// Sets [`ServerConfig::jwt_max_bytes`].
    pub fn jwt_max_bytes(mut self, value: usize) -> Self {
        self.0.jwt_max_bytes = value;
        self
    }

    /// Sets [`ServerConfig::jwt_issuer`].
    pub fn jwt_issuer(mut self, value: impl Into<String>) -> Self {
        self.0.jwt_issuer = Some(value.into());
        self
    }

    /// Sets [`ServerConfig::jwt_audience`].
    pub fn jwt_audience(mut self, value: impl Into<String>) -> Self {
        self.0.jwt_audience = Some(value.into());
        self
    }

    /// Sets [`ServerConfig::jwt_leeway`].
    pub fn jwt_leeway(mut self, value: Duration) -> Self {
        self.0.jwt_leeway = value;
        self
    }

    /// Sets [`ServerConfig::api_keys`].
    pub fn api_keys(mut self, value: impl IntoIterator<Item = impl Into<String>>) -> Self {
        self.0.api_keys = value.into_iter().map(Into::into).collect();
        self
    }

    /// Sets [`ServerConfig::publish_api_keys`].
    pub fn publish_api_keys(mut self, value: impl IntoIterator<Item = impl Into<String>>) -> Self {
        self.0.publish_api_keys = value.into_iter().map(Into::into).collect();
        self
    }

    /// Sets [`ServerConfig::dev_mode`].
    pub fn dev_mode(mut self, value: bool) -> Self {
        self.0.dev_mode = value;
        self
    }

    /// Sets [`ServerConfig::broker`].
    pub fn broker(mut self, value: BrokerKind) -> Self {
        self.0.broker = value;
        self
    }

    /// Sets [`ServerConfig::redis_url`].
    pub fn redis_url(mut self, value: impl Into<String>) -> Self {
        self.0.redis_url = Some(value.into());
        self
    }

    /// Sets [`ServerConfig::redis_cluster_nodes`].
    pub fn redis_cluster_nodes(
        mut self,
        value: impl IntoIterator<Item = impl Into<String>>,
    ) -> Self {
        self.0.redis_cluster_nodes = value.into_iter().map(Into::into).collect();
        self
    }

    /// Sets [`ServerConfig::redis_key_prefix`].
    pub fn redis_key_prefix(mut self, value: impl Into<String>) -> Self {
        self.0.redis_key_prefix = value.into();
        self
    }

    /// Sets [`ServerConfig::redis_tls_ca_file`].
    pub fn redis_tls_ca_file(mut self, value: impl Into<PathBuf>) -> Self {
        self.0.redis_tls_ca_file = Some(value.into());
        self
    }

    /// Sets [`ServerConfig::redis_tls_cert_file`] and [`ServerConfig::redis_tls_key_file`].
    pub fn redis_tls_client_identity(
        mut self,
        cert_file: impl Into<PathBuf>,
        key_file: impl Into<PathBuf>,
    ) -> Self {
        self.0.redis_tls_cert_file = Some(cert_file.into());
        self.0.redis_tls_key_file = Some(key_file.into());
        self
    }

    /// Sets [`ServerConfig::connection_lease`].
    pub fn connection_lease(mut self, value: Duration) -> Self {
        self.0.connection_lease = value;
        self
    }

    /// Sets [`ServerConfig::redis_control_wait`].
    pub fn redis_control_wait(mut self, value: Duration) -> Self {
        self.0.redis_control_wait = value;
        self
    }

    /// Sets [`ServerConfig::redis_command_timeout`].
    pub fn redis_command_timeout(mut self, value: Duration) -> Self {
        self.0.redis_command_timeout = value;
        self
    }

    /// Sets [`ServerConfig::max_connections`].
    pub fn max_connections(mut self, value: usize) -> Self {
        self.0.max_connections = value;
        self
    }

    /// Sets [`ServerConfig::socket_send_buffer`].
    pub fn socket_send_buffer(mut self, value: usize) -> Self {
        self.0.socket_send_buffer = value;
        self
    }

    /// Sets [`ServerConfig::max_tcp_connections`].
    pub fn max_tcp_connections(mut self, value: usize) -> Self {
        self.0.max_tcp_connections = value;
        self
    }

    /// Sets [`ServerConfig::header_read_timeout`].
    pub fn header_read_timeout(mut self, value: Duration) -> Self {
        self.0.header_read_timeout = value;
        self
    }

    /// Sets [`ServerConfig::idle_timeout`].
    pub fn idle_timeout(mut self, value: Duration) -> Self {
        self.0.idle_timeout = value;
        self
    }

    /// Sets [`ServerConfig::body_read_timeout`].
    pub fn body_read_timeout(mut self, value: Duration) -> Self {
        self.0.body_read_timeout = value;
        self
    }

    /// Sets [`ServerConfig::max_header_bytes`].
    pub fn max_header_bytes(mut self, value: usize) -> Self {
        self.0.max_header_bytes = value;
        self
    }

    /// Sets [`ServerConfig::max_uri_bytes`].
    pub fn max_uri_bytes(mut self, value: usize) -> Self {
        self.0.max_uri_bytes = value;
        self
    }

    /// Sets [`ServerConfig::max_connections_per_user`].
    pub fn max_connections_per_user(mut self, value: usize) -> Self {
        self.0.max_connections_per_user = value;
        self
    }

    /// Sets [`ServerConfig::per_user_policy`].
    pub fn per_user_policy(mut self, value: PerUserPolicy) -> Self {
        self.0.per_user_policy = value;
        self
    }

    /// Sets [`ServerConfig::queue_max_frames`].
    pub fn queue_max_frames(mut self, value: usize) -> Self {
        self.0.queue_max_frames = value;
        self
    }

    /// Sets [`ServerConfig::queue_max_bytes`].
    pub fn queue_max_bytes(mut self, value: usize) -> Self {
        self.0.queue_max_bytes = value;
        self
    }

    /// Sets [`ServerConfig::heartbeat_interval`].
    pub fn heartbeat_interval(mut self, value: Duration) -> Self {
        self.0.heartbeat_interval = value;
        self
    }

    /// Sets [`ServerConfig::heartbeat_timeout`].
    pub fn heartbeat_timeout(mut self, value: Duration) -> Self {
        self.0.heartbeat_timeout = value;
        self
    }

    /// Sets [`ServerConfig::sweep_interval`].
    pub fn sweep_interval(mut self, value: Duration) -> Self {
        self.0.sweep_interval = value;
        self
    }

    /// Sets [`ServerConfig::write_timeout`].
    pub fn write_timeout(mut self, value: Duration) -> Self {
        self.0.write_timeout = value;
        self
    }

    /// Sets [`ServerConfig::close_timeout`].
    pub fn close_timeout(mut self, value: Duration) -> Self {
        self.0.close_timeout = value;
        self
    }

    /// Sets [`ServerConfig::write_batch_frames`].
    pub fn write_batch_frames(mut self, value: usize) -> Self {
        self.0.write_batch_frames = value;
        self
    }

    /// Sets [`ServerConfig::read_buffer_size`].
    pub fn read_buffer_size(mut self, value: usize) -> Self {
        self.0.read_buffer_size = value;
        self
    }

    /// Sets [`ServerConfig::max_message_size`].
    pub fn max_message_size(mut self, value: usize) -> Self {
        self.0.max_message_size = value;
        self
    }

    /// Sets [`ServerConfig::max_frame_size`].
    pub fn max_frame_size(mut self, value: usize) -> Self {
        self.0.max_frame_size = value;
        self
    }

    /// Sets [`ServerConfig::max_event_bytes`].
    pub fn max_event_bytes(mut self, value: usize) -> Self {
        self.0.max_event_bytes = value;
        self
    }

    /// Sets [`ServerConfig::max_batch`].
    pub fn max_batch(mut self, value: usize) -> Self {
        self.0.max_batch = value;
        self
    }

    /// Sets [`ServerConfig::max_request_bytes`].
    pub fn max_request_bytes(mut self, value: usize) -> Self {
        self.0.max_request_bytes = value;
        self
    }

    /// Sets [`ServerConfig::publish_rate`].
    pub fn publish_rate(mut self, value: u32) -> Self {
        self.0.publish_rate = value;
        self
    }

    /// Sets [`ServerConfig::publish_burst`].
    pub fn publish_burst(mut self, value: u32) -> Self {
        self.0.publish_burst = value;
        self
    }

    /// Sets [`ServerConfig::run_lifecycle`].
    pub fn run_lifecycle(mut self, value: RunLifecycle) -> Self {
        self.0.run_lifecycle = value;
        self
    }

    /// Sets [`ServerConfig::max_runs`].
    pub fn max_runs(mut self, value: usize) -> Self {
        self.0.max_runs = value;
        self
    }

    /// Sets [`ServerConfig::run_ttl`].
    pub fn run_ttl(mut self, value: Duration) -> Self {
        self.0.run_ttl = value;
        self
    }

    /// Sets [`ServerConfig::run_state_max_bytes`].
    pub fn run_state_max_bytes(mut self, value: usize) -> Self {
        self.0.run_state_max_bytes = value;
        self
    }

    /// Sets [`ServerConfig::max_runs_per_key`].
    pub fn max_runs_per_key(mut self, value: usize) -> Self {
        self.0.max_runs_per_key = value;
        self
    }

    /// Sets [`ServerConfig::run_stall_timeout`].
    pub fn run_stall_timeout(mut self, value: Duration) -> Self {
        self.0.run_stall_timeout = value;
        self
    }

    /// Sets [`ServerConfig::max_watched_runs`].
    pub fn max_watched_runs(mut self, value: usize) -> Self {
        self.0.max_watched_runs = value;
        self
    }

    /// Sets [`ServerConfig::max_receipt_users`].
    pub fn max_receipt_users(mut self, value: usize) -> Self {
        self.0.max_receipt_users = value;
        self
    }

    /// Sets [`ServerConfig::receipt_ttl`].
    pub fn receipt_ttl(mut self, value: Duration) -> Self {
        self.0.receipt_ttl = value;
        self
    }

    /// Sets [`ServerConfig::receipt_max_wait`].
    pub fn receipt_max_wait(mut self, value: Duration) -> Self {
        self.0.receipt_max_wait = value;
        self
    }

    /// Sets [`ServerConfig::receipt_max_waiters`].
    pub fn receipt_max_waiters(mut self, value: usize) -> Self {
        self.0.receipt_max_waiters = value;
        self
    }

    /// Sets [`ServerConfig::receipt_webhook_url`].
    pub fn receipt_webhook_url(mut self, value: impl Into<String>) -> Self {
        self.0.receipt_webhook_url = Some(value.into());
        self
    }

    /// Sets [`ServerConfig::receipt_webhook_secret`].
    pub fn receipt_webhook_secret(mut self, value: impl Into<String>) -> Self {
        self.0.receipt_webhook_secret = Some(value.into());
        self
    }

    /// Sets [`ServerConfig::receipt_webhook_secret_file`].
    pub fn receipt_webhook_secret_file(mut self, value: impl Into<PathBuf>) -> Self {
        self.0.receipt_webhook_secret_file = Some(value.into());
        self
    }

    /// Sets [`ServerConfig::receipt_webhook_after`].
    pub fn receipt_webhook_after(mut self, value: Duration) -> Self {
        self.0.receipt_webhook_after = value;
        self
    }

    /// Sets [`ServerConfig::receipt_webhook_timeout`].
    pub fn receipt_webhook_timeout(mut self, value: Duration) -> Self {
        self.0.receipt_webhook_timeout = value;
        self
    }

    /// Sets [`ServerConfig::receipt_webhook_retries`].
    pub fn receipt_webhook_retries(mut self, value: u32) -> Self {
        self.0.receipt_webhook_retries = value;
        self
    }

    /// Sets [`ServerConfig::receipt_webhook_max_pending`].
    pub fn receipt_webhook_max_pending(mut self, value: usize) -> Self {
        self.0.receipt_webhook_max_pending = value;
        self
    }

    /// Sets [`ServerConfig::run_state_max_bytes_per_key`].
    pub fn run_state_max_bytes_per_key(mut self, value: usize) -> Self {
        self.0.run_state_max_bytes_per_key = value;
        self
    }

    /// Sets [`ServerConfig::history_read_max`].
    pub fn history_read_max(mut self, value: usize) -> Self {
        self.0.history_read_max = value;
        self
    }

    /// Sets [`ServerConfig::max_bad_frames`].
    pub fn max_bad_frames(mut self, value: u32) -> Self {
        self.0.max_bad_frames = value;
        self
    }

    /// Sets [`ServerConfig::client_frame_rate`].
    pub fn client_frame_rate(mut self, value: u32) -> Self {
        self.0.client_frame_rate = value;
        self
    }

    /// Sets [`ServerConfig::client_frame_burst`].
    pub fn client_frame_burst(mut self, value: u32) -> Self {
        self.0.client_frame_burst = value;
        self
    }

    /// Sets [`ServerConfig::client_frame_cooldown`].
    pub fn client_frame_cooldown(mut self, value: Duration) -> Self {
        self.0.client_frame_cooldown = value;
        self
    }

    /// Sets [`ServerConfig::resume_wait`].
    pub fn resume_wait(mut self, value: Duration) -> Self {
        self.0.resume_wait = value;
        self
    }

    /// Sets [`ServerConfig::history_max_events`].
    pub fn history_max_events(mut self, value: usize) -> Self {
        self.0.history_max_events = value;
        self
    }

    /// Sets [`ServerConfig::history_max_age`].
    pub fn history_max_age(mut self, value: Duration) -> Self {
        self.0.history_max_age = value;
        self
    }

    /// Sets [`ServerConfig::history_max_bytes`].
    pub fn history_max_bytes(mut self, value: usize) -> Self {
        self.0.history_max_bytes = value;
        self
    }

    /// Sets [`ServerConfig::dedupe_window`].
    pub fn dedupe_window(mut self, value: impl Into<Duration>) -> Self {
        self.0.dedupe_window = Some(value.into());
        self
    }

    /// Sets [`ServerConfig::shutdown_timeout`].
    pub fn shutdown_timeout(mut self, value: Duration) -> Self {
        self.0.shutdown_timeout = value;
        self
    }

    /// Sets [`ServerConfig::drain_delay`].
    pub fn drain_delay(mut self, value: Duration) -> Self {
        self.0.drain_delay = value;
        self
    }

    /// Sets [`ServerConfig::allowed_origins`].
    pub fn allowed_origins(mut self, value: impl IntoIterator<Item = impl Into<String>>) -> Self {
        self.0.allowed_origins = value.into_iter().map(Into::into).collect();
        self
    }

    /// Sets [`ServerConfig::demo`].
    pub fn demo(mut self, value: DemoMode) -> Self {
        self.0.demo = value;
        self
    }

    /// Sets [`ServerConfig::metrics_listen`].
    pub fn metrics_listen(mut self, value: SocketAddr) -> Self {
        self.0.metrics_listen = Some(value);
        self
    }

    /// Sets [`ServerConfig::open_file_limit`].
    pub fn open_file_limit(mut self, value: impl Into<u64>) -> Self {
        self.0.open_file_limit = Some(value.into());
        self
    }

    /// The configuration.
    pub fn build(self) -> ServerConfig {
        self.0
    }
}

impl ServerConfig {
    /// A builder starting from the defaults.
    pub fn builder() -> ServerConfigBuilder {
        ServerConfigBuilder::default()
    }

    /// The verifier of client tokens and API keys this configuration describes. Outside
    /// development mode the HS256 secret must be at least
    /// [`MIN_SECRET_BYTES`](crate::MIN_SECRET_BYTES) and every API key at least
    /// [`MIN_API_KEY_CHARS`](crate::MIN_API_KEY_CHARS) long. Nothing is fetched here (see
    /// [`Auth::refresh_keys`]).
    ///
    /// # Errors
    /// [`AuthConfigError::NoCredentials`] when none of `jwt_secret`, `jwt_public_key` and
    /// `jwt_jwks_url` is set; [`AuthConfigError::ShortSecret`] or
    /// [`AuthConfigError::ShortApiKey`]; [`AuthConfigError`] when a key file cannot be
    /// used or the JWKS URL is not acceptable.
    pub fn auth(&self) -> Result<Auth, AuthConfigError> {
        if self.jwt_secret.is_none() && self.jwt_public_key.is_none() && self.jwt_jwks_url.is_none()
        {
            return Err(AuthConfigError::NoCredentials);
        }
        let mut auth = match &self.jwt_secret {
            Some(secret) if self.dev_mode && !secret.is_empty() => {
                Auth::hs256_unchecked(secret.as_bytes())
            }
            Some(secret) => Auth::hs256(secret.as_bytes())?,
            None => Auth::empty(),
        };
        if let Some(path) = &self.jwt_public_key {
            auth = auth.with_public_key_file(path)?;
        }
        if let Some(url) = &self.jwt_jwks_url {
            auth = auth.with_jwks(self.jwks_settings(url))?;
        }
        let auth = auth
            .with_issuer(self.jwt_issuer.clone())
            .with_audience(self.jwt_audience.clone())
            .with_leeway(self.jwt_leeway)
            .with_max_token_bytes(self.jwt_max_bytes.max(1));
        if self.dev_mode {
            Ok(auth.with_api_keys_unchecked(&self.api_keys, &self.publish_api_keys))
        } else {
            auth.with_api_keys(&self.api_keys, &self.publish_api_keys)
        }
    }

    /// The receipt webhook's checked settings; `None` when no URL is set.
    pub(crate) fn receipt_webhook(&self) -> Result<Option<WebhookSettings>, WebhookConfigError> {
        WebhookConfig {
            url: self.receipt_webhook_url.as_deref(),
            secret: self.receipt_webhook_secret.as_deref(),
            secret_file: self.receipt_webhook_secret_file.as_deref(),
            after: self.receipt_webhook_after,
            timeout: self.receipt_webhook_timeout,
            retries: self.receipt_webhook_retries,
            max_pending: self.receipt_webhook_max_pending,
            dev_mode: self.dev_mode,
        }
        .check()
    }

    fn jwks_settings(&self, url: &str) -> JwksSettings {
        let mut s = JwksSettings::new(url);
        s.refresh_interval = self.jwt_jwks_refresh_interval;
        s.min_refresh_interval = self.jwt_jwks_min_refresh_interval;
        s.timeout = self.jwt_jwks_timeout;
        s.max_bytes = self.jwt_jwks_max_bytes;
        s.max_keys = self.jwt_jwks_max_keys;
        s
    }

    /// The front door's bounds.
    pub(crate) fn door_limits(&self) -> DoorLimits {
        DoorLimits {
            max_tcp_connections: self.max_tcp_connections.max(1),
            header_read_timeout: self.header_read_timeout.max(Duration::from_millis(1)),
            idle_timeout: self.idle_timeout.max(Duration::from_millis(1)),
            body_read_timeout: self.body_read_timeout.max(Duration::from_millis(1)),
            // hyper needs room for a request line and a few headers.
            max_header_bytes: self.max_header_bytes.max(1024),
            max_uri_bytes: self.max_uri_bytes.max(64),
            socket_send_buffer: self.socket_send_buffer,
        }
    }

    /// `socket_send_buffer` when it is 0 or within [`SOCKET_SEND_BUFFER_RANGE`].
    ///
    /// # Errors
    /// A sentence naming the setting, its value and the range, for any other value.
    pub fn checked_socket_send_buffer(&self) -> Result<usize, String> {
        let bytes = self.socket_send_buffer;
        if bytes == 0 || SOCKET_SEND_BUFFER_RANGE.contains(&bytes) {
            Ok(bytes)
        } else {
            Err(format!(
                "socket_send_buffer (--socket-send-buffer) is {bytes} bytes: it must be 0 \
                 (the kernel's autotuning) or from {} to {} bytes",
                SOCKET_SEND_BUFFER_RANGE.start(),
                SOCKET_SEND_BUFFER_RANGE.end()
            ))
        }
    }

    /// The manager's configuration.
    pub fn manager_config(&self) -> ManagerConfig {
        ManagerConfig {
            max_connections_per_user: self.max_connections_per_user.max(1),
            limit_policy: match self.per_user_policy {
                PerUserPolicy::EvictOldest => LimitPolicy::EvictOldest,
                PerUserPolicy::Reject => LimitPolicy::Reject,
            },
            max_connections: self.max_connections,
            queue: QueueLimits {
                max_frames: self.queue_max_frames.max(1),
                max_bytes: self.queue_max_bytes.max(1),
            },
            heartbeat: HeartbeatPolicy {
                interval: self.heartbeat_interval,
                timeout: self.heartbeat_timeout,
            },
            max_event_bytes: self.max_event_bytes,
            sweep_interval: self.sweep_interval.max(Duration::from_millis(10)),
            run_stall_timeout: self.run_stall_timeout,
            max_watched_runs: self.max_watched_runs,
            max_receipt_users: self.max_receipt_users.max(1),
            receipt_ttl: self.receipt_ttl,
            ..ManagerConfig::default()
        }
    }

    /// The broker's run-state bounds these settings give (each at least 1).
    pub fn run_limits(&self) -> RunLimits {
        RunLimits {
            max_runs: self.max_runs.max(1),
            max_bytes: self.run_state_max_bytes.max(1),
            max_runs_per_owner: self.max_runs_per_key.max(1),
            max_bytes_per_owner: self.run_state_max_bytes_per_key.max(1),
            ttl: self.run_ttl.max(Duration::from_millis(1)),
        }
    }

    /// The history bounds these settings give.
    pub fn history_config(&self) -> HistoryConfig {
        HistoryConfig {
            max_events_per_user: self.history_max_events,
            max_age: self.history_max_age,
            max_total_bytes: self.history_max_bytes,
            dedupe_window: self.dedupe_window.unwrap_or(self.history_max_age),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_is_on_only_in_development_mode() {
        let mut c = ServerConfig::default();
        assert!(!DemoMode::Auto.is_enabled(&c));
        assert!(!DemoMode::Off.is_enabled(&c));
        assert!(DemoMode::On.is_enabled(&c));
        c.dev_mode = true;
        assert!(DemoMode::Auto.is_enabled(&c));
    }

    #[test]
    fn defaults_match_the_manager_defaults_where_they_overlap() {
        let c = ServerConfig::default();
        let m = c.manager_config();
        let d = ManagerConfig::default();
        assert_eq!(m.max_connections_per_user, d.max_connections_per_user);
        assert_eq!(m.max_connections, d.max_connections);
        assert_eq!(m.queue, d.queue);
        assert_eq!(m.heartbeat, d.heartbeat);
        assert_eq!(m.max_event_bytes, d.max_event_bytes);
        assert_eq!(m.sweep_interval, d.sweep_interval);
        assert_eq!(c.history_config(), HistoryConfig::default());
    }

    #[test]
    fn the_builder_sets_what_it_names_and_keeps_the_rest() {
        let c = ServerConfig::builder()
            .jwt_secret("s")
            .api_keys(["k1", "k2"])
            .max_connections(5)
            .jwt_jwks_url("https://idp.example/jwks.json")
            .build();
        assert_eq!(c.jwt_secret.as_deref(), Some("s"));
        assert_eq!(
            c.jwt_jwks_url.as_deref(),
            Some("https://idp.example/jwks.json")
        );
        assert_eq!(c.api_keys, ["k1", "k2"]);
        assert_eq!(c.max_connections, 5);
        assert_eq!(
            c.heartbeat_interval,
            ServerConfig::default().heartbeat_interval
        );
    }

    #[test]
    fn without_a_secret_or_a_public_key_there_is_no_verifier() {
        let e = ServerConfig::default().auth().expect_err("no credentials");
        assert!(matches!(e, AuthConfigError::NoCredentials), "{e}");
        assert!(e.to_string().contains("AGENTWIRE_JWT_SECRET"), "{e}");
        assert!(e.to_string().contains("--jwt-jwks-url"), "{e}");
        assert!(
            ServerConfig::builder()
                .jwt_secret("a secret of at least thirty-two bytes")
                .build()
                .auth()
                .is_ok()
        );
    }

    /// Issue 14: outside development mode a short secret or API key stops the server with
    /// what to set; in development mode both are accepted.
    #[test]
    fn short_secrets_and_keys_are_refused_outside_development_mode() {
        let long_secret = "a secret of at least thirty-two bytes";
        let short = ServerConfig::builder().jwt_secret("s").build();
        assert!(matches!(
            short.auth(),
            Err(AuthConfigError::ShortSecret { bytes: 1, .. })
        ));
        let short_key = ServerConfig::builder()
            .jwt_secret(long_secret)
            .api_keys(["0123456789abcdef"])
            .publish_api_keys(["short"])
            .build();
        let e = short_key.auth().expect_err("short publish key");
        assert!(e.to_string().contains("--publish-api-keys"), "{e}");
        let dev = ServerConfig::builder()
            .jwt_secret("s")
            .api_keys(["k"])
            .dev_mode(true)
            .build();
        assert!(dev.auth().is_ok(), "development mode accepts them");
        let empty = ServerConfig::builder()
            .jwt_secret("")
            .dev_mode(true)
            .build();
        assert!(empty.auth().is_err(), "but never an empty secret");
    }
}
