//! The command line of `agentwire-server`: every setting as a flag with an environment
//! variable and a default (the library's, so `--help` and `ServerConfig::default()` cannot
//! disagree), an optional TOML file beneath them, and the `token` subcommand.
//!
//! Precedence, highest first: command line, environment, `--config` file, default.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use agentwire_server::{
    BrokerKind, DemoMode, PerUserPolicy, RunLifecycle, ServerConfig, writable_by_others,
};
use clap::parser::ValueSource;
use clap::{ArgMatches, Args, CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};

/// The defaults every flag shows and starts from.
fn d() -> ServerConfig {
    ServerConfig::default()
}

/// How log lines are written (to stderr).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// The server's settings. Each field is a flag (`--listen`) with an environment variable
/// (`AGENTWIRE_LISTEN`); `--config FILE` may give any of them in TOML
/// (`listen = "0.0.0.0:8080"`, `heartbeat-interval = "15s"`).
#[derive(Debug, Clone, PartialEq, Eq, Args)]
pub(crate) struct ServeArgs {
    /// A TOML file with any of these settings (keys as the long flag names); flags and
    /// environment variables override it.
    #[arg(long, env = "AGENTWIRE_CONFIG", value_name = "FILE")]
    pub(crate) config: Option<PathBuf>,

    /// Address to listen on. Port 0 picks a free port (printed at start).
    #[arg(long, env = "AGENTWIRE_LISTEN", default_value_t = d().listen)]
    pub(crate) listen: SocketAddr,

    /// Length of the TCP accept queue.
    #[arg(long, env = "AGENTWIRE_LISTEN_BACKLOG", default_value_t = d().listen_backlog)]
    pub(crate) listen_backlog: u32,

    /// HS256 secret that signs client tokens, at least 32 bytes (outside development
    /// mode). Without it (and without --jwt-public-key or --jwt-jwks-url) the server starts
    /// only on a loopback address, in development mode.
    #[arg(long, env = "AGENTWIRE_JWT_SECRET", hide_env_values = true)]
    pub(crate) jwt_secret: Option<String>,

    /// PEM file with a public key — RSA (RS256), EC P-256 (ES256) or Ed25519 (EdDSA):
    /// tokens signed by its private key are accepted too. Refused when others can write it.
    #[arg(long, env = "AGENTWIRE_JWT_PUBLIC_KEY", value_name = "PEM_FILE")]
    pub(crate) jwt_public_key: Option<PathBuf>,

    /// URL of a JWKS key set (https, or http on a loopback host): RS256, ES256 and EdDSA
    /// tokens signed by its keys are accepted too. Fetched at start, every
    /// --jwt-jwks-refresh-interval, and for a token with an unknown `kid`.
    #[arg(long, env = "AGENTWIRE_JWT_JWKS_URL", value_name = "URL")]
    pub(crate) jwt_jwks_url: Option<String>,

    /// How often the JWKS key set is fetched again: a key removed from it is refused at
    /// most this long after its removal.
    #[arg(long, env = "AGENTWIRE_JWT_JWKS_REFRESH_INTERVAL", value_parser = parse_duration, default_value_t = d().jwt_jwks_refresh_interval.into())]
    pub(crate) jwt_jwks_refresh_interval: humantime::Duration,

    /// The shortest time between two JWKS fetches: a token with an unknown `kid` triggers
    /// a fetch at most this often, and a failed fetch is retried after it.
    #[arg(long, env = "AGENTWIRE_JWT_JWKS_MIN_REFRESH_INTERVAL", value_parser = parse_duration, default_value_t = d().jwt_jwks_min_refresh_interval.into())]
    pub(crate) jwt_jwks_min_refresh_interval: humantime::Duration,

    /// Longest one JWKS fetch may take (connection and body).
    #[arg(long, env = "AGENTWIRE_JWT_JWKS_TIMEOUT", value_parser = parse_duration, default_value_t = d().jwt_jwks_timeout.into())]
    pub(crate) jwt_jwks_timeout: humantime::Duration,

    /// Largest JWKS document read, in bytes.
    #[arg(long, env = "AGENTWIRE_JWT_JWKS_MAX_BYTES", default_value_t = d().jwt_jwks_max_bytes)]
    pub(crate) jwt_jwks_max_bytes: usize,

    /// Most keys a JWKS key set may hold; a larger one is refused (the last good one
    /// stays).
    #[arg(long, env = "AGENTWIRE_JWT_JWKS_MAX_KEYS", default_value_t = d().jwt_jwks_max_keys)]
    pub(crate) jwt_jwks_max_keys: usize,

    /// Longest client token accepted, in bytes: a longer one is refused (431 in a header,
    /// 400 in the query string, an `error` frame in `refresh_token`).
    #[arg(long, env = "AGENTWIRE_JWT_MAX_BYTES", default_value_t = d().jwt_max_bytes)]
    pub(crate) jwt_max_bytes: usize,

    /// Required `iss` claim, when set.
    #[arg(long, env = "AGENTWIRE_JWT_ISSUER")]
    pub(crate) jwt_issuer: Option<String>,

    /// Required `aud` claim, when set.
    #[arg(long, env = "AGENTWIRE_JWT_AUDIENCE")]
    pub(crate) jwt_audience: Option<String>,

    /// Clock skew tolerated on `exp`, `nbf` and `iat`, at the handshake and while
    /// connected.
    #[arg(long, env = "AGENTWIRE_JWT_LEEWAY", value_parser = parse_duration, default_value_t = d().jwt_leeway.into())]
    pub(crate) jwt_leeway: humantime::Duration,

    /// API keys with full access: publish, history reads and the admin endpoints
    /// (comma-separated), each at least 16 characters outside development mode. In
    /// development mode the development key is accepted too.
    #[arg(
        long,
        env = "AGENTWIRE_API_KEYS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub(crate) api_keys: Vec<String>,

    /// API keys that may only publish (POST /v1/events), comma-separated, each at least
    /// 16 characters outside development mode: they get 403 on history reads and the
    /// admin endpoints.
    #[arg(
        long,
        env = "AGENTWIRE_PUBLISH_API_KEYS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub(crate) publish_api_keys: Vec<String>,

    /// Where the development secret and API key are kept [default:
    /// $XDG_STATE_HOME/agentwire/dev-credentials.json, else
    /// ~/.local/state/agentwire/dev-credentials.json].
    #[arg(long, env = "AGENTWIRE_DEV_CREDENTIALS_FILE", value_name = "FILE")]
    pub(crate) dev_credentials_file: Option<PathBuf>,

    /// Which broker owns the event streams: memory (one node) or redis (many nodes share
    /// every user's stream; needs --redis-url or --redis-cluster-nodes).
    #[arg(long, env = "AGENTWIRE_BROKER", value_enum, default_value_t = d().broker)]
    pub(crate) broker: BrokerKind,

