//! Every ```` ```sh ```` block of README.md and docs/protocol.md works as pasted (issue
//! 19): each file's blocks run in order, in one `bash -e` (so a variable one block sets
//! is there for the next), against a real development server started by this test.
//!
//! What stands in for what, as README.md says:
//! - a block that only starts the server (`cargo run --release -p agentwire-server`, no
//!   subcommand) is this test's server;
//! - `cargo run -q --release -p agentwire-server --` and `cargo run --release -p
//!   agentwire-server --` are the binary under test, and so is `agentwire-server` (its
//!   directory comes first on `PATH`);
//! - `127.0.0.1:8080` is the test server's address (and `AGENTWIRE_SERVER` names it, for
//!   `tail` and `publish` without `--server`); `AGENTWIRE_DEV_CREDENTIALS_FILE` and `HOME`
//!   are the test's own;
//! - a block that runs `tail` runs in the background, and must print every event the later
//!   blocks published for its user, `agent_completed` included;
//! - `cargo xtask` blocks are CI's own (`cargo xtask check` runs this test).
//!
//! Needs `bash` and `curl`: without them it prints `skipped: …` and passes, and under
//! `CI=true` it fails.

mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Instant;

use support::{BIN, ServerProcess, WAIT, bin, lines_of, temp_dir};

/// How the documents spell the binary, longest first.
const CARGO_RUN: [&str; 2] = [
    "cargo run -q --release -p agentwire-server --",
    "cargo run --release -p agentwire-server --",
];
/// The block that starts the server.
const SERVER_BLOCK: &str = "cargo run --release -p agentwire-server";
/// The address the documents use.
const DOC_ADDR: &str = "127.0.0.1:8080";

/// The ```sh blocks of `doc`, as (line of the fence, text).
fn sh_blocks(doc: &str) -> Vec<(usize, String)> {
    let mut blocks = Vec::new();
    let mut current: Option<(usize, String)> = None;
    let mut other = false;
    for (i, line) in doc.lines().enumerate() {
        if let Some(tag) = line.trim_start().strip_prefix("```") {
            match (current.take(), other) {
                (Some(block), _) => blocks.push(block),
                (None, true) => other = false,
                (None, false) if tag.trim() == "sh" => current = Some((i + 1, String::new())),
                (None, false) => other = true,
            }
            continue;
        }
        if let Some((_, text)) = &mut current {
            text.push_str(line);
            text.push('\n');
        }
    }
    assert!(current.is_none(), "a ```sh block is not closed");
    blocks
}

fn missing_tools() -> Option<String> {
    for tool in ["bash", "curl"] {
        let ok = Command::new(tool)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            return Some(format!("`{tool}` is not installed"));
        }
    }
    None
}

/// The block as this test runs it.
fn substitute(block: &str, addr: SocketAddr) -> String {
    let mut text = block.to_owned();
    for spelling in CARGO_RUN {
        text = text.replace(spelling, "agentwire-server");
    }
    text.replace(DOC_ADDR, &addr.to_string())
}

/// `bash` with the test's environment: the binary first on `PATH`, the server's address
/// and credentials.
fn shell(dir: &Path, addr: SocketAddr, creds: &Path) -> Command {
    let bin_dir = Path::new(BIN).parent().expect("the binary's directory");
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut paths = vec![bin_dir.to_path_buf()];
    paths.extend(std::env::split_paths(&path));
    let mut c = Command::new("bash");
    c.env_clear()
        .env("PATH", std::env::join_paths(paths).expect("PATH"))
        .env("HOME", dir)
        .env("AGENTWIRE_DEV_CREDENTIALS_FILE", creds)
        .env("AGENTWIRE_SERVER", format!("http://{addr}"))
        .env("RUST_LOG", "warn");
    c
}

/// What one document's blocks did.
struct Ran {
    /// The script's stdout.
    out: String,
    /// The lines each background `tail` printed.
    tails: Vec<Vec<String>>,
}

