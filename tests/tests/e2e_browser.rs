//! The demo page and `/client.js` in a real browser: starts a server in development mode
//! (demo on, development tokens minted for the browser on this machine) and runs
//! `tests/browser/demo.test.mjs`, which drives Debian's Chromium with playwright-core: the
//! demo's delivery guarantees (issue 7), and a run that stalls shown ended by the server as
//! `stalled` (issue 18). Screenshots land in `target/browser-artifacts/`.
//!
//! Also runs `tests/browser/sse.test.mjs`: a page's own `EventSource` on `/v1/stream`, and
//! the client module with `transport: "sse"`, each receiving a run and resuming after the
//! server drops the connection mid-run.
//!
//! Also runs the npm package's tests, `clients/js/tests/` (the client module under node:
//! against a scripted WebSocket for the close codes a real server is slow to produce,
//! under fake timers, and on node's own WebSocket against this server).
//!
//! Needs `node`, `npm ci` in `tests/browser` and `/usr/bin/chromium` (`.ci/run` installs
//! them). Without them the tests fail under `CI=true` and otherwise say why and pass.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use agentwire::server::DemoMode;
use agentwire_e2e::{
    API_KEY, TestServer, command_succeeds, prerequisite, run_bounded, workspace_root,
};

/// The browser test bounds itself at 55 s; this is the backstop.
const NODE_TIMEOUT: Duration = Duration::from_secs(90);

/// A publish-only API key of the server the client package tests run against.
const PUBLISH_KEY: &str = "agentwire-e2e-publish-key";

fn chromium_path() -> PathBuf {
    std::env::var_os("CHROMIUM_PATH")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"))
}

fn missing_node() -> Option<String> {
    (!command_succeeds("node", &["--version"]))
        .then(|| "`node` is not on PATH (install Node.js 20+)".to_owned())
}

/// What is missing to run the browser test, if anything.
fn missing_prerequisite(browser_dir: &Path) -> Option<String> {
    if let Some(why) = missing_node() {
        return Some(why);
    }
    if !browser_dir
        .join("node_modules/playwright-core/package.json")
        .is_file()
    {
        return Some(format!(
            "playwright-core is not installed: run `npm ci` in {}",
            browser_dir.display()
        ));
    }
    let chromium = chromium_path();
    if !chromium.is_file() {
        return Some(format!(
            "{} is missing: `apt-get install -y chromium` (or set CHROMIUM_PATH)",
            chromium.display()
        ));
    }
    None
}

/// Whether this node has a global `WebSocket` (Node 22+; Node 20 only with
/// `--experimental-websocket`).
fn node_has_websocket() -> bool {
    command_succeeds(
        "node",
        &[
            "-e",
            "process.exit(typeof WebSocket === 'function' ? 0 : 1)",
        ],
    )
}

/// The npm package's tests (`clients/js/tests/`, node's test runner): the client module
/// against a scripted WebSocket (close codes, handshake failures, backoff, resume,
/// duplicates, replay_gap), its timers under fake time (issue 19: tokens living longer
/// than `setTimeout` can wait or shorter than the refresh margin, an error with no close),
/// the React example's store, and the client on node's own WebSocket against a local
/// server that refuses handshakes and against this agentwire server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_package_tests_pass() {
    let root = workspace_root();
    if !prerequisite(missing_node(), "the client package tests") {
        return;
    }
    let server = TestServer::start_with(|c| c.publish_api_keys = vec![PUBLISH_KEY.into()]).await;
    let user = "js-client";
    let mut node = Command::new("node");
    node.current_dir(&root)
        .arg("--test")
        .arg(root.join("clients/js/tests"))
        .env("AGENTWIRE_URL", server.ws_url(""))
        .env("AGENTWIRE_USER", user)
        .env("AGENTWIRE_TOKEN", server.token(user))
        .env("AGENTWIRE_API_KEY", PUBLISH_KEY);
    if !node_has_websocket() {
        node.env("NODE_OPTIONS", "--experimental-websocket");
    }
    let (ok, output) = tokio::task::spawn_blocking(move || run_bounded(node, NODE_TIMEOUT))
        .await
        .expect("the node runner");
    eprintln!("{output}");
    server.stop().await;
    assert!(ok, "the client package tests failed:\n{output}");
    // The tests against this server ran, not skipped.
    assert!(
        !output.contains("# SKIP"),
        "some client package tests were skipped:\n{output}"
    );
}

/// Runs `tests/browser/demo.test.mjs` with `--cases cases` against a server in development
/// mode with the demo on, and fails with its output unless every check passed.
async fn run_demo_page_cases(cases: &str) {
    let root = workspace_root();
    let browser_dir = root.join("tests/browser");
    if !prerequisite(missing_prerequisite(&browser_dir), "the browser test") {
        return;
    }

    let server = TestServer::start_with(|c| {
        c.dev_mode = true;
        c.demo = DemoMode::Auto;
    })
    .await;

    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    let artifacts = target.join("browser-artifacts");
    let mut node = Command::new("node");
    node.current_dir(&root)
        .arg(browser_dir.join("demo.test.mjs"))
        .arg("--url")
        .arg(format!("http://{}", server.addr))
        .arg("--api-key")
        .arg(API_KEY)
        .arg("--artifacts")
        .arg(&artifacts)
        .arg("--chromium")
        .arg(chromium_path())
        .arg("--cases")
        .arg(cases);
    let (ok, output) = tokio::task::spawn_blocking(move || run_bounded(node, NODE_TIMEOUT))
        .await
        .expect("the node runner");
    eprintln!("{output}");
    server.stop().await;
    assert!(ok, "the browser test ({cases}) failed:\n{output}");
    assert!(
        output.contains(" passed, 0 failed"),
        "the browser test ({cases}) did not report its checks:\n{output}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_page_in_chromium_resumes_after_a_disconnect_and_isolates_users() {
    run_demo_page_cases("resume").await;
}

/// Issue 18: the demo page shows a stalled run ending. The page's "Start a run that
/// stalls" button starts a run that goes silent after `tool_executing`; the server's
/// watchdog ends it with `agent_error` code `stalled`, which the timeline shows as "Run
/// stalled: ended by the server" (code `stalled`, retryable), with no event of that run
/// after it (a later run that completes is the barrier).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_page_in_chromium_shows_a_stalled_run_ended_by_the_server() {
    run_demo_page_cases("stall").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_source_in_chromium_resumes_a_run_after_a_dropped_connection() {
    let root = workspace_root();
    let browser_dir = root.join("tests/browser");
    if !prerequisite(missing_prerequisite(&browser_dir), "the SSE browser test") {
        return;
    }
    let server = TestServer::start().await;
    let tokens: serde_json::Map<String, serde_json::Value> = ["sse-raw", "sse-client"]
        .iter()
        .map(|u| ((*u).to_owned(), server.token(u).into()))
        .collect();
    let mut node = Command::new("node");
    node.current_dir(&root)
        .arg(browser_dir.join("sse.test.mjs"))
        .arg("--chromium")
        .arg(chromium_path())
        .env("AGENTWIRE_HTTP", format!("http://{}", server.addr))
        .env("AGENTWIRE_API_KEY", API_KEY)
        .env(
            "AGENTWIRE_TOKENS",
            serde_json::Value::Object(tokens).to_string(),
        );
    let (ok, output) = tokio::task::spawn_blocking(move || run_bounded(node, NODE_TIMEOUT))
        .await
        .expect("the node runner");
    eprintln!("{output}");
    server.stop().await;
    assert!(ok, "the SSE browser test failed:\n{output}");
}