    /// The Redis of --broker redis, e.g. redis://127.0.0.1:6379 (a password as
    /// redis://:PASSWORD@host:6379; never logged). The server does not start when it cannot
    /// reach it.
    #[arg(
        long,
        env = "AGENTWIRE_REDIS_URL",
        value_name = "URL",
        hide_env_values = true
    )]
    pub(crate) redis_url: Option<String>,

    /// With --broker redis, a Redis Cluster given by some of its nodes (comma-separated
    /// URLs, e.g. redis://10.0.0.1:7000,redis://10.0.0.2:7000); the rest are discovered.
    /// Instead of --redis-url.
    #[arg(
        long,
        env = "AGENTWIRE_REDIS_CLUSTER_NODES",
        value_name = "URLS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub(crate) redis_cluster_nodes: Vec<String>,

    /// Prefix of every Redis key and channel, so several deployments can share one Redis
    /// (at most 64 bytes, no braces or whitespace). Every node of one deployment needs
    /// the same.
    #[arg(long, env = "AGENTWIRE_REDIS_KEY_PREFIX", default_value_t = d().redis_key_prefix)]
    pub(crate) redis_key_prefix: String,

    /// With rediss:// addresses (TLS), the CA certificates (PEM) to trust instead of the
    /// system's, e.g. a private CA's; every Redis address must then be rediss://. The
    /// server's certificate and name are always verified.
    #[arg(long, env = "AGENTWIRE_REDIS_TLS_CA_FILE", value_name = "FILE")]
    pub(crate) redis_tls_ca_file: Option<PathBuf>,

    /// With rediss:// addresses, the client certificate chain (PEM) for a Redis that
    /// requires one (tls-auth-clients yes); needs --redis-tls-key-file.
    #[arg(long, env = "AGENTWIRE_REDIS_TLS_CERT_FILE", value_name = "FILE")]
    pub(crate) redis_tls_cert_file: Option<PathBuf>,

    /// The private key (PEM) of --redis-tls-cert-file.
    #[arg(long, env = "AGENTWIRE_REDIS_TLS_KEY_FILE", value_name = "FILE")]
    pub(crate) redis_tls_key_file: Option<PathBuf>,

    /// Longest wait for one Redis command (and for the connection at start); past it a
    /// publish is answered 503 and /readyz 503.
    #[arg(long, env = "AGENTWIRE_REDIS_COMMAND_TIMEOUT", value_parser = parse_duration, default_value_t = d().redis_command_timeout.into())]
    pub(crate) redis_command_timeout: humantime::Duration,

    /// With --broker redis, how long a connection counts against its user's
    /// --max-connections-per-user without its node renewing it (every third of it): the
    /// longest a killed node's connections keep counting.
    #[arg(long, env = "AGENTWIRE_CONNECTION_LEASE", value_parser = parse_duration, default_value_t = d().connection_lease.into())]
    pub(crate) connection_lease: humantime::Duration,

    /// With --broker redis, how long an admin request (a user's connections, a disconnect)
    /// waits for the other nodes' answers; nodes that did not answer are named.
    #[arg(long, env = "AGENTWIRE_REDIS_CONTROL_WAIT", value_parser = parse_duration, default_value_t = d().redis_control_wait.into())]
    pub(crate) redis_control_wait: humantime::Duration,

    /// Most WebSocket connections on this node; more are refused with 1013. Clamped to 7/8
    /// of --max-tcp-connections.
    #[arg(long, env = "AGENTWIRE_MAX_CONNECTIONS", default_value_t = d().max_connections)]
    pub(crate) max_connections: usize,

    /// Most open TCP connections (WebSockets, HTTP requests, idle keep-alive connections);
    /// at the cap the oldest idle one is closed to make room, else the new one gets 503.
    /// Clamped to the open-file limit minus 64.
    #[arg(long, env = "AGENTWIRE_MAX_TCP_CONNECTIONS", default_value_t = d().max_tcp_connections)]
    pub(crate) max_tcp_connections: usize,

    /// Kernel send buffer (SO_SNDBUF) of each accepted connection, in bytes, so that a slow
    /// reader's backlog waits in agentwire's queue (merged, or closed with 1013) rather than
    /// in the kernel; 0 keeps the kernel's autotuning. 0 or 4096 to 67108864.
    #[arg(long, env = "AGENTWIRE_SOCKET_SEND_BUFFER", default_value_t = d().socket_send_buffer)]
    pub(crate) socket_send_buffer: usize,

    /// How long a new connection has to send its first request head whole (and any head
    /// once its first bytes arrived); past it the connection is closed.
    #[arg(long, env = "AGENTWIRE_HEADER_READ_TIMEOUT", value_parser = parse_duration, default_value_t = d().header_read_timeout.into())]
    pub(crate) header_read_timeout: humantime::Duration,

    /// How long a keep-alive connection may wait for its next request before it is closed.
    #[arg(long, env = "AGENTWIRE_IDLE_TIMEOUT", value_parser = parse_duration, default_value_t = d().idle_timeout.into())]
    pub(crate) idle_timeout: humantime::Duration,

    /// How long a request body may take to arrive after its head; past it: 408.
    #[arg(long, env = "AGENTWIRE_BODY_READ_TIMEOUT", value_parser = parse_duration, default_value_t = d().body_read_timeout.into())]
    pub(crate) body_read_timeout: humantime::Duration,

    /// Largest request head (request line and headers), in bytes; larger: 431.
    #[arg(long, env = "AGENTWIRE_MAX_HEADER_BYTES", default_value_t = d().max_header_bytes)]
    pub(crate) max_header_bytes: usize,

    /// Longest request target (path and query), in bytes; longer: 414.
    #[arg(long, env = "AGENTWIRE_MAX_URI_BYTES", default_value_t = d().max_uri_bytes)]
    pub(crate) max_uri_bytes: usize,

    /// Most connections one user may hold on this node.
    #[arg(long, env = "AGENTWIRE_MAX_CONNECTIONS_PER_USER", default_value_t = d().max_connections_per_user)]
    pub(crate) max_connections_per_user: usize,

    /// What a connection beyond --max-connections-per-user does.
    #[arg(long, env = "AGENTWIRE_PER_USER_POLICY", value_enum, default_value_t = d().per_user_policy)]
    pub(crate) per_user_policy: PerUserPolicy,

    /// Most frames waiting for one connection's writer; beyond it the connection is a
    /// slow consumer and is closed with 1013.
    #[arg(long, env = "AGENTWIRE_QUEUE_MAX_FRAMES", default_value_t = d().queue_max_frames)]
    pub(crate) queue_max_frames: usize,

    /// Most bytes waiting for one connection's writer (same policy).
    #[arg(long, env = "AGENTWIRE_QUEUE_MAX_BYTES", default_value_t = d().queue_max_bytes)]
    pub(crate) queue_max_bytes: usize,

    /// Time between WebSocket pings.
    #[arg(long, env = "AGENTWIRE_HEARTBEAT_INTERVAL", value_parser = parse_duration, default_value_t = d().heartbeat_interval.into())]
    pub(crate) heartbeat_interval: humantime::Duration,

    /// How long past a ping a silent peer is given before it is closed with 1001.
    #[arg(long, env = "AGENTWIRE_HEARTBEAT_TIMEOUT", value_parser = parse_duration, default_value_t = d().heartbeat_timeout.into())]
    pub(crate) heartbeat_timeout: humantime::Duration,

    /// How often the manager sweeps dead connections and trims history.
    #[arg(long, env = "AGENTWIRE_SWEEP_INTERVAL", value_parser = parse_duration, default_value_t = d().sweep_interval.into())]
    pub(crate) sweep_interval: humantime::Duration,

    /// Longest a batch write (or a ping, or a close frame) may take; a peer that stopped
    /// reading is dropped after it.
    #[arg(long, env = "AGENTWIRE_WRITE_TIMEOUT", value_parser = parse_duration, default_value_t = d().write_timeout.into())]
    pub(crate) write_timeout: humantime::Duration,

    /// How long after sending a close frame the server waits for the peer's.
    #[arg(long, env = "AGENTWIRE_CLOSE_TIMEOUT", value_parser = parse_duration, default_value_t = d().close_timeout.into())]
    pub(crate) close_timeout: humantime::Duration,

    /// Most frames one write batch takes from a connection's queue before flushing.
    #[arg(long, env = "AGENTWIRE_WRITE_BATCH_FRAMES", default_value_t = d().write_batch_frames)]
    pub(crate) write_batch_frames: usize,

    /// Per-connection read buffer, in bytes (at least 256). Client frames are tiny; a
    /// larger message grows it, up to --max-message-size.
    #[arg(long, env = "AGENTWIRE_READ_BUFFER_SIZE", default_value_t = d().read_buffer_size)]
    pub(crate) read_buffer_size: usize,

    /// Largest client message, in bytes; larger ones close the connection with 1009.
    #[arg(long, env = "AGENTWIRE_MAX_MESSAGE_SIZE", default_value_t = d().max_message_size)]
    pub(crate) max_message_size: usize,

    /// Largest client WebSocket frame, in bytes (same policy).
    #[arg(long, env = "AGENTWIRE_MAX_FRAME_SIZE", default_value_t = d().max_frame_size)]
    pub(crate) max_frame_size: usize,

    /// Largest event, in bytes of JSON.
    #[arg(long, env = "AGENTWIRE_MAX_EVENT_BYTES", default_value_t = d().max_event_bytes)]
    pub(crate) max_event_bytes: usize,

    /// Most events in one publish body (a JSON array); more are refused with 413.
    #[arg(long, env = "AGENTWIRE_MAX_BATCH", default_value_t = d().max_batch)]
    pub(crate) max_batch: usize,

    /// Largest publish request body, in bytes; larger ones are refused with 413.
    #[arg(long, env = "AGENTWIRE_MAX_REQUEST_BYTES", default_value_t = d().max_request_bytes)]
    pub(crate) max_request_bytes: usize,

    /// Events per second each API key may publish (GCRA); beyond it the
    /// publish API answers 429 with Retry-After. 0 turns the limit off.
    #[arg(long, env = "AGENTWIRE_PUBLISH_RATE", default_value_t = d().publish_rate)]
    pub(crate) publish_rate: u32,

    /// Events an API key may publish at once before --publish-rate applies (the bucket's
    /// size).
    #[arg(long, env = "AGENTWIRE_PUBLISH_BURST", default_value_t = d().publish_burst)]
    pub(crate) publish_burst: u32,

    /// Whether the publish API has the broker check each run's lifecycle.
    #[arg(long, env = "AGENTWIRE_RUN_LIFECYCLE", value_enum, default_value_t = d().run_lifecycle)]
    pub(crate) run_lifecycle: RunLifecycle,

    /// Most runs whose lifecycle state the broker holds, in progress and finished;
    /// finished runs make room first, and a new run that does not fit is refused (429).
    #[arg(long, env = "AGENTWIRE_MAX_RUNS", default_value_t = d().max_runs)]
    pub(crate) max_runs: usize,

    /// How long a run's state is remembered after its last event (finished or not).
    #[arg(long, env = "AGENTWIRE_RUN_TTL", value_parser = parse_duration, default_value_t = d().run_ttl.into())]
    pub(crate) run_ttl: humantime::Duration,

    /// Most bytes of run state the broker holds; a new run or tool call beyond it is
    /// refused (429).
    #[arg(long, env = "AGENTWIRE_RUN_STATE_MAX_BYTES", default_value_t = d().run_state_max_bytes)]
    pub(crate) run_state_max_bytes: usize,

    /// How long a run in progress may go without an event or a heartbeat before the server
    /// ends it with `agent_error` code `stalled` (0: never); a run's `agent_started` may
    /// set its own (`stall_timeout_ms`).
    #[arg(long, env = "AGENTWIRE_RUN_STALL_TIMEOUT", value_parser = parse_duration, default_value_t = d().run_stall_timeout.into())]
    pub(crate) run_stall_timeout: humantime::Duration,

    /// Most runs the stall watchdog watches at once on this node.
    #[arg(long, env = "AGENTWIRE_MAX_WATCHED_RUNS", default_value_t = d().max_watched_runs)]
    pub(crate) max_watched_runs: usize,

    /// Most users whose delivery receipt this node keeps.
    #[arg(long, env = "AGENTWIRE_MAX_RECEIPT_USERS", default_value_t = d().max_receipt_users)]
    pub(crate) max_receipt_users: usize,

    /// How long a receipt nothing moved is kept once its user has no connection here.
    #[arg(long, env = "AGENTWIRE_RECEIPT_TTL", value_parser = parse_duration, default_value_t = d().receipt_ttl.into())]
    pub(crate) receipt_ttl: humantime::Duration,

    /// Longest wait_acked a run receipt may ask for.
    #[arg(long, env = "AGENTWIRE_RECEIPT_MAX_WAIT", value_parser = parse_duration, default_value_t = d().receipt_max_wait.into())]
    pub(crate) receipt_max_wait: humantime::Duration,

    /// Most run receipt long polls waiting at once; more are refused with 503.
    #[arg(long, env = "AGENTWIRE_RECEIPT_MAX_WAITERS", default_value_t = d().receipt_max_waiters)]
    pub(crate) receipt_max_waiters: usize,

    /// Where to POST a signed notice for a run whose terminal event no client acknowledged
    /// within --receipt-webhook-after: https://…, or http:// on a loopback host. Off
    /// without it.
    #[arg(long, env = "AGENTWIRE_RECEIPT_WEBHOOK_URL")]
    pub(crate) receipt_webhook_url: Option<String>,

    /// HMAC-SHA256 key that signs each webhook notice, at least 32 bytes (outside
    /// development mode).
    #[arg(long, env = "AGENTWIRE_RECEIPT_WEBHOOK_SECRET", hide_env_values = true)]
    pub(crate) receipt_webhook_secret: Option<String>,

    /// A file holding the webhook's key (the same rules as --receipt-webhook-secret).
    #[arg(long, env = "AGENTWIRE_RECEIPT_WEBHOOK_SECRET_FILE")]
    pub(crate) receipt_webhook_secret_file: Option<PathBuf>,

    /// How long after a run ended the webhook looks whether its terminal event was
    /// acknowledged, and sends its notice if not.
    #[arg(long, env = "AGENTWIRE_RECEIPT_WEBHOOK_AFTER", value_parser = parse_duration, default_value_t = d().receipt_webhook_after.into())]
    pub(crate) receipt_webhook_after: humantime::Duration,

    /// Longest one webhook request may take; a request that takes longer is retried.
    #[arg(long, env = "AGENTWIRE_RECEIPT_WEBHOOK_TIMEOUT", value_parser = parse_duration, default_value_t = d().receipt_webhook_timeout.into())]
    pub(crate) receipt_webhook_timeout: humantime::Duration,

    /// Times a notice is sent again after a timeout, a connection error, 5xx or 429.
    #[arg(long, env = "AGENTWIRE_RECEIPT_WEBHOOK_RETRIES", default_value_t = d().receipt_webhook_retries)]
    pub(crate) receipt_webhook_retries: u32,

    /// Most webhook notices pending at once; a run that ends beyond it gets none.
    #[arg(long, env = "AGENTWIRE_RECEIPT_WEBHOOK_MAX_PENDING", default_value_t = d().receipt_webhook_max_pending)]
    pub(crate) receipt_webhook_max_pending: usize,

    /// Most runs in progress one API key may hold (its share of --max-runs).
    #[arg(long, env = "AGENTWIRE_MAX_RUNS_PER_KEY", default_value_t = d().max_runs_per_key)]
    pub(crate) max_runs_per_key: usize,

    /// Most bytes of run state in progress one API key may hold.
    #[arg(long, env = "AGENTWIRE_RUN_STATE_MAX_BYTES_PER_KEY", default_value_t = d().run_state_max_bytes_per_key)]
    pub(crate) run_state_max_bytes_per_key: usize,

    /// Most events one history read (GET /v1/users/{user_id}/events) returns.
    #[arg(long, env = "AGENTWIRE_HISTORY_READ_MAX", default_value_t = d().history_read_max)]
    pub(crate) history_read_max: usize,

    /// Bad client frames (each answered with an `error` frame) tolerated per connection;
    /// one more closes it with 1008.
    #[arg(long, env = "AGENTWIRE_MAX_BAD_FRAMES", default_value_t = d().max_bad_frames)]
    pub(crate) max_bad_frames: u32,

    /// Frames per second one connection may send (token bucket, pings included); beyond
    /// it frames are dropped (`rate_limited` error frame), and a client that keeps on for
    /// another burst is closed with 1008. 0 turns the limit off.
    #[arg(long, env = "AGENTWIRE_CLIENT_FRAME_RATE", default_value_t = d().client_frame_rate)]
    pub(crate) client_frame_rate: u32,

    /// Frames a connection may send at once before --client-frame-rate applies.
    #[arg(long, env = "AGENTWIRE_CLIENT_FRAME_BURST", default_value_t = d().client_frame_burst)]
    pub(crate) client_frame_burst: u32,

    /// How long a user closed with 1008 for exceeding --client-frame-rate is refused at
    /// the handshake on this node (429 `rate_limited` with Retry-After). 0 turns it off.
    #[arg(long, env = "AGENTWIRE_CLIENT_FRAME_COOLDOWN", value_parser = parse_duration, default_value_t = d().client_frame_cooldown.into())]
    pub(crate) client_frame_cooldown: humantime::Duration,

    /// Without a resume in the query string, how long to wait for a `resume` first frame
    /// before streaming from the start of history. 0 turns the first-frame resume off.
    #[arg(long, env = "AGENTWIRE_RESUME_WAIT", value_parser = parse_duration, default_value_t = d().resume_wait.into())]
    pub(crate) resume_wait: humantime::Duration,

    /// Most events of history kept per user.
    #[arg(long, env = "AGENTWIRE_HISTORY_MAX_EVENTS", default_value_t = d().history_max_events)]
    pub(crate) history_max_events: usize,

    /// Oldest event of history kept.
    #[arg(long, env = "AGENTWIRE_HISTORY_MAX_AGE", value_parser = parse_duration, default_value_t = d().history_max_age.into())]
    pub(crate) history_max_age: humantime::Duration,

    /// Most bytes of history kept for all users together.
    #[arg(long, env = "AGENTWIRE_HISTORY_MAX_BYTES", default_value_t = d().history_max_bytes)]
    pub(crate) history_max_bytes: usize,

    /// How long after its acceptance an `event_id` is recognised as a retry (and another
    /// event under it refused with 409). Default: `--history-max-age`. Never shorter than
    /// the time its event stays in history.
    #[arg(long, env = "AGENTWIRE_DEDUPE_WINDOW", value_parser = parse_duration)]
    pub(crate) dedupe_window: Option<humantime::Duration>,

    /// Longest a graceful shutdown may take before the process exits anyway.
    #[arg(long, env = "AGENTWIRE_SHUTDOWN_TIMEOUT", value_parser = parse_duration, default_value_t = d().shutdown_timeout.into())]
    pub(crate) shutdown_timeout: humantime::Duration,

    /// On shutdown, how long /readyz answers 503 (everything else still served) before the
    /// listener closes, so load balancers stop sending first.
    #[arg(long, env = "AGENTWIRE_DRAIN_DELAY", value_parser = parse_duration, default_value_t = d().drain_delay.into())]
    pub(crate) drain_delay: humantime::Duration,

    /// Origins allowed to open /ws (comma-separated, e.g. `https://app.example.com`); empty
    /// allows any. Requests without an Origin header (non-browsers) are always allowed.
    #[arg(long, env = "AGENTWIRE_ALLOWED_ORIGINS", value_delimiter = ',')]
    pub(crate) allowed_origins: Vec<String>,

    /// Serve /metrics on this address of its own (a private interface, for Prometheus), to
    /// anyone who reaches it, and not on --listen. Without it /metrics on --listen needs a
    /// full API key.
    #[arg(long, env = "AGENTWIRE_METRICS_LISTEN")]
    pub(crate) metrics_listen: Option<SocketAddr>,

    /// Log line format.
    #[arg(long, env = "AGENTWIRE_LOG_FORMAT", value_enum, default_value = "text")]
    pub(crate) log_format: LogFormat,

    /// The live demo page at / (with /demo/* endpoints that mint development tokens and
    /// start simulated runs): auto = on only in development mode, on, or off. /client.js is
    /// served in every mode.
    #[arg(long, env = "AGENTWIRE_DEMO", value_enum, default_value_t = d().demo)]
    pub(crate) demo: DemoMode,

    /// Development mode, explicitly: the demo is on (with `--demo auto`), `POST /demo/token`
    /// mints tokens for loopback peers, and without --jwt-secret the development
    /// credentials of --dev-credentials-file are used. Also on by itself when no secret
    /// is given and --listen is a loopback address. Never for a server others can reach.
    #[arg(long, env = "AGENTWIRE_DEV")]
    pub(crate) dev: bool,
}

