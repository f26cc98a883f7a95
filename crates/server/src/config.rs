//! Configuration: every flag with its environment variable and its default, an optional
//! TOML file beneath them, and the translation into the manager's and broker's bounds.
//!
//! Precedence, highest first: command line, environment, `--config` file, default. The
//! defaults live only in the `#[arg]` attributes, so `--help` and [`ServerConfig::default`]
//! cannot disagree.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use agentwire_manager::{HeartbeatPolicy, HistoryConfig, LimitPolicy, ManagerConfig, QueueLimits};
use clap::parser::ValueSource;
use clap::{ArgMatches, Args, CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};

/// Which broker owns the per-user streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BrokerKind {
    /// In-process history: one node, no other process.
    Memory,
    /// Redis, for many nodes (not in this build yet).
    Redis,
}

/// What a connection beyond `--max-connections-per-user` does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PerUserPolicy {
    /// Close the user's oldest connection with 4003 and accept the new one.
    EvictOldest,
    /// Refuse the new connection with 4004.
    Reject,
}

/// Whether the publish API checks each run's lifecycle (docs/protocol.md §7).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RunLifecycle {
    /// Refuse an event that breaks its run's order with 409.
    Enforce,
    /// Accept events in any order (the publisher is trusted to keep it).
    Off,
}

/// How log lines are written (to stderr).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Everything the server can be told. Each field is a flag (`--listen`) with an
/// environment variable (`AGENTWIRE_LISTEN`); `--config FILE` may give any of them in TOML
/// (`listen = "0.0.0.0:8080"`, `heartbeat-interval = "15s"`).
#[derive(Debug, Clone, PartialEq, Eq, Args)]
#[non_exhaustive]
pub struct ServerConfig {
    /// A TOML file with any of these settings (keys as the long flag names); flags and
    /// environment variables override it.
    #[arg(long, env = "AGENTWIRE_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Address to listen on. Port 0 picks a free port (printed at start).
    #[arg(long, env = "AGENTWIRE_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// Length of the TCP accept queue.
    #[arg(long, env = "AGENTWIRE_LISTEN_BACKLOG", default_value_t = 4096)]
    pub listen_backlog: u32,

    /// HS256 secret that signs client tokens. Without it (and without
    /// --jwt-public-key) a development secret is generated and kept in
    /// --dev-credentials-file.
    #[arg(long, env = "AGENTWIRE_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,

    /// PEM file with an RSA public key: RS256 tokens signed by its private key are
    /// accepted too.
    #[arg(long, env = "AGENTWIRE_JWT_PUBLIC_KEY", value_name = "PEM_FILE")]
    pub jwt_public_key: Option<PathBuf>,

    /// Required `iss` claim, when set.
    #[arg(long, env = "AGENTWIRE_JWT_ISSUER")]
    pub jwt_issuer: Option<String>,

    /// Required `aud` claim, when set.
    #[arg(long, env = "AGENTWIRE_JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,

    /// Clock skew tolerated on `exp`, at the handshake and while connected.
    #[arg(long, env = "AGENTWIRE_JWT_LEEWAY", default_value = "30s", value_parser = parse_duration)]
    pub jwt_leeway: Duration,

    /// API keys with full access: publish, history reads and the admin endpoints
    /// (comma-separated). In development mode the generated key is accepted too.
    #[arg(
        long,
        env = "AGENTWIRE_API_KEYS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub api_keys: Vec<String>,

    /// API keys that may only publish (POST /v1/events), comma-separated: they get 403
    /// on history reads and the admin endpoints.
    #[arg(
        long,
        env = "AGENTWIRE_PUBLISH_API_KEYS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub publish_api_keys: Vec<String>,

    /// Where the development secret and API key are kept [default:
    /// $XDG_STATE_HOME/agentwire/dev-credentials.json, else
    /// ~/.local/state/agentwire/dev-credentials.json].
    #[arg(long, env = "AGENTWIRE_DEV_CREDENTIALS_FILE", value_name = "FILE")]
    pub dev_credentials_file: Option<PathBuf>,

    /// Which broker owns the event streams.
    #[arg(long, env = "AGENTWIRE_BROKER", value_enum, default_value = "memory")]
    pub broker: BrokerKind,

    /// Redis URL for --broker redis.
    #[arg(long, env = "AGENTWIRE_REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<String>,

    /// Most connections on this node; more are refused with 1013. Clamped to what the
    /// open-file limit allows.
    #[arg(long, env = "AGENTWIRE_MAX_CONNECTIONS", default_value_t = 10_000)]
    pub max_connections: usize,