/// Runs the ```sh blocks of `name` (relative to the workspace) against a new development
/// server; panics with the script and its output when a block fails.
fn run_document(name: &str, expected_tail_events: usize) -> Ran {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let doc = std::fs::read_to_string(root.join(name)).expect("the document");
    let blocks = sh_blocks(&doc);
    assert!(!blocks.is_empty(), "{name} has no sh block");

    let dir = temp_dir(&format!("docs-{}", name.replace('/', "-")));
    let creds = dir.join("dev-credentials.json");
    let mut cmd = bin();
    cmd.args(["--listen", "127.0.0.1:0", "--dev-credentials-file"])
        .arg(&creds);
    let server = ServerProcess::spawn(cmd).expect("a development server");
    let addr = server.addr;

    let mut script = String::from("set -e -o pipefail\n");
    let mut tails = Vec::new();
    for (line, block) in &blocks {
        let trimmed = block.trim();
        if trimmed == SERVER_BLOCK || trimmed == "agentwire-server" {
            continue;
        }
        if trimmed.contains("cargo xtask") {
            continue;
        }
        let text = substitute(block, addr);
        assert!(
            !text.contains("cargo run"),
            "{name}:{line}: a `cargo run` this test does not know how to run:\n{block}"
        );
        if text.contains("agentwire-server tail") {
            tails.push(spawn_tail(shell(&dir, addr, &creds), &text));
            continue;
        }
        script.push_str(&format!("# {name}:{line}\n{text}\n"));
    }
    let out = shell(&dir, addr, &creds)
        .arg("-c")
        .arg(&script)
        .output()
        .expect("run bash");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{name}: the examples failed ({}).\nscript:\n{script}\nstdout:\n{stdout}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let tails = tails
        .into_iter()
        .map(|(mut child, first, lines)| {
            let mut got = vec![first];
            let deadline = Instant::now() + WAIT;
            while got
                .iter()
                .filter(|l: &&String| l.contains("\"seq\":"))
                .count()
                < expected_tail_events
            {
                let left = deadline.saturating_duration_since(Instant::now());
                match lines.recv_timeout(left) {
                    Ok(line) => got.push(line),
                    Err(_) => break,
                }
            }
            let _ = child.kill();
            let _ = child.wait();
            got
        })
        .collect();
    drop(server);
    let _ = std::fs::remove_dir_all(dir);
    Ran { out: stdout, tails }
}

/// A background `tail`: its process, its first line, and the lines after it.
type Background = (std::process::Child, String, mpsc::Receiver<String>);

fn spawn_tail(mut shell: Command, text: &str) -> Background {
    let mut child = shell
        .arg("-c")
        .arg(format!("exec {}", text.trim()))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn tail");
    let rx = lines_of(child.stdout.take().expect("stdout"));
    // The tail is connected once it printed its first frame.
    let first = rx.recv_timeout(WAIT).expect("tail connects");
    assert!(first.contains("connection_established"), "{first}");
    (child, first, rx)
}

fn skip_or_fail() -> bool {
    if let Some(reason) = missing_tools() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI=true and {reason}"
        );
        eprintln!("skipped: docs examples: {reason}");
        return true;
    }
    false
}

#[test]
fn the_readme_quickstart_streams_a_published_run() {
    if skip_or_fail() {
        return;
    }
    // The curl run (six events) and the CLI's (two).
    let ran = run_document("README.md", 8);
    assert_eq!(ran.tails.len(), 1, "the quickstart tails one stream");
    let frames: Vec<serde_json::Value> = ran.tails[0]
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l}: {e}")))
        .collect();
    let kinds: Vec<&str> = frames.iter().filter_map(|f| f["type"].as_str()).collect();
    assert_eq!(
        kinds,
        [
            "connection_established",
            "agent_started",
            "agent_thinking",
            "tool_executing",
            "tool_completed",
            "agent_thinking",
            "agent_completed",
            "agent_started",
            "agent_completed"
        ],
        "{:#?}",
        ran.tails[0]
    );
    assert!(frames.iter().skip(1).all(|f| f["run_id"].is_string()));
    assert!(ran.out.contains("\"results\""), "{}", ran.out);
}

#[test]
fn the_protocol_documents_curl_examples_succeed() {
    if skip_or_fail() {
        return;
    }
    let ran = run_document("docs/protocol.md", 0);
    // Three publishes and a history read, each a success the script printed.
    assert_eq!(ran.out.matches("\"results\"").count(), 3, "{}", ran.out);
    assert!(ran.out.contains("\"user_id\":\"u1\""), "{}", ran.out);
    assert!(ran.out.contains("\"tool_executing\""), "{}", ran.out);
}