impl ServeArgs {
    /// The library's configuration of these settings (development credentials and mode
    /// are added by `crate::dev`).
    pub(crate) fn server_config(&self) -> ServerConfig {
        let this = self.clone();
        let mut c = ServerConfig::default();
        c.listen = this.listen;
        c.listen_backlog = this.listen_backlog;
        c.jwt_secret = this.jwt_secret;
        c.jwt_public_key = this.jwt_public_key;
        c.jwt_jwks_url = this.jwt_jwks_url;
        c.jwt_jwks_refresh_interval = this.jwt_jwks_refresh_interval.into();
        c.jwt_jwks_min_refresh_interval = this.jwt_jwks_min_refresh_interval.into();
        c.jwt_jwks_timeout = this.jwt_jwks_timeout.into();
        c.jwt_jwks_max_bytes = this.jwt_jwks_max_bytes;
        c.jwt_jwks_max_keys = this.jwt_jwks_max_keys;
        c.jwt_max_bytes = this.jwt_max_bytes;
        c.jwt_issuer = this.jwt_issuer;
        c.jwt_audience = this.jwt_audience;
        c.jwt_leeway = this.jwt_leeway.into();
        c.api_keys = this.api_keys;
        c.publish_api_keys = this.publish_api_keys;
        c.broker = this.broker;
        c.redis_url = this.redis_url;
        c.redis_cluster_nodes = this.redis_cluster_nodes;
        c.redis_key_prefix = this.redis_key_prefix;
        c.redis_tls_ca_file = this.redis_tls_ca_file;
        c.redis_tls_cert_file = this.redis_tls_cert_file;
        c.redis_tls_key_file = this.redis_tls_key_file;
        c.redis_command_timeout = this.redis_command_timeout.into();
        c.connection_lease = this.connection_lease.into();
        c.redis_control_wait = this.redis_control_wait.into();
        c.max_connections = this.max_connections;
        c.max_tcp_connections = this.max_tcp_connections;
        c.socket_send_buffer = this.socket_send_buffer;
        c.header_read_timeout = this.header_read_timeout.into();
        c.idle_timeout = this.idle_timeout.into();
        c.body_read_timeout = this.body_read_timeout.into();
        c.max_header_bytes = this.max_header_bytes;
        c.max_uri_bytes = this.max_uri_bytes;
        c.max_connections_per_user = this.max_connections_per_user;
        c.per_user_policy = this.per_user_policy;
        c.queue_max_frames = this.queue_max_frames;
        c.queue_max_bytes = this.queue_max_bytes;
        c.heartbeat_interval = this.heartbeat_interval.into();
        c.heartbeat_timeout = this.heartbeat_timeout.into();
        c.sweep_interval = this.sweep_interval.into();
        c.write_timeout = this.write_timeout.into();
        c.close_timeout = this.close_timeout.into();
        c.write_batch_frames = this.write_batch_frames;
        c.read_buffer_size = this.read_buffer_size;
        c.max_message_size = this.max_message_size;
        c.max_frame_size = this.max_frame_size;
        c.max_event_bytes = this.max_event_bytes;
        c.max_batch = this.max_batch;
        c.max_request_bytes = this.max_request_bytes;
        c.publish_rate = this.publish_rate;
        c.publish_burst = this.publish_burst;
        c.run_lifecycle = this.run_lifecycle;
        c.max_runs = this.max_runs;
        c.run_ttl = this.run_ttl.into();
        c.run_stall_timeout = this.run_stall_timeout.into();
        c.max_watched_runs = this.max_watched_runs;
        c.max_receipt_users = this.max_receipt_users;
        c.receipt_ttl = this.receipt_ttl.into();
        c.receipt_max_wait = this.receipt_max_wait.into();
        c.receipt_max_waiters = this.receipt_max_waiters;
        c.receipt_webhook_url = this.receipt_webhook_url;
        c.receipt_webhook_secret = this.receipt_webhook_secret;
        c.receipt_webhook_secret_file = this.receipt_webhook_secret_file;
        c.receipt_webhook_after = this.receipt_webhook_after.into();
        c.receipt_webhook_timeout = this.receipt_webhook_timeout.into();
        c.receipt_webhook_retries = this.receipt_webhook_retries;
        c.receipt_webhook_max_pending = this.receipt_webhook_max_pending;
        c.run_state_max_bytes = this.run_state_max_bytes;
        c.max_runs_per_key = this.max_runs_per_key;
        c.run_state_max_bytes_per_key = this.run_state_max_bytes_per_key;
        c.history_read_max = this.history_read_max;
        c.max_bad_frames = this.max_bad_frames;
        c.client_frame_rate = this.client_frame_rate;
        c.client_frame_burst = this.client_frame_burst;
        c.client_frame_cooldown = this.client_frame_cooldown.into();
        c.resume_wait = this.resume_wait.into();
        c.history_max_events = this.history_max_events;
        c.history_max_age = this.history_max_age.into();
        c.history_max_bytes = this.history_max_bytes;
        c.dedupe_window = this.dedupe_window.map(Into::into);
        c.shutdown_timeout = this.shutdown_timeout.into();
        c.drain_delay = this.drain_delay.into();
        c.allowed_origins = this.allowed_origins;
        c.demo = this.demo;
        c.metrics_listen = this.metrics_listen;
        c
    }
}