    /// Most connections one user may hold on this node.
    #[arg(long, env = "AGENTWIRE_MAX_CONNECTIONS_PER_USER", default_value_t = 3)]
    pub max_connections_per_user: usize,

    /// What a connection beyond --max-connections-per-user does.
    #[arg(
        long,
        env = "AGENTWIRE_PER_USER_POLICY",
        value_enum,
        default_value = "evict-oldest"
    )]
    pub per_user_policy: PerUserPolicy,

    /// Most frames waiting for one connection's writer; beyond it the connection is a
    /// slow consumer and is closed with 1013.
    #[arg(long, env = "AGENTWIRE_QUEUE_MAX_FRAMES", default_value_t = 1024)]
    pub queue_max_frames: usize,

    /// Most bytes waiting for one connection's writer (same policy).
    #[arg(long, env = "AGENTWIRE_QUEUE_MAX_BYTES", default_value_t = 4 * 1024 * 1024)]
    pub queue_max_bytes: usize,

    /// Time between WebSocket pings.
    #[arg(long, env = "AGENTWIRE_HEARTBEAT_INTERVAL", default_value = "30s", value_parser = parse_duration)]
    pub heartbeat_interval: Duration,

    /// How long past a ping a silent peer is given before it is closed with 1001.
    #[arg(long, env = "AGENTWIRE_HEARTBEAT_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub heartbeat_timeout: Duration,

    /// How often the manager sweeps dead connections and trims history.
    #[arg(long, env = "AGENTWIRE_SWEEP_INTERVAL", default_value = "5s", value_parser = parse_duration)]
    pub sweep_interval: Duration,

    /// Longest a batch write (or a ping, or a close frame) may take; a peer that stopped
    /// reading is dropped after it.
    #[arg(long, env = "AGENTWIRE_WRITE_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub write_timeout: Duration,

    /// How long after sending a close frame the server waits for the peer's.
    #[arg(long, env = "AGENTWIRE_CLOSE_TIMEOUT", default_value = "2s", value_parser = parse_duration)]
    pub close_timeout: Duration,

    /// Most frames one write batch takes from a connection's queue before flushing.
    #[arg(long, env = "AGENTWIRE_WRITE_BATCH_FRAMES", default_value_t = 256)]
    pub write_batch_frames: usize,

    /// Per-connection read buffer, in bytes (at least 256). Client frames are tiny; a
    /// larger message grows it, up to --max-message-size.
    #[arg(long, env = "AGENTWIRE_READ_BUFFER_SIZE", default_value_t = 256)]
    pub read_buffer_size: usize,

    /// Largest client message, in bytes; larger ones close the connection with 1009.
    #[arg(long, env = "AGENTWIRE_MAX_MESSAGE_SIZE", default_value_t = agentwire_protocol::MAX_CLIENT_FRAME_BYTES)]
    pub max_message_size: usize,

    /// Largest client WebSocket frame, in bytes (same policy).
    #[arg(long, env = "AGENTWIRE_MAX_FRAME_SIZE", default_value_t = agentwire_protocol::MAX_CLIENT_FRAME_BYTES)]
    pub max_frame_size: usize,

    /// Largest event, in bytes of JSON.
    #[arg(long, env = "AGENTWIRE_MAX_EVENT_BYTES", default_value_t = agentwire_protocol::DEFAULT_MAX_EVENT_BYTES)]
    pub max_event_bytes: usize,

    /// Most events in one publish body (a JSON array); more are refused with 413.
    #[arg(long, env = "AGENTWIRE_MAX_BATCH", default_value_t = 100)]
    pub max_batch: usize,

    /// Largest publish request body, in bytes; larger ones are refused with 413.
    #[arg(long, env = "AGENTWIRE_MAX_REQUEST_BYTES", default_value_t = 4 * 1024 * 1024)]
    pub max_request_bytes: usize,

    /// Events per second each API key may publish (a token bucket); beyond it the
    /// publish API answers 429 with Retry-After. 0 turns the limit off.
    #[arg(long, env = "AGENTWIRE_PUBLISH_RATE", default_value_t = 1_000)]
    pub publish_rate: u32,

    /// Events an API key may publish at once before --publish-rate applies (the bucket's
    /// size).
    #[arg(long, env = "AGENTWIRE_PUBLISH_BURST", default_value_t = 2_000)]
    pub publish_burst: u32,

    /// Whether the publish API checks each run's lifecycle.
    #[arg(
        long,
        env = "AGENTWIRE_RUN_LIFECYCLE",
        value_enum,
        default_value = "enforce"
    )]
    pub run_lifecycle: RunLifecycle,

    /// Most runs whose lifecycle state the publish API remembers; at the bound the least
    /// recently used run is forgotten.
    #[arg(long, env = "AGENTWIRE_MAX_RUNS", default_value_t = 100_000)]
    pub max_runs: usize,

    /// How long a run's state is remembered after its last event (finished or not).
    #[arg(long, env = "AGENTWIRE_RUN_TTL", default_value = "1h", value_parser = parse_duration)]
    pub run_ttl: Duration,

    /// Most events one history read (GET /v1/users/{user_id}/events) returns.
    #[arg(long, env = "AGENTWIRE_HISTORY_READ_MAX", default_value_t = 1_000)]
    pub history_read_max: usize,

    /// Bad client frames (each answered with an `error` frame) tolerated per connection;
    /// one more closes it with 1008.
    #[arg(long, env = "AGENTWIRE_MAX_BAD_FRAMES", default_value_t = 10)]
    pub max_bad_frames: u32,

    /// Without a resume in the query string, how long to wait for a `resume` first frame
    /// before streaming from the start of history. 0 turns the first-frame resume off.
    #[arg(long, env = "AGENTWIRE_RESUME_WAIT", default_value = "50ms", value_parser = parse_duration)]
    pub resume_wait: Duration,

    /// Most events of history kept per user.
    #[arg(long, env = "AGENTWIRE_HISTORY_MAX_EVENTS", default_value_t = 1_000)]
    pub history_max_events: usize,

    /// Oldest event of history kept.
    #[arg(long, env = "AGENTWIRE_HISTORY_MAX_AGE", default_value = "10m", value_parser = parse_duration)]
    pub history_max_age: Duration,

    /// Most bytes of history kept for all users together.
    #[arg(long, env = "AGENTWIRE_HISTORY_MAX_BYTES", default_value_t = 256 * 1024 * 1024)]
    pub history_max_bytes: usize,

    /// How long after its acceptance an `event_id` is recognised as a retry (and another
    /// event under it refused with 409). Default: `--history-max-age`. Never shorter than
    /// the time its event stays in history.
    #[arg(long, env = "AGENTWIRE_DEDUPE_WINDOW", value_parser = parse_duration)]
    pub dedupe_window: Option<Duration>,

    /// Longest a graceful shutdown may take before the process exits anyway.
    #[arg(long, env = "AGENTWIRE_SHUTDOWN_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub shutdown_timeout: Duration,

    /// Origins allowed to open /ws (comma-separated, e.g. `https://app.example.com`); empty
    /// allows any. Requests without an Origin header (non-browsers) are always allowed.
    #[arg(long, env = "AGENTWIRE_ALLOWED_ORIGINS", value_delimiter = ',')]
    pub allowed_origins: Vec<String>,

    /// Log line format.
    #[arg(long, env = "AGENTWIRE_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,

    /// The live demo page at / (with /demo/* endpoints that mint development tokens and
    /// start simulated runs): auto = on only in development mode (no --jwt-secret, no
    /// --jwt-public-key), on, or off. /client.js is served in every mode.
    #[arg(long, env = "AGENTWIRE_DEMO", value_enum, default_value = "auto")]
    pub demo: crate::demo::DemoMode,
}

