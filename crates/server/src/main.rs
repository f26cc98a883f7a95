//! The `agentwire-server` binary: serves agentwire, or (`token`) mints a client token.
//!
//! It is thin: parsing, printing and exit codes. Everything else is in the
//! `agentwire_server` library, which other axum applications can mount instead.
//!
//! The binary allocates with mimalloc: every event allocates and frees frames, queue slots
//! and parse buffers, and under load glibc's malloc spent a tenth of the server's CPU
//! time in its own bookkeeping and kept freed memory mapped after a burst
//! (docs/performance.md). An application that embeds the library chooses its own
//! allocator.

use agentwire_server::{Cli, Command, ConfigError, Server};

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
            let token = agentwire_server::mint_token(args)?;
            say(&token);
            Ok(())
        }
        Some(_) => anyhow::bail!("unknown command"),
        None => serve(cli).await,
    }
}

async fn serve(cli: Cli) -> anyhow::Result<()> {
    agentwire_server::init_tracing(cli.config.log_format);
    // Installed before the address is announced: a SIGTERM right after it must be handled.
    let stop = agentwire_server::shutdown_signal();
    let server = Server::bind(cli.config).await?;
    let addr = server.local_addr();
    say(&format!(
        "agentwire-server listening on {addr} (ws://{addr}/ws)"
    ));
    if let Some(path) = server.dev_credentials_path() {
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