/// How a subcommand signs the client tokens it mints: the server's HS256 secret and
/// claims (the same environment variables as the server's), else the development secret.
#[derive(Debug, Clone, PartialEq, Eq, Args)]
pub(crate) struct SignArgs {
    /// HS256 secret to sign with; without it the development secret of the running
    /// server (its --dev-credentials-file) is used.
    #[arg(long, env = "AGENTWIRE_JWT_SECRET", hide_env_values = true)]
    pub(crate) jwt_secret: Option<String>,

    /// `iss` claim to put in the token.
    #[arg(long, env = "AGENTWIRE_JWT_ISSUER")]
    pub(crate) jwt_issuer: Option<String>,

    /// `aud` claim to put in the token.
    #[arg(long, env = "AGENTWIRE_JWT_AUDIENCE")]
    pub(crate) jwt_audience: Option<String>,

    /// Where the running development server keeps its credentials (as for the server:
    /// default $XDG_STATE_HOME/agentwire/dev-credentials.json, else
    /// ~/.local/state/agentwire/dev-credentials.json). Never created by a subcommand.
    #[arg(long, env = "AGENTWIRE_DEV_CREDENTIALS_FILE", value_name = "FILE")]
    pub(crate) dev_credentials_file: Option<PathBuf>,
}

/// Options of `agentwire-server token`.
#[derive(Debug, Clone, PartialEq, Eq, Args)]
pub(crate) struct TokenArgs {
    /// The user the token is for (its `sub`).
    #[arg(long)]
    pub(crate) user: String,