impl Default for ServerConfig {
    /// The defaults of every flag, ignoring the environment.
    fn default() -> Self {
        let cmd = ServerConfig::augment_args(clap::Command::new("agentwire-server"))
            .mut_args(|a| a.env(None));
        let matches = cmd
            .try_get_matches_from(["agentwire-server"])
            .expect("every flag has a default or is optional");
        ServerConfig::from_arg_matches(&matches).expect("defaults parse")
    }
}

impl ServerConfig {
    /// Whether no secret nor key was configured, so development credentials are used.
    pub fn is_dev_mode(&self) -> bool {
        self.jwt_secret.is_none() && self.jwt_public_key.is_none()
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
            ..ManagerConfig::default()
        }
    }

    /// The in-memory broker's history bounds.
    pub fn history_config(&self) -> HistoryConfig {
        HistoryConfig {
            max_events_per_user: self.history_max_events,
            max_age: self.history_max_age,
            max_total_bytes: self.history_max_bytes,
            dedupe_window: self.dedupe_window.unwrap_or(self.history_max_age),
        }
    }
}

/// Options of `agentwire-server token`.
#[derive(Debug, Clone, PartialEq, Eq, Args)]
#[non_exhaustive]
pub struct TokenArgs {
    /// The user the token is for (its `sub`).
    #[arg(long)]
    pub user: String,

