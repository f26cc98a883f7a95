//! End to end: the AG-UI projection (docs/ag-ui.md). Runs `tests/browser/agui.test.mjs`,
//! which reads `GET /v1/stream?format=ag-ui` with node and validates every event with
//! `@ag-ui/core`'s own schemas and AG-UI's order rules (the demo run, a failing run, a
//! stream resumed mid-run, a streamed answer and one resumed inside it, the end of a
//! stream); and reads `/ws?format=ag-ui` here.
//!
//! The node test needs `node` and `npm ci` in `tests/browser` (`.ci/run` does both);
//! without them it fails under `CI=true` and otherwise says why and passes.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use agentwire::protocol::{Custom, Event};
use agentwire_e2e::{
    API_KEY, Client, TestServer, agent_started, command_succeeds, prerequisite, run_bounded,
    workspace_root,
};
use tokio_tungstenite::tungstenite::Message;

const NODE_TIMEOUT: Duration = Duration::from_secs(60);

fn missing_prerequisite(browser_dir: &Path) -> Option<String> {
    if !command_succeeds("node", &["--version"]) {
        return Some("`node` is not on PATH (install Node.js 20+)".to_owned());
    }
    if !browser_dir
        .join("node_modules/@ag-ui/core/package.json")
        .is_file()
    {
        return Some(format!(
            "@ag-ui/core is not installed: run `npm ci` in {}",
            browser_dir.display()
        ));
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_projected_event_parses_with_ag_ui_core_and_keeps_its_order() {
    let root = workspace_root();
    let browser_dir = root.join("tests/browser");
    if !prerequisite(missing_prerequisite(&browser_dir), "the AG-UI node test") {
        return;
    }
    let server = TestServer::start().await;
    let users = [
        "agui-demo",
        "agui-fail",
        "agui-resume",
        "agui-text",
        "agui-text-resume",
        "agui-close",
    ];
    let tokens: serde_json::Map<String, serde_json::Value> = users
        .iter()
        .map(|u| ((*u).to_owned(), server.token(u).into()))
        .collect();
    let mut node = Command::new("node");
    node.current_dir(&browser_dir)
        .arg("--test")
        .arg("agui.test.mjs")
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
    assert!(ok, "the AG-UI node test failed:\n{output}");
    assert!(!output.contains("# SKIP"), "tests were skipped:\n{output}");
}

/// The next frame, which must be a JSON text frame.
async fn next(c: &mut Client) -> serde_json::Value {
    match tokio::time::timeout(agentwire_e2e::WAIT, c.next_message())
        .await
        .expect("a frame within the wait bound")
    {
        Some(Ok(Message::Text(t))) => serde_json::from_str(t.as_str()).expect("JSON"),
        other => panic!("expected a text frame, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_asks_for_ag_ui_with_the_format_query() {
    let server = TestServer::start().await;
    let mut c = server
        .try_connect(server.request(&server.token("alice"), "?format=ag-ui"))
        .await
        .expect("connects");
    let hello = next(&mut c).await;
    assert_eq!(hello["type"], "CUSTOM");
    assert_eq!(hello["name"], "agentwire.connection_established");
    server.emit("alice", agent_started("r1")).await;
    let started = next(&mut c).await;
    assert_eq!(started["type"], "RUN_STARTED");
    assert_eq!(started["runId"], "r1");
    assert_eq!(started["threadId"], "t1");
    assert_eq!(started["metadata"]["agentwire"]["seq"], 1);
    let custom = Event::new(
        None,
        None,
        Custom {
            name: "progress".into(),
            value: serde_json::json!({"pct": 50}),
            extra: Default::default(),
        },
    );
    server.emit("alice", custom).await;
    let c2 = next(&mut c).await;
    assert_eq!(
        (c2["type"].clone(), c2["name"].clone()),
        ("CUSTOM".into(), "progress".into())
    );
    // An unknown format is refused before the upgrade.
    let (status, body) = server
        .refused(server.request(&server.token("alice"), "?format=xml"))
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("\"field\":\"format\""), "{body}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_asks_for_ag_ui_with_its_subprotocol() {
    let server = TestServer::start().await;
    let mut req = server.request(&server.token("alice"), "");
    req.headers_mut().insert(
        "sec-websocket-protocol",
        agentwire::protocol::AGUI_SUBPROTOCOL
            .parse()
            .expect("a header value"),
    );
    let mut c = server.try_connect(req).await.expect("connects");
    let hello = next(&mut c).await;
    assert_eq!(hello["name"], "agentwire.connection_established");
    server.emit("alice", agent_started("r1")).await;
    assert_eq!(next(&mut c).await["type"], "RUN_STARTED");
    server.stop().await;
}
