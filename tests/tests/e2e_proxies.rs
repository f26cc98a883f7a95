//! End to end through the reverse proxies of docs/operations.md §5: a server, then nginx
//! and HAProxy as processes of their own, each run from its example in `packaging/` with
//! only the ports, the upstream and the TLS lines replaced (a plain listener stands in for
//! TLS). Through each: a WebSocket client receives a published event and resumes after a
//! drop; an event stream (`/v1/stream`) receives each event as it is published (event 1
//! before event 2 is published: the proxy does not buffer), heartbeat comments, and
//! resumes with `Last-Event-ID`; `/metrics` stays private.
//!
//! Also checks that the configurations in docs/operations.md are the files' text.
//!
//! Needs `nginx` and `haproxy` (`.ci/run` installs them). Without them the tests fail under
//! `CI=true` and otherwise say why and pass.

use std::net::SocketAddr;
use std::time::Duration;

use agentwire::protocol::ServerFrame;
use agentwire_e2e::proxy::{ProxyProcess, missing_program, packaged};
use agentwire_e2e::sse::{SseClient, open};
use agentwire_e2e::{
    TestServer, WAIT, connect_to, custom, custom_value, http_request, prerequisite, token_ttl,
    workspace_root,
};
use tokio::time::Instant;

/// The server's heartbeat: short, so that comments flow within the test.
const HEARTBEAT: Duration = Duration::from_millis(200);

async fn server() -> TestServer {
    TestServer::start_with(|c| c.heartbeat_interval = HEARTBEAT).await
}

/// Opens `/v1/stream` through `addr` as `user` with `headers`, and reads
/// `connection_established`.
async fn stream(
    addr: SocketAddr,
    user: &str,
    headers: &[(&str, &str)],
) -> (SseClient, agentwire::protocol::ConnectionEstablished) {
    let auth = format!("Bearer {}", token_ttl(user, 3600));
    let mut all = vec![("Authorization", auth.as_str())];
    all.extend_from_slice(headers);
    let mut c = match open(addr, "/v1/stream", &all).await {
        Ok(c) => c,
        Err(r) => panic!("the stream was refused: {} {}", r.status, r.body),
    };
    let m = c.next().await;
    match m.frame() {
        ServerFrame::ConnectionEstablished(e) => (c, e),
        other => panic!("expected connection_established, got {other:?}"),
    }
}

/// Everything a proxy in front of `server`, listening on `addr`, must carry. `who` names
/// the proxy in failures; each proxy gets users of its own.
async fn carries_websockets_and_event_streams(server: &TestServer, addr: SocketAddr, who: &str) {
    // WebSocket: an event, a drop, a resume from the last seq seen.
    let ws_user = format!("{who}-ws");
    let mut ws = connect_to(addr, &ws_user, "").await;
    let epoch = ws.established.clone().expect("established").epoch;
    server.emit(&ws_user, custom(1)).await;
    let e = ws.event().await;
    assert_eq!((e.seq.get(), custom_value(&e)), (1, Some(1)), "{who}");
    drop(ws); // no close handshake
    for n in 2..=3 {
        server.emit(&ws_user, custom(n)).await;
    }
    let mut ws = connect_to(addr, &ws_user, &format!("?last_seq=1&epoch={epoch}")).await;
    let hello = ws.established.clone().expect("established");
    assert!(hello.resumed, "{who}: {hello:?}");
    for n in 2..=3u64 {
        let e = ws.event().await;
        assert_eq!((e.seq.get(), custom_value(&e)), (n, Some(n)), "{who}");
    }
    ws.close().await;

    // Event stream: each event arrives before the next one is published.
    let sse_user = format!("{who}-sse");
    let (mut c, hello) = stream(addr, &sse_user, &[]).await;
    let mut last_id = None;
    for n in 1..=3u64 {
        server.emit(&sse_user, custom(n)).await;
        let (e, id) = c.event().await;
        assert_eq!((e.seq.get(), custom_value(&e)), (n, Some(n)), "{who}");
        assert_eq!(id, Some(format!("{}:{n}", hello.epoch.as_str())), "{who}");
        last_id = id;
    }
    // Heartbeat comments come through while no event flows.
    let deadline = Instant::now() + WAIT;
    while c.comments() < 2 {
        assert!(
            Instant::now() < deadline,
            "{who}: {} heartbeat comments within the wait bound",
            c.comments()
        );
        if let Some(m) = c.next_within(HEARTBEAT).await {
            panic!("{who}: a message while no event was published: {m:?}");
        }
    }
    drop(c);
    for n in 4..=5 {
        server.emit(&sse_user, custom(n)).await;
    }
    let last_id = last_id.expect("events carry ids");
    let (mut again, resumed) = stream(addr, &sse_user, &[("Last-Event-ID", &last_id)]).await;
    assert!(resumed.resumed, "{who}: {resumed:?}");
    assert_eq!(resumed.epoch, hello.epoch, "{who}");
    for n in 4..=5u64 {
        let (e, id) = again.event().await;
        assert_eq!((e.seq.get(), custom_value(&e)), (n, Some(n)), "{who}");
        assert_eq!(id, Some(format!("{}:{n}", hello.epoch.as_str())), "{who}");
    }
    drop(again);

    // The operators' endpoint is not served through the proxy.
    let r = http_request(addr, "GET", "/metrics", None).await;
    assert_eq!(r.status, 404, "{who}: /metrics through the proxy");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_nginx_example_carries_websockets_and_event_streams() {
    if !prerequisite(missing_program("nginx", "-v"), "nginx example") {
        return;
    }
    let server = server().await;
    let mut nginx = ProxyProcess::nginx(server.addr);
    nginx.wait_ready().await;
    carries_websockets_and_event_streams(&server, nginx.addr, "nginx").await;
    drop(nginx);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_haproxy_example_carries_websockets_and_event_streams() {
    if !prerequisite(missing_program("haproxy", "-v"), "HAProxy example") {
        return;
    }
    let server = server().await;
    let mut haproxy = ProxyProcess::haproxy(server.addr);
    haproxy.wait_ready().await;
    carries_websockets_and_event_streams(&server, haproxy.addr, "haproxy").await;
    drop(haproxy);
    server.stop().await;
}

/// The fenced block of `lang` in `doc` that follows the line naming `file`.
fn block_after(doc: &str, file: &str, lang: &str) -> String {
    let at = doc
        .find(&format!("`{file}`"))
        .unwrap_or_else(|| panic!("docs/operations.md names {file}"));
    let fence = format!("```{lang}\n");
    let start = doc[at..]
        .find(&fence)
        .map(|i| at + i + fence.len())
        .unwrap_or_else(|| panic!("a ```{lang} block after {file}"));
    let end = doc[start..]
        .find("```\n")
        .map(|i| start + i)
        .expect("the block ends");
    doc[start..end].to_owned()
}

#[test]
fn the_operations_guide_shows_the_packaged_proxy_configurations() {
    let doc = std::fs::read_to_string(workspace_root().join("docs/operations.md"))
        .expect("docs/operations.md");
    for (file, lang) in [
        ("nginx/agentwire.conf", "nginx"),
        ("haproxy/agentwire.cfg", "haproxy"),
    ] {
        assert_eq!(
            block_after(&doc, &format!("packaging/{file}"), lang),
            packaged(file),
            "docs/operations.md's {lang} block differs from packaging/{file}"
        );
    }
}