    /// Lifetime of the token, in seconds.
    #[arg(long, default_value_t = 3600)]
    pub ttl_secs: u64,

    /// HS256 secret to sign with; without it the development secret is used.
    #[arg(long, env = "AGENTWIRE_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,

    /// `iss` claim to put in the token.
    #[arg(long, env = "AGENTWIRE_JWT_ISSUER")]
    pub jwt_issuer: Option<String>,

    /// `aud` claim to put in the token.
    #[arg(long, env = "AGENTWIRE_JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,

    /// Where the development credentials are kept (as for the server).
    #[arg(long, env = "AGENTWIRE_DEV_CREDENTIALS_FILE", value_name = "FILE")]
    pub dev_credentials_file: Option<PathBuf>,
}

/// Subcommands of the binary.
#[derive(Debug, Clone, PartialEq, Eq, Subcommand)]
#[non_exhaustive]
pub enum Command {
    /// Mint a client token the running server accepts, and print it.
    Token(TokenArgs),
}

/// The command line of `agentwire-server`: serve (no subcommand), or a subcommand.
#[derive(Debug, Clone, PartialEq, Eq, Parser)]
#[command(
    name = "agentwire-server",
    version,
    about = "agentwire: WebSocket event delivery for AI-agent chat platforms"
)]
#[non_exhaustive]
pub struct Cli {
    /// Server settings.
    #[command(flatten)]
    pub config: ServerConfig,
    /// What to do instead of serving.
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Why the configuration could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A flag, an environment variable or a file value is invalid (or `--help`/`--version`
    /// was asked for: print it with [`clap::Error::exit`]).
    #[error(transparent)]
    Cli(#[from] clap::Error),
    /// The `--config` file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The `--config` file is not valid TOML, or holds an unknown key or a value of the
    /// wrong kind.
    #[error("config file {path}: {reason}")]
    File {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

impl Cli {
    /// Parses the command line and the environment, then fills what neither gave from the
    /// `--config` file, if one is named.
    ///
    /// # Errors
    /// [`ConfigError`]; for `--help` it is a [`ConfigError::Cli`] whose `exit()` prints it.
    pub fn load<I, T>(args: I) -> Result<Cli, ConfigError>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        let args: Vec<OsString> = args.into_iter().map(Into::into).collect();
        let matches = Cli::command().try_get_matches_from(&args)?;
        let cli = Cli::from_arg_matches(&matches)?;
        let Some(path) = cli.config.config.clone() else {
            return Ok(cli);
        };
        if cli.command.is_some() {
            return Ok(cli);
        }
        let extra = file_args(&path, &matches)?;
        if extra.is_empty() {
            return Ok(cli);
        }
        let mut args = args;
        args.extend(extra);
        let matches = Cli::command().try_get_matches_from(&args)?;
        Ok(Cli::from_arg_matches(&matches)?)
    }
}

/// The settings of a TOML file, as `--flag=value` arguments, for every flag that neither
/// the command line nor the environment gave.
fn file_args(path: &Path, matches: &ArgMatches) -> Result<Vec<OsString>, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    let bad = |reason: String| ConfigError::File {
        path: path.to_owned(),
        reason,
    };
    let table: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| bad(e.to_string()))?;
    let cmd = Cli::command();
    let mut out = Vec::new();
    for (key, value) in table {
        let long = key.replace('_', "-");
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

/// Parses a duration: a number followed by `ms`, `s`, `m` or `h` (`50ms`, `30s`, `10m`);
/// a bare number is seconds.
///
/// # Errors
/// A message saying what is wrong, for clap to print.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, unit) = s.split_at(split);
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("`{s}` is not a duration (e.g. 500ms, 30s, 10m, 1h)"))?;
    let ms = match unit.trim() {
        "ms" => Some(n),
        "" | "s" => n.checked_mul(1_000),
        "m" => n.checked_mul(60_000),
        "h" => n.checked_mul(3_600_000),
        other => {
            return Err(format!(
                "unknown unit `{other}` in `{s}` (use ms, s, m or h)"
            ));
        }
    };
    ms.map(Duration::from_millis)
        .ok_or_else(|| format!("`{s}` is too long"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("50ms"), Ok(Duration::from_millis(50)));
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("30"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert!(parse_duration("ten").is_err());
        assert!(parse_duration("5d").is_err());
        assert!(parse_duration("").is_err());
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
}
