//! The `agentwire-server` binary: serves agentwire; or, as a subcommand, mints a client
//! token (`token`), follows a user's stream (`tail`), publishes events (`publish`), writes
//! a configuration file (`genconfig`), explains a token (`check-token`) or prints the
//! development API key (`dev-credentials`).
//!
//! It is built with the `cli` feature (on by default), which brings what only the binary
//! needs: clap and humantime for the command line, toml for `--config`, tracing-subscriber
//! for logs, rlimit to raise the open-file limit, mimalloc, anyhow. The library takes a
//! plain `ServerConfig` and none of these.
//!
//! It is thin otherwise: parsing, development mode, printing and exit codes. Everything
//! else is in the `agentwire_server` library, which other axum applications can mount
//! instead.
//!
//! The binary allocates with mimalloc: every event allocates and frees frames, queue slots
//! and parse buffers, and under load glibc's malloc spent a tenth of the server's CPU
//! time in its own bookkeeping and kept freed memory mapped after a burst
//! (docs/performance.md). An application that embeds the library chooses its own
//! allocator.
//!
//! mimalloc hands freed memory back to the system (`MADV_DONTNEED`) only `purge_delay`
//! (1 s) after it was freed, and only from inside one of its own calls that frees a page —
//! so a server that falls idle after a burst, making no such call, kept the pages the
//! burst freed resident (its resident set stayed flat for the idle minute after a
//! connection-churn soak). [`purge_freed_memory`] makes that call once a second: it allocates
//! and frees one block above mimalloc's largest size class, whose page is freed at once,
//! and that is where mimalloc purges what has waited out the delay. Safe code, one
//! untouched allocation a second; docs/performance.md, "Memory after traffic".

mod cli;
mod client;
mod dev;
#[cfg(test)]
mod packaging_tests;
mod publish;
mod tail;

use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use agentwire_server::Server;

use crate::cli::{CheckTokenArgs, Cli, Command, ConfigError, DEFAULT_SERVER, LogFormat, ServeArgs};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = match Cli::load(std::env::args_os()) {
        Ok(cli) => cli,
        Err(ConfigError::Cli(e)) => e.exit(),
        Err(e) => return fail(&e.into()),
    };
    match &cli.command {
        Some(Command::Token(args)) => match dev::mint_token(args) {
            Ok(token) => {
                say(&token);
                ExitCode::SUCCESS
            }
            Err(e) => fail(&e),
        },
        Some(Command::Tail(args)) => match tail::run(args).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail_with(e.exit_code(), &e),
        },
        Some(Command::Publish(args)) => match publish::run(args).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail_with(e.exit_code(), &e),
        },
        Some(Command::Genconfig) => {
            say(cli::genconfig().trim_end());
            ExitCode::SUCCESS
        }
        Some(Command::CheckToken(args)) => check_token(&cli.serve, args).await,
        Some(Command::DevCredentials(args)) => {
            let path = dev::dev_credentials_path(args.dev_credentials_file.as_deref());
            match dev::DevCredentials::load(&path) {
                Ok(creds) if args.api_key => {
                    say(&creds.api_key);
                    ExitCode::SUCCESS
                }
                Ok(creds) => {
                    say(&format!("file: {}", path.display()));
                    say(&format!("api key: {}", creds.api_key));
                    ExitCode::SUCCESS
                }
                Err(e) => fail(&e),
            }
        }
        None => match serve(cli).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail(&e),
        },
    }
}

/// Prints `error` on stderr; exit code 1.
fn fail(error: &anyhow::Error) -> ExitCode {
    eprintln!("error: {error:#}");
    ExitCode::FAILURE
}

/// Prints `error` on stderr; exit code `code`.
fn fail_with(code: u8, error: &dyn std::error::Error) -> ExitCode {
    eprintln!("error: {error}");
    ExitCode::from(code)
}

/// `check-token`: what the token says, and the verdict of the server these settings
/// describe (with the development credentials when they name no key). Exit 0 when it is
/// accepted, 1 when refused.
async fn check_token(serve: &ServeArgs, args: &CheckTokenArgs) -> ExitCode {
    let auth = match dev::check_config(serve).and_then(|c| Ok(c.auth()?)) {
        Ok(auth) => auth,
        Err(e) => return fail(&e),
    };
    // As the server does at start: a key set is fetched before the first token.
    auth.refresh_keys().await;
    let report = auth.check(args.token.trim()).await;
    let or_none = |v: &Option<String>| v.clone().unwrap_or_else(|| "(none)".into());
    say(&format!("subject (sub): {}", or_none(&report.subject)));
    say(&format!("algorithm: {}", or_none(&report.algorithm)));
    if let Some(kid) = &report.key_id {
        say(&format!("key id (kid): {kid}"));
    }
    say(&format!("issuer (iss): {}", or_none(&report.issuer)));
    say(&format!("audience (aud): {}", or_none(&report.audience)));
    for (name, at) in [
        ("issued at (iat)", report.issued_at),
        ("not before (nbf)", report.not_before),
        ("expires (exp)", report.expires_at),
    ] {
        if let Some(at) = at {
            say(&format!("{name}: {}", when(at)));
        } else if name.starts_with("expires") {
            say(&format!("{name}: (none)"));
        }
    }
    match report.verdict {
        Ok(v) => {
            say(&format!(
                "accepted: user {} until {}",
                v.user.as_str(),
                when(v.expires_at)
            ));
            ExitCode::SUCCESS
        }
        Err(e) => {
            say(&format!("refused: {e}"));
            ExitCode::FAILURE
        }
    }
}