    /// Lifetime of the token, in seconds.
    #[arg(long, default_value_t = 3600)]
    pub(crate) ttl_secs: u64,

    /// The signing key and claims.
    #[command(flatten)]
    pub(crate) sign: SignArgs,
}

/// The address of a running server, for the subcommands that talk to one.
#[derive(Debug, Clone, PartialEq, Eq, Args)]
pub(crate) struct ServerArg {
    /// The server: `http://host:port` (plain HTTP and WebSocket; put a TLS proxy's
    /// address behind an SSH tunnel or use another client for https).
    #[arg(long, env = "AGENTWIRE_SERVER", default_value = DEFAULT_SERVER)]
    pub(crate) server: String,
}

/// Where `tail` and `publish` look for a server by default: the server's default --listen.
pub(crate) const DEFAULT_SERVER: &str = "http://127.0.0.1:8080";

/// Options of `agentwire-server tail`.
#[derive(Debug, Clone, PartialEq, Eq, Args)]
pub(crate) struct TailArgs {
    /// The user whose stream to follow: a token for them is minted as `token` does
    /// (again at each reconnection). Not needed with --token.
    #[arg(long, required_unless_present = "token")]
    pub(crate) user: Option<String>,

    /// A client token to connect with, instead of minting one.
    #[arg(long, env = "AGENTWIRE_TOKEN", hide_env_values = true)]
    pub(crate) token: Option<String>,

    /// Exit after this many events (frames with a `seq`) were printed.
    #[arg(long, value_name = "N")]
    pub(crate) count: Option<u64>,

    /// Where the server is.
    #[command(flatten)]
    pub(crate) server: ServerArg,

    /// The signing key and claims of minted tokens.
    #[command(flatten)]
    pub(crate) sign: SignArgs,
}

/// Options of `agentwire-server publish`: one event from flags or `--json`, or many from
/// `--file`.
#[derive(Debug, Clone, PartialEq, Eq, Args)]
pub(crate) struct PublishArgs {
    /// API key to publish with (full or publish-only); without it the development API
    /// key of the running development server.
    #[arg(long, env = "AGENTWIRE_API_KEY", hide_env_values = true)]
    pub(crate) api_key: Option<String>,

    /// The event's user (`user_id`).
    #[arg(long, conflicts_with_all = ["json", "file"], required_unless_present_any = ["json", "file"])]
    pub(crate) user: Option<String>,

    /// The event's `type` (`agent_started`, `agent_thinking`, `tool_executing`,
    /// `tool_completed`, `agent_completed`, `agent_error`, `custom`).
    #[arg(long = "type", value_name = "TYPE", requires = "user", required_unless_present_any = ["json", "file"])]
    pub(crate) kind: Option<String>,

    /// The event's `run_id`.
    #[arg(long, requires = "user")]
    pub(crate) run_id: Option<String>,

    /// The event's `thread_id`.
    #[arg(long, requires = "user")]
    pub(crate) thread_id: Option<String>,

    /// The event's `event_id` (a retry with the same id publishes nothing twice).
    #[arg(long, requires = "user")]
    pub(crate) event_id: Option<String>,

    /// The event's `data`, a JSON object.
    #[arg(long, requires = "user", value_name = "JSON")]
    pub(crate) data: Option<String>,

    /// The whole body: one event object or an array of them, as the publish API takes it.
    #[arg(long, value_name = "JSON", conflicts_with = "file")]
    pub(crate) json: Option<String>,

    /// A file of JSON lines, one event object per line (`-`: standard input), published
    /// in order in batches of --batch.
    #[arg(long, value_name = "FILE")]
    pub(crate) file: Option<PathBuf>,

    /// Most events of --file per request (at most the server's --max-batch).
    #[arg(long, default_value_t = DEFAULT_PUBLISH_BATCH, value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) batch: u64,

    /// Where the server is.
    #[command(flatten)]
    pub(crate) server: ServerArg,

    /// Where the running development server keeps its credentials (for its API key).
    #[arg(long, env = "AGENTWIRE_DEV_CREDENTIALS_FILE", value_name = "FILE")]
    pub(crate) dev_credentials_file: Option<PathBuf>,
}

/// Events of `publish --file` per request by default: the server's default --max-batch.
pub(crate) const DEFAULT_PUBLISH_BATCH: u64 = 100;

/// Options of `agentwire-server check-token`.
#[derive(Debug, Clone, PartialEq, Eq, Args)]
pub(crate) struct CheckTokenArgs {
    /// The client token (a JWT) to check.
    pub(crate) token: String,
}

/// Options of `agentwire-server dev-credentials`.
#[derive(Debug, Clone, PartialEq, Eq, Args)]
pub(crate) struct DevCredentialsArgs {
    /// Print the development API key alone (for `$(…)` in a shell).
    #[arg(long)]
    pub(crate) api_key: bool,

    /// Where the running development server keeps its credentials.
    #[arg(long, env = "AGENTWIRE_DEV_CREDENTIALS_FILE", value_name = "FILE")]
    pub(crate) dev_credentials_file: Option<PathBuf>,
}

