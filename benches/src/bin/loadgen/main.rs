//! `loadgen`: the load generator of agentwire (issue 8).
//!
//! Opens many authenticated WebSocket connections, or event streams (`--transport sse`),
//! from source addresses spread over 127.0.0.2… (worker processes past one process's
//! open-file limit), publishes agent runs
//! on a fixed open-loop schedule through `POST /v1/events` (or in-process through the
//! manager of a server started inside this process), and checks every delivered event:
//! latency from the scheduled send time (HdrHistogram), loss, duplicates, reordering and
//! misrouting. Reads the server's CPU and memory from `/proc`, and its own CPU, so a
//! saturated generator is never mistaken for a slow server.
//!
//! Several server processes (`--server A --server B …`, the nodes of one deployment) are
//! loaded together: each connection and each publish request goes to the node the
//! `--placement` picks, and the checks above hold end to end across them. Processes the
//! nodes depend on (`--extra-pid`, e.g. Redis) count in the CPU figures, and with
//! `--redis` the Redis commands run per published event are reported.
//!
//! Progress goes to stderr; the result is one JSON line on stdout (and appended to
//! `--out`). Every run is bounded in time and count. See docs/performance.md.

mod clients;
mod events;
mod flood;
mod frame;
mod http;
mod placement;
mod procstat;
mod publish;
mod redis_info;
mod scenarios;
mod sse;
mod throttle;
mod ws;

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};

use crate::placement::Placement;

/// Rates are deliveries per second: events per second × connections per user.
#[derive(Debug, Parser)]
#[command(
    name = "loadgen",
    about = "agentwire load generator (docs/performance.md)"
)]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Debug, Clone, Args)]
pub(crate) struct Common {
    /// The server to load (`agentwire-server --listen …`); repeated, the servers are nodes
    /// of one deployment and connections and publishes are spread over them
    /// (--placement). Ignored with --in-process.
    #[arg(long = "server", default_value = "127.0.0.1:8080")]
    servers: Vec<SocketAddr>,
    /// A server's pid, to read its CPU and memory from /proc; repeated for several nodes,
    /// whose figures are summed (and listed per node).
    #[arg(long = "server-pid")]
    server_pids: Vec<u32>,
    /// Another process the servers depend on (e.g. redis-server): its CPU is reported on
    /// its own and added to the servers' in `cpu_s_per_million_deliveries_with_extra`.
    #[arg(long = "extra-pid")]
    extra_pids: Vec<u32>,
    /// How connections and publishes are spread over several --server nodes.
    #[arg(long, value_enum, default_value_t = Placement::RoundRobin)]
    placement: Placement,
    /// A Redis (`host:port` or `redis://host:port`) whose `INFO commandstats` is read
    /// before and after each period, to report Redis commands per published event.
    #[arg(long)]
    redis: Option<String>,
    /// `KEY=VALUE`, copied into the result's `meta` object (repeatable); the side-by-side
    /// script tags each round with it.
    #[arg(long = "meta", value_parser = parse_meta)]
    meta: Vec<(String, String)>,
    /// Start the server inside this process (its own runtime, threads named `aw-srv`) and
    /// emit through its manager instead of the HTTP publish API.
    #[arg(long)]
    in_process: bool,
    /// Worker threads of the in-process server.
    #[arg(long, default_value_t = 1)]
    server_threads: usize,
    /// In-process: pin the server's threads to this core (the generator's to --pin-client).
    #[arg(long)]
    pin_server: Option<usize>,
    /// In-process: pin the generator's thread to this core.
    #[arg(long)]
    pin_client: Option<usize>,
    /// In-process: the server's --history-max-age.
    #[arg(long, value_parser = humantime::parse_duration)]
    inproc_history_max_age: Option<Duration>,
    /// HS256 secret of client tokens (else from --credentials).
    #[arg(long, env = "AGENTWIRE_JWT_SECRET", hide_env_values = true)]
    jwt_secret: Option<String>,
    /// API key for POST /v1/events (else from --credentials).
    #[arg(long, env = "LOADGEN_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// The server's development credentials file (printed by `agentwire-server --dev`).
    #[arg(long)]
    credentials: Option<PathBuf>,
    /// Users.
    #[arg(long, default_value_t = 1_000)]
    users: u32,
    /// Connections per user (the server allows 3 by default).
    #[arg(long, default_value_t = 2)]
    conns_per_user: u32,
    /// Approximate size of each event's `data`, in bytes of JSON.
    #[arg(long, default_value_t = 200)]
    data_bytes: usize,
    /// Events per publish request.
    #[arg(long, default_value_t = 50)]
    batch: u32,
    /// Publisher lanes (keep-alive HTTP connections, one request in flight each).
    #[arg(long, default_value_t = 4)]
    lanes: u32,
    /// Events per run in the steady workload (agent_started … agent_completed).
    #[arg(long, default_value_t = 10)]
    run_len: usize,
    /// Runs of the steady workload stream their answer: `agent_started`, `--run-len` − 3
    /// `message_delta`s (each about `--data-bytes`), `message_completed`,
    /// `agent_completed` — instead of thoughts.
    #[arg(long)]
    streamed: bool,
    /// How clients receive events: WebSockets (`ws`), or Server-Sent Events on
    /// `GET /v1/stream` (`sse`).
    #[arg(long, value_enum, default_value_t = clients::Transport::Ws)]
    transport: clients::Transport,
    /// Source addresses 127.0.0.2 … 127.0.0.(1+N) the clients bind to.
    #[arg(long, default_value_t = 16)]
    source_ips: u32,
    /// Handshakes in flight at once.
    #[arg(long, default_value_t = 256)]
    connect_concurrency: usize,
    /// Most client connections per process; past it, worker processes share them
    /// [default: this process's open-file limit less 512].
    #[arg(long)]
    max_conns_per_process: Option<u64>,
    /// Length of each measured period (each step of a sweep).
    #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// After a period, how long to wait for deliveries to catch up before counting loss.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    drain: Duration,
    /// p99 bound of a passing step, in milliseconds.
    #[arg(long, default_value_t = 10.0)]
    p99_limit_ms: f64,
    /// Append the JSON result line to this file too.
    #[arg(long)]
    out: Option<PathBuf>,
    /// A label copied into the result (e.g. "before", "after").
    #[arg(long, default_value = "")]
    label: String,
}