/// A Unix time as RFC 3339, and how far from now.
fn when(secs: u64) -> String {
    let at = UNIX_EPOCH + Duration::from_secs(secs);
    let stamp = humantime::format_rfc3339_seconds(at);
    let now = SystemTime::now();
    match at.duration_since(now) {
        Ok(ahead) => format!(
            "{stamp} (in {})",
            humantime::format_duration(Duration::from_secs(ahead.as_secs()))
        ),
        Err(e) => format!(
            "{stamp} ({} ago)",
            humantime::format_duration(Duration::from_secs(e.duration().as_secs()))
        ),
    }
}

async fn serve(cli: Cli) -> anyhow::Result<()> {
    init_tracing(cli.serve.log_format);
    // Installed before the address is announced: a SIGTERM right after it must be handled.
    let stop = agentwire_server::shutdown_signal();
    let (mut config, dev_credentials) = dev::serve_config(&cli.serve)?;
    config.open_file_limit = raise_nofile_limit();
    let server = Server::bind(config).await?;
    tokio::spawn(purge_freed_memory());
    let addr = server.local_addr();
    say(&format!(
        "agentwire-server listening on {addr} (ws://{addr}/ws)"
    ));
    if let Some(path) = dev_credentials {
        for line in dev_hint(&path, addr) {
            say(&line);
        }
    }
    // Last: scripts read the address and the credentials path from the lines before.
    if server.demo_enabled() {
        say(&format!("demo page: http://{addr}/"));
    }
    server.serve(stop).await?;
    Ok(())
}

/// How often [`purge_freed_memory`] lets mimalloc purge: its own `purge_delay`.
const PURGE_INTERVAL: Duration = Duration::from_secs(1);

/// Above mimalloc's largest size class (512 KiB): a block this big has a page of its own,
/// which mimalloc frees — and purges what is due — as soon as the block is freed.
const PURGE_NUDGE_BYTES: usize = 1 << 20;

/// Every [`PURGE_INTERVAL`], allocates and frees one [`PURGE_NUDGE_BYTES`] block, never
/// touched: freeing its page is where mimalloc returns to the system the memory freed
/// at least `purge_delay` ago, which a server idle after a burst would otherwise keep
/// resident (see the crate docs). Runs until the runtime stops.
async fn purge_freed_memory() {
    let mut tick = tokio::time::interval(PURGE_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        // black_box: an allocation that is freed unused may otherwise be optimised away.
        drop(std::hint::black_box(Vec::<u8>::with_capacity(
            PURGE_NUDGE_BYTES,
        )));
    }
}

/// The lines that tell a developer how to reach this development server from another
/// terminal: the full commands, with the flags that differ from their defaults.
fn dev_hint(path: &Path, addr: std::net::SocketAddr) -> Vec<String> {
    let mut flags = String::new();
    if path != dev::default_dev_credentials_path() {
        flags.push_str(&format!(" --dev-credentials-file '{}'", path.display()));
    }
    let server = format!("http://{addr}");
    let mut at = flags.clone();
    if server != DEFAULT_SERVER {
        at.push_str(&format!(" --server {server}"));
    }
    let me = invocation();
    vec![
        format!("development credentials: {}", path.display()),
        format!("  mint a token:    {me} token --user alice{flags}"),
        format!("  watch a stream:  {me} tail --user alice{at}"),
        format!(
            "  publish:         {me} publish --user alice --type agent_started \
             --run-id r1{at}"
        ),
        format!("  the API key:     {me} dev-credentials --api-key{flags}"),
    ]
}

/// How to run this binary again from another terminal: `cargo run` when it was built in a
/// checkout's `target/debug` or `target/release` (the README's way), else as it was
/// invoked (`agentwire-server` on `PATH`, or its path).
fn invocation() -> String {
    let exe = std::env::current_exe().ok();
    let profile = exe
        .as_deref()
        .and_then(Path::parent)
        .filter(|dir| dir.parent().and_then(Path::file_name) == Some("target".as_ref()))
        .and_then(Path::file_name)
        .and_then(|p| p.to_str());
    match profile {
        Some("release") => "cargo run -q --release -p agentwire-server --".into(),
        Some("debug") => "cargo run -q -p agentwire-server --".into(),
        _ => std::env::args()
            .next()
            .filter(|a| !a.is_empty())
            .unwrap_or_else(|| "agentwire-server".into()),
    }
}

/// Installs the `tracing` subscriber: `RUST_LOG` filters (default `info`), lines go to
/// stderr as text or JSON. Text is coloured only on a terminal (and without `NO_COLOR`):
/// a log file or journald gets plain lines.
fn init_tracing(format: LogFormat) {
    use std::io::IsTerminal;
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let colour = std::io::stderr().is_terminal()
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit and returns the soft limit now in
/// force (the server clamps `--max-connections` to it), or `None` when it cannot be read.
fn raise_nofile_limit() -> Option<u64> {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => Some(n),
        Err(e) => {
            tracing::warn!(error = %e, "cannot raise the open-file limit");
            None
        }
    }
}

/// One line on stdout: the bound address and the credentials path are for people and
/// scripts (tests parse them), not log lines.
#[allow(
    clippy::print_stdout,
    reason = "the binary's output for people and scripts"
)]
fn say(line: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}