/// Subcommands of the binary.
#[derive(Debug, Clone, PartialEq, Eq, Subcommand)]
pub(crate) enum Command {
    /// Mint a client token the running server accepts, and print it.
    Token(TokenArgs),
    /// Follow a user's stream: print each frame as one JSON line, resuming across
    /// reconnections, until Ctrl-C.
    Tail(TailArgs),
    /// Publish events through the publish API and print its answer.
    Publish(PublishArgs),
    /// Print a TOML configuration file with every setting, its documentation and its
    /// default (for --config).
    Genconfig,
    /// Say whom a client token names, until when, and whether this server configuration
    /// (the settings before the subcommand, the environment, --config) accepts it, or why
    /// not.
    CheckToken(CheckTokenArgs),
    /// Print the development credentials file of the running development server and its
    /// API key.
    DevCredentials(DevCredentialsArgs),
}

/// The command line of `agentwire-server`: serve (no subcommand), or a subcommand.
#[derive(Debug, Clone, PartialEq, Eq, Parser)]
#[command(
    name = "agentwire-server",
    version,
    about = "agentwire: WebSocket event delivery for AI-agent chat platforms"
)]
pub(crate) struct Cli {
    /// Server settings.
    #[command(flatten)]
    pub(crate) serve: ServeArgs,
    /// What to do instead of serving.
    #[command(subcommand)]
    pub(crate) command: Option<Command>,
}

/// Why the configuration could not be read.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ConfigError {
    /// A flag, an environment variable or a file value is invalid (or `--help`/`--version`
    /// was asked for: print it with [`clap::Error::exit`]).
    #[error(transparent)]
    Cli(#[from] clap::Error),
    /// The `--config` file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The `--config` file is not valid TOML, or holds an unknown key or a value of the
    /// wrong kind.
    #[error("config file {path}: {reason}")]
    File { path: PathBuf, reason: String },
    /// Users other than its owner can write the `--config` file, or the directory it is
    /// in: any of them could change the server's keys and limits.
    #[error(
        "config file {file}: {at} can be written by users other than its owner (mode \
         {mode:03o}), so any of them could change the server's settings and keys; run \
         `chmod go-w {at}`"
    )]
    WritableByOthers {
        file: PathBuf,
        at: PathBuf,
        mode: u32,
    },
}

impl Cli {
    /// Parses the command line and the environment, then fills what neither gave from the
    /// `--config` file, if one is named.
    ///
    /// # Errors
    /// [`ConfigError`]; for `--help` it is a [`ConfigError::Cli`] whose `exit()` prints it.
    pub(crate) fn load<I, T>(args: I) -> Result<Cli, ConfigError>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        let args: Vec<OsString> = args.into_iter().map(Into::into).collect();
        let matches = Cli::command().try_get_matches_from(&args)?;
        let cli = Cli::from_arg_matches(&matches)?;
        let Some(path) = cli.serve.config.clone() else {
            return Ok(cli.inherit_dev_credentials_file());
        };
        if !matches!(cli.command, None | Some(Command::CheckToken(_))) {
            return Ok(cli.inherit_dev_credentials_file());
        }
        let extra = file_args(&path, &matches)?;
        if extra.is_empty() {
            return Ok(cli.inherit_dev_credentials_file());
        }
        // Before the subcommand, whose own flags follow it.
        let mut args = args;
        let at = args.len().min(1);
        args.splice(at..at, extra);
        let matches = Cli::command().try_get_matches_from(&args)?;
        Ok(Cli::from_arg_matches(&matches)?.inherit_dev_credentials_file())
    }

    /// A subcommand without `--dev-credentials-file` of its own takes the server's
    /// (`agentwire-server --dev-credentials-file F token …`): the same file either way.
    fn inherit_dev_credentials_file(mut self) -> Cli {
        let top = self.serve.dev_credentials_file.clone();
        let own = match &mut self.command {
            Some(Command::Token(a)) => &mut a.sign.dev_credentials_file,
            Some(Command::Tail(a)) => &mut a.sign.dev_credentials_file,
            Some(Command::Publish(a)) => &mut a.dev_credentials_file,
            Some(Command::DevCredentials(a)) => &mut a.dev_credentials_file,
            Some(Command::CheckToken(_) | Command::Genconfig) | None => return self,
        };
        if own.is_none() {
            *own = top;
        }
        self
    }
}

/// The text of the `--config` file, refused when users other than its owner can write it
/// (or its directory): the file sets the server's keys and limits, and may hold secrets.
fn read_config_file(path: &Path) -> Result<String, ConfigError> {
    use std::io::Read;
    let read_error = |source: std::io::Error| ConfigError::Read {
        path: path.to_owned(),
        source,
    };
    let mut file = std::fs::File::open(path).map_err(read_error)?;
    let meta = file.metadata().map_err(read_error)?;
    if let Some((at, mode)) = writable_by_others(path, &meta).map_err(read_error)? {
        return Err(ConfigError::WritableByOthers {
            file: path.to_owned(),
            at,
            mode,
        });
    }
    let mut text = String::new();
    file.read_to_string(&mut text).map_err(read_error)?;
    Ok(text)
}

/// The settings of a TOML file, as `--flag=value` arguments, for every flag that neither
/// the command line nor the environment gave.
fn file_args(path: &Path, matches: &ArgMatches) -> Result<Vec<OsString>, ConfigError> {
    let text = read_config_file(path)?;
    let bad = |reason: String| ConfigError::File {
        path: path.to_owned(),
        reason,
    };
    let table: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| bad(e.to_string()))?;
    let cmd = Cli::command();
    let mut out = Vec::new();
    // TOML refuses a key written twice; `max_connections` beside `max-connections` is the
    // same setting written twice too.
    let mut seen: std::collections::HashMap<String, String> = std::collections::HashMap::new();
    for (key, value) in table {
        let long = key.replace('_', "-");
        if let Some(first) = seen.insert(long.clone(), key.clone()) {
            return Err(bad(format!(
                "`{first}` and `{key}` are the same setting: give it once"
            )));
        }
        let Some(arg) = cmd
            .get_arguments()
            .find(|a| a.get_long() == Some(long.as_str()))
        else {
            return Err(bad(format!("unknown setting `{key}`")));
        };
        if long == "config" {
            return Err(bad("`config` cannot name another file".into()));
        }
        let id = arg.get_id().as_str();
        if !matches!(
            matches.value_source(id),
            None | Some(ValueSource::DefaultValue)
        ) {
            continue;
        }
        if !arg.get_action().takes_values() {
            // A switch (`dev = true`): given or not.
            match value {
                toml::Value::Boolean(true) => out.push(OsString::from(format!("--{long}"))),
                toml::Value::Boolean(false) => {}
                other => {
                    return Err(bad(format!(
                        "`{key}`: expected true or false, found {}",
                        other.type_str()
                    )));
                }
            }
            continue;
        }
        let text = match value {
            toml::Value::String(s) => s,
            toml::Value::Integer(i) => i.to_string(),
            toml::Value::Float(f) => f.to_string(),
            toml::Value::Boolean(b) => b.to_string(),
            toml::Value::Array(items) => {
                let mut parts = Vec::with_capacity(items.len());
                for item in items {
                    match item {
                        toml::Value::String(s) => parts.push(s),
                        other => {
                            return Err(bad(format!(
                                "`{key}`: expected strings in the array, found {}",
                                other.type_str()
                            )));
                        }
                    }
                }
                parts.join(",")
            }
            other => {
                return Err(bad(format!(
                    "`{key}`: unsupported value of type {}",
                    other.type_str()
                )));
            }
        };
        out.push(OsString::from(format!("--{long}={text}")));
    }
    Ok(out)
}