impl Common {
    /// The runs of the steady workload: thoughts, or a streamed answer (`--streamed`).
    pub(crate) fn run_shape(&self) -> events::RunShape {
        if self.streamed {
            events::RunShape::streamed(self.run_len)
        } else {
            events::RunShape::thinking(self.run_len)
        }
    }
}

#[derive(Debug, Subcommand)]
enum Scenario {
    /// Hold N idle connections for a while; memory per connection fresh and after a burst.
    Idle(scenarios::IdleArgs),
    /// One period at a fixed rate.
    Steady(scenarios::RateArgs),
    /// Steps the rate up until p99 or loss breaks; reports the highest passing rate.
    Sweep(scenarios::SweepArgs),
    /// Bursty agent runs: each run a burst of events to one user.
    Bursty(scenarios::BurstyArgs),
    /// The same rate without, then with, a share of clients that stop reading.
    Slow(scenarios::SlowArgs),
    /// The same rate without, then with, clients flooding the server with frames; other
    /// users' p99 compared.
    Flood(scenarios::FloodArgs),
    /// Connection churn (a soak): cycles of connect, publish, leave; RSS and gauges must
    /// return to their baseline.
    Churn(scenarios::ChurnArgs),
    /// (internal) A worker process of a pool: spec and commands on stdin.
    #[command(hide = true)]
    Worker,
}

fn main() -> anyhow::Result<()> {
    let nofile = rlimit::increase_nofile_limit(u64::MAX).unwrap_or(1_024);
    let cli = Cli::parse();
    if let Scenario::Worker = cli.scenario {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        return rt.block_on(clients::worker_main());
    }
    let common = match &cli.scenario {
        Scenario::Idle(a) => &a.common,
        Scenario::Steady(a) => &a.common,
        Scenario::Sweep(a) => &a.common,
        Scenario::Bursty(a) => &a.common,
        Scenario::Slow(a) => &a.common,
        Scenario::Flood(a) => &a.common,
        Scenario::Churn(a) => &a.common,
        Scenario::Worker => unreachable!("handled above"),
    };
    let env = scenarios::Env::new(common, nofile)?;
    if let Some(core) = common.pin_client {
        pin(core);
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let result = rt.block_on(async {
        match cli.scenario {
            Scenario::Idle(a) => scenarios::idle(&env, a).await,
            Scenario::Steady(a) => scenarios::steady(&env, a).await,
            Scenario::Sweep(a) => scenarios::sweep(&env, a).await,
            Scenario::Bursty(a) => scenarios::bursty(&env, a).await,
            Scenario::Slow(a) => scenarios::slow(&env, a).await,
            Scenario::Flood(a) => scenarios::flood(&env, a).await,
            Scenario::Churn(a) => scenarios::churn(&env, a).await,
            Scenario::Worker => unreachable!("handled above"),
        }
    })?;
    let line = serde_json::to_string(&result)?;
    if let Some(path) = &env.common.out {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("open {}", path.display()))?;
        writeln!(f, "{line}")?;
    }
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{line}")?;
    drop(rt);
    env.shutdown();
    Ok(())
}

fn parse_meta(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => Err(format!("`{s}`: expected KEY=VALUE")),
    }
}

/// Pins the calling thread to `core`, when the machine has it.
pub(crate) fn pin(core: usize) {
    let found = core_affinity::get_core_ids()
        .unwrap_or_default()
        .into_iter()
        .find(|c| c.id == core);
    match found {
        Some(c) if core_affinity::set_for_current(c) => {}
        _ => eprintln!("warning: cannot pin a thread to core {core}"),
    }
}
