//! The `agentwire-server` binary: serves agentwire, or (`token`) mints a client token.
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

mod cli;
mod dev;

use agentwire_server::Server;

use crate::cli::{Cli, Command, ConfigError, LogFormat};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = match Cli::load(std::env::args_os()) {
        Ok(cli) => cli,
        Err(ConfigError::Cli(e)) => e.exit(),
        Err(e) => return Err(e.into()),
    };
    match &cli.command {
        Some(Command::Token(args)) => {
            let token = dev::mint_token(args)?;
            say(&token);
            Ok(())
        }
        None => serve(cli).await,
    }
}

async fn serve(cli: Cli) -> anyhow::Result<()> {
    init_tracing(cli.serve.log_format);
    // Installed before the address is announced: a SIGTERM right after it must be handled.
    let stop = agentwire_server::shutdown_signal();
    let (mut config, dev_credentials) = dev::serve_config(&cli.serve)?;
    config.open_file_limit = raise_nofile_limit();
    let server = Server::bind(config).await?;
    let addr = server.local_addr();
    say(&format!(
        "agentwire-server listening on {addr} (ws://{addr}/ws)"
    ));
    if let Some(path) = dev_credentials {
        say(&format!(
            "development credentials: {} (mint a token: agentwire-server token --user alice)",
            path.display()
        ));
    }
    // Last: scripts read the address and the credentials path from the lines before.
    if server.demo_enabled() {
        say(&format!("demo page: http://{addr}/"));
    }
    server.serve(stop).await?;
    Ok(())
}

/// Installs the `tracing` subscriber: `RUST_LOG` filters (default `info`), lines go to
/// stderr as text or JSON.
fn init_tracing(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
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