/// Parses a duration as humantime does (`50ms`, `30s`, `10m`, `1h 30m`); a bare number is
/// seconds, as it was before units were required.
pub(crate) fn parse_duration(s: &str) -> Result<humantime::Duration, String> {
    let s = s.trim();
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        let secs: u64 = s.parse().map_err(|_| format!("`{s}` is too long"))?;
        return Ok(std::time::Duration::from_secs(secs).into());
    }
    s.parse::<humantime::Duration>()
        .map_err(|e| format!("`{s}` is not a duration (e.g. 500ms, 30s, 10m, 1h): {e}"))
}

/// The settings `genconfig` leaves out: `--config` cannot name another file.
const NOT_IN_A_CONFIG_FILE: [&str; 3] = ["config", "help", "version"];

/// A TOML file for `--config` with every setting of the server: its help as a comment,
/// its environment variable, and its default — active, so that the file read back gives
/// the defaults; a setting without a default (a secret, a URL) is commented out.
pub(crate) fn genconfig() -> String {
    let mut cmd = Cli::command();
    cmd.build();
    let mut out = String::from(
        "# agentwire-server configuration (agentwire-server --config FILE).\n\
         # Every setting with its default; command-line flags and AGENTWIRE_* environment\n\
         # variables override this file. Keys are the long flag names; docs/operations.md\n\
         # explains each one.\n",
    );
    for arg in cmd.get_arguments() {
        let Some(long) = arg.get_long() else { continue };
        if NOT_IN_A_CONFIG_FILE.contains(&long) {
            continue;
        }
        out.push('\n');
        let help = arg
            .get_long_help()
            .or_else(|| arg.get_help())
            .map(ToString::to_string)
            .unwrap_or_default();
        for line in help.lines() {
            out.push_str(format!("# {line}").trim_end());
            out.push('\n');
        }
        if let Some(env) = arg.get_env() {
            out.push_str(&format!("# Environment: {}\n", env.to_string_lossy()));
        }
        let defaults: Vec<String> = arg
            .get_default_values()
            .iter()
            .map(|v| v.to_string_lossy().into_owned())
            .collect();
        match defaults.as_slice() {
            [] if arg.get_value_delimiter().is_some() => {
                out.push_str(&format!("# {long} = []\n"));
            }
            [] => out.push_str(&format!("# {long} = \"\"\n")),
            [one] => out.push_str(&format!("{long} = {}\n", toml_value(one))),
            many => {
                let items: Vec<String> = many.iter().map(|v| toml_value(v)).collect();
                out.push_str(&format!("{long} = [{}]\n", items.join(", ")));
            }
        }
    }
    out
}

