//! The demo page and `/client.js` in a real browser: starts a server in development mode
//! (demo on, development tokens minted for the browser on this machine) and runs
//! `tests/browser/demo.test.mjs`, which drives Debian's Chromium with playwright-core
//! (issue 7). Screenshots land in `target/browser-artifacts/`.
//!
//! Also runs `tests/browser/client.test.mjs`: the client module under node against a
//! scripted WebSocket, for the close codes a real server is slow to produce.
//!
//! Needs `node`, `npm ci` in `tests/browser` and `/usr/bin/chromium` (`.ci/run` installs
//! them). Without them the tests fail under `CI=true` and otherwise say why and pass.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use agentwire::server::DemoMode;
use agentwire_e2e::{API_KEY, TestServer, can_run};

/// The browser test bounds itself at 55 s; this is the backstop.
const NODE_TIMEOUT: Duration = Duration::from_secs(90);

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ sits in the workspace")
        .to_owned()
}

fn chromium_path() -> PathBuf {
    std::env::var_os("CHROMIUM_PATH")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"))
}

fn missing_node() -> Option<String> {
    let node = Command::new("node")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    (!node.is_ok_and(|s| s.success()))
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

fn temp_dir() -> PathBuf {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let dir = std::env::temp_dir().join(format!(
        "agentwire-e2e-browser-{}-{nanos}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

/// Runs `cmd` to its end, killing it after `limit`; returns (success, stdout + stderr).
fn run_bounded(mut cmd: Command, limit: Duration) -> (bool, String) {
    let out_path = temp_dir().join("node-output.txt");
    let out = std::fs::File::create(&out_path).expect("output file");
    let err = out.try_clone().expect("output file");
    let mut child = cmd.stdout(out).stderr(err).spawn().expect("node starts");
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for node") {
            break Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let text = std::fs::read_to_string(&out_path).unwrap_or_default();
    let _ = std::fs::remove_dir_all(out_path.parent().expect("temp dir"));
    match status {
        Some(s) => (s.success(), text),
        None => (
            false,
            format!("{text}\n(killed after {} s)", limit.as_secs()),
        ),
    }
}

/// `/client.js` under node against a scripted WebSocket: the close-code table, handshake
/// failures, backoff, resume, duplicates, replay_gap (`tests/browser/client.test.mjs`).
#[test]
fn client_module_follows_the_protocol() {
    let root = workspace_root();
    if !can_run(missing_node(), "the client module test") {
        return;
    }
    let mut node = Command::new("node");
    node.current_dir(&root)
        .arg("--test")
        .arg(root.join("tests/browser/client.test.mjs"));
    let (ok, output) = run_bounded(node, NODE_TIMEOUT);
    eprintln!("{output}");
    assert!(ok, "the client module test failed:\n{output}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_page_in_chromium_resumes_after_a_disconnect_and_isolates_users() {
    let root = workspace_root();
    let browser_dir = root.join("tests/browser");
    if !can_run(missing_prerequisite(&browser_dir), "the browser test") {
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
        .arg(chromium_path());
    let (ok, output) = tokio::task::spawn_blocking(move || run_bounded(node, NODE_TIMEOUT))
        .await
        .expect("the node runner");
    eprintln!("{output}");
    server.stop().await;
    assert!(ok, "the browser test failed:\n{output}");
}
