//! The demo's HTTP surface and `/client.js` without a browser (issue 7): which mode serves
//! what, development tokens, simulated runs through the bridge for the token's user only,
//! cancelling a run, the stats endpoint. The browser side is `e2e_browser.rs`.

use std::time::Duration;

use agentwire::protocol::{EventData, EventType};
use agentwire::server::{DemoMode, ServerConfig};
use agentwire_e2e::{Client, HttpResponse, Received, TestServer, http_send, metric};

/// A server in development mode (what `agentwire-server --dev` or a loopback address
/// without a secret gives): the demo's `auto` turns on and development tokens are minted.
async fn dev_server(demo: DemoMode) -> TestServer {
    TestServer::start_with(move |c: &mut ServerConfig| {
        c.dev_mode = true;
        c.demo = demo;
    })
    .await
}

async fn post(server: &TestServer, path: &str, bearer: Option<&str>, body: &str) -> HttpResponse {
    let auth = bearer.map(|t| format!("Bearer {t}"));
    let mut headers = vec![("Content-Type", "application/json")];
    if let Some(a) = &auth {
        headers.push(("Authorization", a.as_str()));
    }
    http_send(server.addr, "POST", path, &headers, body.as_bytes()).await
}

async fn dev_token(server: &TestServer, user: &str) -> String {
    let r = post(
        server,
        "/demo/token",
        None,
        &serde_json::json!({ "user_id": user }).to_string(),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let body = r.json();
    assert_eq!(body["user_id"], user);
    body["token"].as_str().expect("a token").to_owned()
}

/// Connects with `token`, a development token.
async fn connect_with(server: &TestServer, token: &str) -> Client {
    let mut client = server
        .try_connect(server.request(token, ""))
        .await
        .expect("connects with a development token");
    client.read_established().await;
    client
}

async fn start_run(server: &TestServer, token: &str, pace_ms: u64) -> String {
    let r = post(
        server,
        "/demo/runs",
        Some(token),
        &format!(r#"{{"pace_ms":{pace_ms}}}"#),
    )
    .await;
    assert_eq!(r.status, 202, "{}", r.body);
    r.json()["run_id"].as_str().expect("a run id").to_owned()
}

#[tokio::test]
async fn development_mode_serves_the_page_client_and_assets() {
    let server = dev_server(DemoMode::Auto).await;
    let page = server.http("GET", "/", None).await;
    assert_eq!(page.status, 200);
    assert!(
        page.header("content-type")
            .is_some_and(|v| v.starts_with("text/html"))
    );
    assert!(
        page.header("content-security-policy")
            .is_some_and(|v| v.contains("default-src 'none'")),
        "the page loads nothing from elsewhere"
    );
    assert!(page.body.contains("/demo.js"));
    for (path, kind, needle) in [
        (
            "/client.js",
            "text/javascript",
            "export class AgentwireClient",
        ),
        (
            "/client.d.ts",
            "application/typescript",
            "export declare class AgentwireClient",
        ),
        ("/demo.js", "text/javascript", "from \"/client.js\""),
        ("/demo.css", "text/css", ".timeline"),
    ] {
        let r = server.http("GET", path, None).await;
        assert_eq!(r.status, 200, "{path}");
        assert!(
            r.header("content-type")
                .is_some_and(|v| v.starts_with(kind)),
            "{path}"
        );
        assert!(r.body.contains(needle), "{path}");
    }
    let stats = server.http("GET", "/demo/stats", None).await;
    assert_eq!(stats.status, 200);
    assert_eq!(stats.json()["demo_runs_active"], 0);
    server.stop().await;
}

#[tokio::test]
async fn a_configured_secret_turns_the_demo_off_but_not_the_client() {
    let server = TestServer::start().await;
    for (method, path) in [
        ("GET", "/"),
        ("GET", "/demo.js"),
        ("GET", "/demo/stats"),
        ("POST", "/demo/token"),
        ("POST", "/demo/runs"),
    ] {
        let r = server.http(method, path, None).await;
        assert_eq!(r.status, 404, "{method} {path} is not served in production");
    }
    assert_eq!(server.http("GET", "/client.js", None).await.status, 200);
    server.stop().await;
}

#[tokio::test]
async fn demo_on_with_a_configured_secret_never_mints_tokens() {
    let server = TestServer::start_with(|c| c.demo = DemoMode::On).await;
    assert_eq!(server.http("GET", "/", None).await.status, 200);
    let r = post(&server, "/demo/token", None, r#"{"user_id":"alice"}"#).await;
    assert_eq!(r.status, 403, "{}", r.body);
    assert_eq!(r.json()["error"], "forbidden");
    // Runs still work for a user with a token of the configured secret.
    let run = start_run(&server, &server.token("alice"), 0).await;
    assert!(run.starts_with("run_"));
    // Issue 14: outside development mode the stats are not for anyone who asks.
    let anonymous = server.http("GET", "/demo/stats", None).await;
    assert_eq!(anonymous.status, 401, "{}", anonymous.body);
    assert_eq!(anonymous.json()["error"], "unauthorized");
    let forged = server.http("GET", "/demo/stats", Some("not-a-token")).await;
    assert_eq!(forged.status, 401, "{}", forged.body);
    for credential in [server.token("alice"), agentwire_e2e::API_KEY.to_owned()] {
        let r = server.http("GET", "/demo/stats", Some(&credential)).await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert!(r.json()["demo_runs_started"].as_u64() >= Some(1));
    }
    server.stop().await;
}

/// Issue 14: docs/client.md's first example imports `/client.js` from the agentwire
/// origin into an app on another origin: a module script is fetched in CORS mode.
#[tokio::test]
async fn the_browser_client_is_served_with_cors_headers() {
    let any = TestServer::start().await;
    for path in ["/client.js", "/client.d.ts"] {
        let r = http_send(
            any.addr,
            "GET",
            path,
            &[("Origin", "https://app.example")],
            b"",
        )
        .await;
        assert_eq!(r.status, 200, "{path}");
        assert_eq!(r.header("access-control-allow-origin"), Some("*"), "{path}");
        assert_eq!(
            r.header("cross-origin-resource-policy"),
            Some("cross-origin"),
            "{path}"
        );
    }
    any.stop().await;
    let listed = TestServer::start_with(|c| {
        c.allowed_origins = vec!["https://app.example".into()];
    })
    .await;
    let allowed = http_send(
        listed.addr,
        "GET",
        "/client.js",
        &[("Origin", "https://app.example")],
        b"",
    )
    .await;
    assert_eq!(
        allowed.header("access-control-allow-origin"),
        Some("https://app.example")
    );
    assert_eq!(allowed.header("vary"), Some("Origin"));
    let other = http_send(
        listed.addr,
        "GET",
        "/client.js",
        &[("Origin", "https://evil.example")],
        b"",
    )
    .await;
    assert_eq!(other.status, 200);
    assert_eq!(other.header("access-control-allow-origin"), None);
    listed.stop().await;
}

#[tokio::test]
async fn demo_off_in_development_mode_serves_no_demo() {
    let server = dev_server(DemoMode::Off).await;
    assert_eq!(server.http("GET", "/", None).await.status, 404);
    let r = post(&server, "/demo/token", None, r#"{"user_id":"alice"}"#).await;
    assert_eq!(r.status, 404);
    server.stop().await;
}

#[tokio::test]
async fn a_run_reaches_the_token_user_only_in_run_order() {
    let server = dev_server(DemoMode::Auto).await;
    let alice_token = dev_token(&server, "alice").await;
    let mut alice = connect_with(&server, &alice_token).await;
    let mut bob = connect_with(&server, &dev_token(&server, "bob").await).await;
    assert_eq!(
        alice.established.as_ref().map(|c| c.user_id.as_str()),
        Some("alice"),
        "a development token authenticates its user"
    );

    let unauthorized = post(&server, "/demo/runs", None, "{}").await;
    assert_eq!(unauthorized.status, 401, "{}", unauthorized.body);
    let forged = post(&server, "/demo/runs", Some("not-a-token"), "{}").await;
    assert_eq!(forged.status, 401, "{}", forged.body);

    let run = start_run(&server, &alice_token, 0).await;
    let mut types = Vec::new();
    loop {
        let e = alice.event().await;
        assert_eq!(
            e.event.run_id.as_ref().map(|r| r.as_str()),
            Some(run.as_str())
        );
        let t = e.event.data.event_type();
        types.push(t);
        if t == EventType::AgentCompleted {
            break;
        }
    }
    assert_eq!(types, agentwire::bridge::SIMULATED_RUN_EVENTS.to_vec());
    assert_eq!(
        bob.recv_within(Duration::from_millis(300)).await,
        None,
        "bob receives nothing of alice's run"
    );
    let stats = server.http("GET", "/demo/stats", None).await.json();
    assert_eq!(stats["demo_runs_started"], 1);
    assert_eq!(stats["events_emitted"], types.len());
    // The run went through the demo bridge's emitter pool, which /metrics shows. The pool
    // hears of the finish just after the last event is accepted: wait for it.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let text = loop {
        let text = server.metrics().await;
        if metric(&text, "agentwire_demo_pool_finished_total") == Some(1.0)
            || tokio::time::Instant::now() > deadline
        {
            break text;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    for (name, value) in [
        ("agentwire_demo_pool_created_total", 1.0),
        ("agentwire_demo_pool_finished_total", 1.0),
        ("agentwire_demo_pool_refused_total", 0.0),
        ("agentwire_demo_pool_emitters", 0.0),
    ] {
        assert_eq!(metric(&text, name), Some(value), "{name}: {text}");
    }
    assert!(
        metric(&text, "agentwire_demo_pool_max_emitters").is_some_and(|n| n >= 1.0),
        "{text}"
    );
    server.stop().await;
}

/// Without the demo there is no pool, and no pool metrics.
#[tokio::test]
async fn demo_off_exports_no_pool_metrics() {
    let server = dev_server(DemoMode::Off).await;
    let text = server.metrics().await;
    assert!(!text.contains("agentwire_demo_pool_"), "{text}");
    server.stop().await;
}

#[tokio::test]
async fn cancelling_a_run_ends_it_with_agent_error_for_its_user_only() {
    let server = dev_server(DemoMode::Auto).await;
    let alice_token = dev_token(&server, "alice").await;
    let bob_token = dev_token(&server, "bob").await;
    let mut alice = connect_with(&server, &alice_token).await;
    let run = start_run(&server, &alice_token, 5_000).await;
    let started = alice.event().await;
    assert_eq!(started.event.data.event_type(), EventType::AgentStarted);

    let path = format!("/demo/runs/{run}/cancel");
    let not_bobs = post(&server, &path, Some(&bob_token), "").await;
    assert_eq!(not_bobs.status, 404, "bob cannot cancel alice's run");
    let cancelled = post(&server, &path, Some(&alice_token), "").await;
    assert_eq!(cancelled.status, 200, "{}", cancelled.body);
    match alice.recv().await {
        Received::Frame(agentwire::protocol::ServerFrame::Event(e)) => match e.event.data {
            EventData::AgentError(err) => {
                assert_eq!(err.code.as_deref(), Some(agentwire::bridge::RUN_DROPPED));
            }
            other => panic!("expected agent_error, got {other:?}"),
        },
        other => panic!("expected agent_error, got {other:?}"),
    }
    let again = post(&server, &path, Some(&alice_token), "").await;
    assert_eq!(again.status, 404, "cancelling twice is a defined no-op");
    let stats = server.http("GET", "/demo/stats", None).await.json();
    assert_eq!(stats["demo_runs_active"], 0);
    server.stop().await;
}

#[tokio::test]
async fn a_run_that_stalls_is_ended_by_the_server_as_stalled() {
    let server = dev_server(DemoMode::Auto).await;
    let token = dev_token(&server, "alice").await;
    let mut alice = connect_with(&server, &token).await;
    let r = post(&server, "/demo/runs", Some(&token), r#"{"stall":true}"#).await;
    assert_eq!(r.status, 202, "{}", r.body);
    let body = r.json();
    assert_eq!(
        body["stall_timeout_ms"],
        agentwire::server::DEMO_STALL_TIMEOUT.as_millis() as u64
    );
    let run = body["run_id"].as_str().expect("a run id").to_owned();
    let mut types = Vec::new();
    let error = loop {
        let e = alice.event().await;
        assert_eq!(
            e.event.run_id.as_ref().map(|r| r.as_str()),
            Some(run.as_str())
        );
        types.push(e.event.data.event_type());
        if let EventData::AgentError(err) = e.event.data {
            break err;
        }
    };
    assert_eq!(
        types,
        [
            EventType::AgentStarted,
            EventType::ToolExecuting,
            EventType::AgentError
        ],
        "the run goes silent after its tool call, and the server ends it"
    );
    assert_eq!(error.code.as_deref(), Some("stalled"));
    assert!(error.retryable);
    let bad = post(&server, "/demo/runs", Some(&token), r#"{"stall":"yes"}"#).await;
    assert_eq!(bad.status, 400, "{}", bad.body);
    assert_eq!(bad.json()["field"], "stall");
    server.stop().await;
}

#[tokio::test]
async fn bad_demo_requests_get_clear_errors() {
    let server = dev_server(DemoMode::Auto).await;
    for body in [
        "",
        "[]",
        "not json",
        r#"{"user_id":""}"#,
        r#"{"user_id":7}"#,
    ] {
        let r = post(&server, "/demo/token", None, body).await;
        assert_eq!(r.status, 400, "{body:?}: {}", r.body);
        assert_eq!(r.json()["error"], "bad_request");
    }
    let token = dev_token(&server, "alice").await;
    for body in [
        r#"{"pace_ms":-1}"#,
        r#"{"pace_ms":60000}"#,
        r#"{"pace_ms":"x"}"#,
    ] {
        let r = post(&server, "/demo/runs", Some(&token), body).await;
        assert_eq!(r.status, 400, "{body}: {}", r.body);
        assert_eq!(r.json()["field"], "pace_ms", "{body}: {}", r.body);
    }
    // Issue 14: a key named twice is refused, whichever copy a parser would keep.
    let twice = post(
        &server,
        "/demo/token",
        None,
        r#"{"user_id":"alice","user_id":"victim"}"#,
    )
    .await;
    assert_eq!(twice.status, 400, "{}", twice.body);
    assert_eq!(twice.json()["error"], "bad_request");
    assert_eq!(twice.json()["field"], "user_id", "{}", twice.body);
    let r = post(
        &server,
        "/demo/runs",
        Some(&token),
        r#"{"pace_ms":1,"pace_ms":2}"#,
    )
    .await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(r.json()["field"], "pace_ms", "{}", r.body);
    // A body over DEMO_MAX_BODY_BYTES is refused before it is parsed.
    let huge = format!(
        r#"{{"user_id":"alice","pad":"{}"}}"#,
        "x".repeat(agentwire::server::DEMO_MAX_BODY_BYTES)
    );
    let r = post(&server, "/demo/token", None, &huge).await;
    assert_eq!(r.status, 413, "{}", r.body);
    assert_eq!(r.json()["error"], "payload_too_large");
    server.stop().await;
}

#[tokio::test]
async fn a_user_gets_at_most_three_runs_at_once() {
    let server = dev_server(DemoMode::Auto).await;
    let token = dev_token(&server, "alice").await;
    for _ in 0..agentwire::server::DEMO_MAX_RUNS_PER_USER {
        start_run(&server, &token, 5_000).await;
    }
    let r = post(&server, "/demo/runs", Some(&token), "{}").await;
    assert_eq!(r.status, 429, "{}", r.body);
    assert_eq!(r.header("retry-after"), Some("5"));
    let other = dev_token(&server, "bob").await;
    start_run(&server, &other, 0).await;
    server.stop().await;
}

/// Issue 14: a development token is minted only for a request from this machine. A page
/// on another site that points its own name at 127.0.0.1 (DNS rebinding) reaches the port
/// but sends its own name as `Host`, or its own `Origin`.
#[tokio::test]
async fn development_tokens_need_a_loopback_host_and_origin() {
    let server = dev_server(DemoMode::Auto).await;
    let body = br#"{"user_id":"alice"}"#;
    for headers in [
        vec![("Host", "attacker.example:8080")],
        vec![("Host", "attacker.example")],
        vec![("Origin", "https://attacker.example")],
        vec![("Origin", "null")],
    ] {
        let mut all = vec![("Content-Type", "application/json")];
        all.extend(headers.iter().copied());
        let r = http_send(server.addr, "POST", "/demo/token", &all, body).await;
        assert_eq!(r.status, 403, "{headers:?}: {}", r.body);
        assert_eq!(r.json()["error"], "forbidden");
        assert!(r.body.contains("this machine"), "{}", r.body);
    }
    let port = server.addr.port();
    for host in [format!("localhost:{port}"), format!("127.0.0.1:{port}")] {
        let origin = format!("http://{host}");
        let headers = [
            ("Content-Type", "application/json"),
            ("Host", host.as_str()),
            ("Origin", origin.as_str()),
        ];
        let r = http_send(server.addr, "POST", "/demo/token", &headers, body).await;
        assert_eq!(r.status, 200, "{host}: {}", r.body);
    }
    server.stop().await;
}