/// A default as TOML: integers and booleans bare, everything else a basic string (JSON's
/// escapes are TOML's).
fn toml_value(text: &str) -> String {
    if text.parse::<i64>().is_ok() || text == "true" || text == "false" {
        return text.to_owned();
    }
    serde_json::Value::String(text.to_owned()).to_string()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn temp_file(name: &str, contents: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "agentwire-config-test-{}-{name}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("agentwire.toml");
        std::fs::write(&path, contents).expect("write");
        path
    }

    fn load(args: &[&str]) -> Result<Cli, ConfigError> {
        Cli::load(std::iter::once("agentwire-server").chain(args.iter().copied()))
    }

    #[test]
    fn no_arguments_give_the_documented_defaults() {
        let cli = load(&[]).expect("parses");
        assert_eq!(cli.command, None);
        assert_eq!(cli.serve.log_format, LogFormat::Text);
        assert!(!cli.serve.dev);
        let c = cli.serve.server_config();
        assert_eq!(c, ServerConfig::default());
        assert_eq!(
            c.listen,
            "127.0.0.1:8080".parse::<SocketAddr>().expect("addr")
        );
        assert_eq!(c.broker, BrokerKind::Memory);
        assert_eq!(c.max_connections, 10_000);
        assert_eq!(c.max_connections_per_user, 3);
        assert_eq!(c.per_user_policy, PerUserPolicy::EvictOldest);
        assert_eq!(c.heartbeat_interval, Duration::from_secs(30));
        assert_eq!(c.heartbeat_timeout, Duration::from_secs(10));
        assert_eq!(c.write_timeout, Duration::from_secs(10));
        assert_eq!(c.max_message_size, 16 * 1024);
        assert_eq!(c.max_event_bytes, 256 * 1024);
        assert_eq!(c.max_bad_frames, 10);
        assert_eq!(c.resume_wait, Duration::from_millis(50));
        assert!(c.jwt_secret.is_none() && !c.dev_mode);
        assert!(c.api_keys.is_empty());
    }

    #[test]
    fn flags_set_every_kind_of_value() {
        let cli = load(&[
            "--listen",
            "0.0.0.0:9000",
            "--api-keys",
            "k1,k2",
            "--heartbeat-interval",
            "15s",
            "--resume-wait",
            "0",
            "--per-user-policy",
            "reject",
            "--allowed-origins",
            "https://a.example,https://b.example",
            "--jwt-secret",
            "s3cret",
            "--jwt-jwks-url",
            "https://idp.example/.well-known/jwks.json",
            "--jwt-jwks-refresh-interval",
            "1m",
            "--jwt-max-bytes",
            "4096",
            "--log-format",
            "json",
            "--max-connections",
            "500",
        ])
        .expect("parses");
        assert_eq!(cli.serve.log_format, LogFormat::Json);
        let c = cli.serve.server_config();
        assert_eq!(c.listen.port(), 9000);
        assert_eq!(c.api_keys, vec!["k1", "k2"]);
        assert_eq!(c.heartbeat_interval, Duration::from_secs(15));
        assert_eq!(c.resume_wait, Duration::ZERO);
        assert_eq!(c.per_user_policy, PerUserPolicy::Reject);
        assert_eq!(c.allowed_origins.len(), 2);
        assert_eq!(c.jwt_secret.as_deref(), Some("s3cret"));
        assert_eq!(
            c.jwt_jwks_url.as_deref(),
            Some("https://idp.example/.well-known/jwks.json")
        );
        assert_eq!(c.jwt_jwks_refresh_interval, Duration::from_secs(60));
        assert_eq!(c.jwt_max_bytes, 4096);
        let m = c.manager_config();
        assert_eq!(m.max_connections, 500);
        assert_eq!(m.heartbeat.interval, Duration::from_secs(15));
        assert_eq!(m.limit_policy, agentwire_manager::LimitPolicy::Reject);
    }

    #[test]
    fn the_config_file_fills_what_flags_do_not_give() {
        let path = temp_file(
            "merge",
            r#"
    listen = "127.0.0.1:9100"
    heartbeat-interval = "5s"
    history_max_events = 42
    api-keys = ["a", "b"]
    broker = "memory"
    "#,
        );
        let p = path.to_str().expect("utf-8 path");
        let c = load(&["--config", p, "--heartbeat-interval", "7s"])
            .expect("parses")
            .serve
            .server_config();
        assert_eq!(c.listen.port(), 9100, "from the file");
        assert_eq!(c.history_max_events, 42, "snake_case keys work too");
        assert_eq!(c.api_keys, vec!["a", "b"], "arrays become lists");
        assert_eq!(
            c.heartbeat_interval,
            Duration::from_secs(7),
            "the command line wins"
        );
        assert_eq!(
            c.heartbeat_timeout,
            Duration::from_secs(10),
            "the default stays"
        );
    }

    #[test]
    fn the_redis_settings_come_from_flags_and_the_config_file() {
        let c = load(&[
            "--broker",
            "redis",
            "--redis-url",
            "redis://127.0.0.1:6380",
            "--redis-key-prefix",
            "prod:aw:",
            "--redis-command-timeout",
            "500ms",
        ])
        .expect("parses")
        .serve
        .server_config();
        assert_eq!(c.broker, BrokerKind::Redis);
        assert_eq!(c.redis_url.as_deref(), Some("redis://127.0.0.1:6380"));
        assert_eq!(c.redis_key_prefix, "prod:aw:");
        assert_eq!(c.redis_command_timeout, Duration::from_millis(500));
        assert!(c.redis_cluster_nodes.is_empty());
        let path = temp_file(
            "redis",
            r#"
    broker = "redis"
    redis-cluster-nodes = ["redis://10.0.0.1:7000", "redis://10.0.0.2:7000"]
    redis_key_prefix = "tenant-7:"
    "#,
        );
        let c = load(&["--config", path.to_str().expect("utf-8 path")])
            .expect("parses")
            .serve
            .server_config();
        assert_eq!(c.broker, BrokerKind::Redis);
        assert_eq!(
            c.redis_cluster_nodes,
            ["redis://10.0.0.1:7000", "redis://10.0.0.2:7000"]
        );
        assert_eq!(c.redis_key_prefix, "tenant-7:");
        assert_eq!(c.redis_url, None);
    }

    #[test]
    fn bad_files_and_values_are_errors_that_say_what_is_wrong() {
        let unknown = temp_file("unknown", "listen = \"127.0.0.1:1\"\nno_such_setting = 1\n");
        let err = load(&["--config", unknown.to_str().expect("path")]).expect_err("unknown key");
        assert!(err.to_string().contains("no_such_setting"), "{err}");

        let bad_toml = temp_file("bad", "listen = \n");
        assert!(matches!(
            load(&["--config", bad_toml.to_str().expect("path")]),
            Err(ConfigError::File { .. })
        ));

        let bad_value = temp_file("value", "max-connections = \"many\"\n");
        assert!(matches!(
            load(&["--config", bad_value.to_str().expect("path")]),
            Err(ConfigError::Cli(_))
        ));

        let switch = temp_file("switch", "dev = \"yes\"\n");
        let err = load(&["--config", switch.to_str().expect("path")]).expect_err("not a bool");
        assert!(err.to_string().contains("true or false"), "{err}");
        let switch = temp_file("switch-on", "dev = true\n");
        assert!(
            load(&["--config", switch.to_str().expect("path")])
                .expect("dev = true")
                .serve
                .dev
        );

        let missing = load(&["--config", "/nonexistent/agentwire.toml"]).expect_err("missing file");
        assert!(matches!(missing, ConfigError::Read { .. }), "{missing}");

        for args in [
            &["--heartbeat-interval", "soon"][..],
            &["--listen", "not-an-address"][..],
            &["--broker", "kafka"][..],
            &["--per-user-policy", "random"][..],
        ] {
            assert!(load(args).is_err(), "{args:?}");
        }
    }

    /// Issue 19: `genconfig` writes every setting, and the file it writes, read back, is
    /// the default configuration.
    #[test]
    fn genconfig_names_every_setting_and_reads_back_as_the_defaults() {
        let text = genconfig();
        let table: toml::Table = text.parse().expect("valid TOML");
        let cmd = Cli::command();
        for arg in cmd.get_arguments() {
            let Some(long) = arg.get_long() else { continue };
            if NOT_IN_A_CONFIG_FILE.contains(&long) {
                continue;
            }
            let active = table.contains_key(long);
            let commented = text.contains(&format!("\n# {long} = "));
            assert!(active || commented, "--{long} missing from genconfig");
            if let Some(env) = arg.get_env() {
                assert!(text.contains(&*env.to_string_lossy()), "{env:?}");
            }
        }
        let path = temp_file("genconfig", &text);
        let cli = load(&["--config", path.to_str().expect("utf-8 path")]).expect("reads back");
        assert_eq!(cli.serve.server_config(), ServerConfig::default());
        assert_eq!(cli.serve.log_format, LogFormat::Text);
        assert!(!cli.serve.dev);
        let defaults = load(&[]).expect("parses");
        assert_eq!(
            Cli {
                serve: ServeArgs {
                    config: None,
                    ..cli.serve
                },
                ..cli
            },
            defaults,
            "every setting read back as its default"
        );
    }

    #[test]
    fn the_client_subcommands_parse() {
        let cli = load(&["tail", "--user", "alice", "--count", "3"]).expect("parses");
        assert!(
            matches!(&cli.command, Some(Command::Tail(t)) if t.user.as_deref() == Some("alice")
                && t.server.server == DEFAULT_SERVER && t.count == Some(3)),
            "{cli:?}"
        );
        assert!(load(&["tail"]).is_err(), "--user or --token");
        assert!(load(&["tail", "--token", "x.y.z"]).is_ok());
        let cli = load(&[
            "publish",
            "--user",
            "alice",
            "--type",
            "agent_started",
            "--run-id",
            "r1",
        ])
        .expect("parses");
        assert!(
            matches!(&cli.command, Some(Command::Publish(p)) if p.kind.as_deref() == Some("agent_started"))
        );
        assert!(load(&["publish", "--file", "-"]).is_ok());
        assert!(load(&["publish"]).is_err(), "nothing to publish");
        assert!(load(&["publish", "--file", "-", "--user", "a"]).is_err());
        assert!(load(&["publish", "--file", "-", "--batch", "0"]).is_err());
        assert!(load(&["check-token", "a.b.c"]).is_ok());
        // The server's --dev-credentials-file, before the subcommand, is the subcommand's.
        let cli = load(&[
            "--dev-credentials-file",
            "/x/c.json",
            "token",
            "--user",
            "a",
        ])
        .expect("parses");
        assert!(matches!(&cli.command, Some(Command::Token(t))
                if t.sign.dev_credentials_file.as_deref() == Some(Path::new("/x/c.json"))));
        let cli = load(&[
            "--dev-credentials-file",
            "/x/c.json",
            "dev-credentials",
            "--dev-credentials-file",
            "/y/c.json",
        ])
        .expect("parses");
        assert!(
            matches!(&cli.command, Some(Command::DevCredentials(d))
                if d.dev_credentials_file.as_deref() == Some(Path::new("/y/c.json"))),
            "its own wins"
        );
        assert!(load(&["genconfig"]).is_ok());
        assert!(load(&["dev-credentials", "--api-key"]).is_ok());
    }

    #[test]
    fn the_token_subcommand_parses() {
        let cli = load(&["token", "--user", "alice", "--ttl-secs", "60"]).expect("parses");
        match cli.command {
            Some(Command::Token(t)) => {
                assert_eq!(t.user, "alice");
                assert_eq!(t.ttl_secs, 60);
            }
            other => panic!("expected the token command, got {other:?}"),
        }
        assert!(load(&["token"]).is_err(), "--user is required");
    }

    #[test]
    fn durations_parse_with_units_and_bare_numbers_are_seconds() {
        let p = |s: &str| parse_duration(s).map(Duration::from);
        assert_eq!(p("50ms"), Ok(Duration::from_millis(50)));
        assert_eq!(p("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(p("30"), Ok(Duration::from_secs(30)));
        assert_eq!(p("0"), Ok(Duration::ZERO));
        assert_eq!(p("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(p("1h 30m"), Ok(Duration::from_secs(5400)));
        assert!(p("ten").is_err());
        assert!(p("5 fortnights").is_err());
        assert!(p("").is_err());
        assert!(p("99999999999999999999999").is_err());
    }

    #[test]
    fn every_flag_has_an_environment_variable_and_help_shows_its_default() {
        let mut cmd = Cli::command();
        let help = cmd.render_long_help().to_string();
        let mut flags = 0;
        for arg in cmd.get_arguments() {
            let Some(long) = arg.get_long() else { continue };
            if long == "help" || long == "version" {
                continue;
            }
            flags += 1;
            let env = arg
                .get_env()
                .unwrap_or_else(|| panic!("--{long} has no environment variable"));
            let env = env.to_str().expect("utf-8");
            assert!(env.starts_with("AGENTWIRE_"), "{env}");
            assert!(help.contains(env), "{env} missing from --help");
            // A switch (`--dev`) has no value to show.
            let defaults = if arg.get_action().takes_values() {
                arg.get_default_values()
            } else {
                &[]
            };
            for default in defaults {
                let default = default.to_str().expect("utf-8");
                assert!(
                    help.contains(&format!("[default: {default}]")),
                    "--{long}: default {default} missing from --help"
                );
            }
        }
        assert!(flags >= 35, "only {flags} flags");
    }
}
