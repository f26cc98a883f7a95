//! End to end: the HTTP front door (issue 14, items 4 and 9). Connections that never finish
//! a request are closed by the header-read and idle timeouts, a body that does not arrive
//! is answered 408, and at `--max-tcp-connections` the oldest idle connection makes room
//! (or, when every connection is busy, the new one is answered 503) — while `/healthz`
//! and new WebSockets keep being served. Every answer the server gives, hyper's own
//! included (a malformed request, a head too large), has the JSON error body.

use std::time::Duration;

use agentwire_e2e::{TestServer, WAIT, metric, raw_http};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

/// Asserts `r` is the JSON error answer with `status` and `code`.
fn assert_error(r: &agentwire_e2e::HttpResponse, status: u16, code: &str) {
    assert_eq!(r.status, status, "{}", r.body);
    assert_eq!(
        r.header("content-type"),
        Some("application/json"),
        "{status}: {:?}",
        r.headers
    );
    let v = r.json();
    assert_eq!(v["error"], code, "{}", r.body);
    assert!(
        v["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{}",
        r.body
    );
    assert!(v.get("field").is_some(), "{}", r.body);
}

/// Reads until the server closes `s` (within `WAIT`); what it sent before.
async fn until_closed(s: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match timeout(WAIT, s.read(&mut buf)).await {
            Err(_) => panic!("the server did not close the connection within {WAIT:?}"),
            Ok(Ok(0) | Err(_)) => return out,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_hyper_gives_by_itself_carry_the_json_error_body() {
    let server = TestServer::start_with(|c| c.max_header_bytes = 4096).await;
    let host = format!("Host: {}\r\n", server.addr);
    let cases: Vec<(Vec<u8>, u16, &str)> = vec![
        // A header line without a colon.
        (
            format!("GET /healthz HTTP/1.1\r\n{host}Bad Header\r\n\r\n").into_bytes(),
            400,
            "bad_request",
        ),
        // A Content-Length that is not a number, and two that disagree.
        (
            format!("POST /v1/events HTTP/1.1\r\n{host}Content-Length: ten\r\n\r\n").into_bytes(),
            400,
            "bad_request",
        ),
        (
            format!(
                "POST /v1/events HTTP/1.1\r\n{host}Content-Length: 2\r\nContent-Length: 3\r\n\r\n{{}}"
            )
            .into_bytes(),
            400,
            "bad_request",
        ),
        // Bytes a request target may not hold.
        (
            [
                b"GET /v1/users/\xff\x00/events HTTP/1.1\r\n".as_slice(),
                host.as_bytes(),
                b"\r\n",
            ]
            .concat(),
            400,
            "bad_request",
        ),
        // Not HTTP at all.
        (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n".to_vec(), 400, "bad_request"),
        // A head over --max-header-bytes.
        (
            format!(
                "GET /healthz HTTP/1.1\r\n{host}X-Padding: {}\r\n\r\n",
                "a".repeat(8192)
            )
            .into_bytes(),
            431,
            "headers_too_large",
        ),
    ];
    for (request, status, code) in &cases {
        let r = raw_http(server.addr, request).await;
        assert_error(&r, *status, code);
    }
    // A target over --max-uri-bytes (within the head's bound) is the router's 414.
    let long = format!(
        "GET /healthz?{} HTTP/1.1\r\n{host}Connection: close\r\n\r\n",
        "q".repeat(12_400)
    );
    let server_long = TestServer::start().await;
    let r = raw_http(server_long.addr, long.as_bytes()).await;
    assert_error(&r, 414, "uri_too_long");
    // A path segment that is not UTF-8 once decoded, and routes that are not there.
    for (path, status, code) in [
        ("/v1/users/%FF%FE/events", 400, "bad_request"),
        ("/no/such/route", 404, "not_found"),
    ] {
        let r = server.http("GET", path, Some(agentwire_e2e::API_KEY)).await;
        assert_error(&r, status, code);
    }
    let r = server.http("DELETE", "/healthz", None).await;
    assert_error(&r, 405, "method_not_allowed");
    let metrics = server.metrics().await;
    assert_eq!(
        metric(
            &metrics,
            "agentwire_http_malformed_requests_total{status=\"400\"}"
        ),
        Some(5.0),
        "{metrics}"
    );
    assert_eq!(
        metric(
            &metrics,
            "agentwire_http_malformed_requests_total{status=\"431\"}"
        ),
        Some(1.0)
    );
    let long_metrics = server_long.metrics().await;
    assert_eq!(
        metric(
            &long_metrics,
            "agentwire_http_malformed_requests_total{status=\"414\"}"
        ),
        Some(1.0)
    );
    // The server still serves.
    assert_eq!(server.http("GET", "/healthz", None).await.status, 200);
    server.stop().await;
    server_long.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_trickling_and_idle_connections_are_closed_by_their_timeouts() {
    let server = TestServer::start_with(|c| {
        c.header_read_timeout = Duration::from_millis(300);
        c.idle_timeout = Duration::from_millis(400);
    })
    .await;
    // Silent from the start.
    let mut silent = TcpStream::connect(server.addr).await.expect("connect");
    // Half a head, then nothing.
    let mut half = TcpStream::connect(server.addr).await.expect("connect");
    half.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await
        .expect("write");
    // One request kept alive, then idle.
    let mut idle = TcpStream::connect(server.addr).await.expect("connect");
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    assert!(until_closed(&mut silent).await.is_empty());
    assert!(until_closed(&mut half).await.is_empty());
    let answered = until_closed(&mut idle).await;
    assert!(
        answered.starts_with(b"HTTP/1.1 200 "),
        "{}",
        String::from_utf8_lossy(&answered)
    );
    let metrics = server.metrics().await;
    assert_eq!(
        metric(
            &metrics,
            "agentwire_http_timeouts_total{kind=\"header_read\"}"
        ),
        Some(2.0),
        "{metrics}"
    );
    assert_eq!(
        metric(&metrics, "agentwire_http_timeouts_total{kind=\"idle\"}"),
        Some(1.0)
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_does_not_arrive_is_answered_408_and_nothing_is_published() {
    let server = TestServer::start_with(|c| c.body_read_timeout = Duration::from_millis(300)).await;
    let body = br#"{"user_id":"alice","type":"custom","data":{"name":"n","value":1}}"#;
    let head = format!(
        "POST /v1/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        agentwire_e2e::API_KEY,
        body.len()
    );
    let mut s = TcpStream::connect(server.addr).await.expect("connect");
    s.write_all(head.as_bytes()).await.expect("head");
    s.write_all(&body[..10]).await.expect("part of the body");
    let answer = until_closed(&mut s).await;
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 408 "), "{text}");
    assert!(text.contains("\"error\":\"request_timeout\""), "{text}");
    assert_eq!(
        server.manager().get_stats().events_emitted,
        0,
        "nothing was published"
    );
    let metrics = server.metrics().await;
    assert_eq!(
        metric(
            &metrics,
            "agentwire_http_timeouts_total{kind=\"body_read\"}"
        ),
        Some(1.0)
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_tcp_cap_silent_sockets_make_room_for_health_checks_and_websockets() {
    const CAP: usize = 16;
    let server = TestServer::start_with(|c| {
        c.max_tcp_connections = CAP;
        // Long enough that only the cap can free a slot during the test.
        c.header_read_timeout = Duration::from_secs(60);
    })
    .await;
    let mut alice = server.connect("alice").await;
    // Twice the cap of sockets that never send a byte.
    let mut silent = Vec::new();
    for _ in 0..2 * CAP {
        silent.push(TcpStream::connect(server.addr).await.expect("connect"));
    }
    for _ in 0..3 {
        let r = server.http("GET", "/healthz", None).await;
        assert_eq!(r.status, 200, "{}", r.body);
    }
    let mut bob = server.connect("bob").await;
    server.emit("alice", agentwire_e2e::custom(1)).await;
    server.emit("bob", agentwire_e2e::custom(2)).await;
    assert_eq!(alice.event().await.seq.get(), 1);
    assert_eq!(bob.event().await.seq.get(), 1);
    let metrics = server.metrics().await;
    let evicted = metric(&metrics, "agentwire_tcp_connections_evicted_total").unwrap_or(0.0);
    assert!(evicted >= CAP as f64, "{metrics}");
    let open = metric(&metrics, "agentwire_tcp_connections").unwrap_or(f64::MAX);
    assert!(open <= CAP as f64 + 1.0, "{metrics}");
    drop(silent);
    alice.close().await;
    bob.close().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_every_connection_is_busy_a_new_one_is_answered_503() {
    let server = TestServer::start_with(|c| {
        c.max_tcp_connections = 3;
        c.max_connections = 3;
    })
    .await;
    // WebSockets are never evicted; the cap's 7/8 share for them does not apply to a
    // server bound over its own manager, so three fill it.
    let mut clients = Vec::new();
    for user in ["a", "b", "c"] {
        clients.push(server.connect(user).await);
    }
    let r = server.http("GET", "/healthz", None).await;
    assert_error(&r, 503, "unavailable");
    assert_eq!(r.header("retry-after"), Some("1"));
    let c = clients.pop().expect("a client");
    c.close().await;
    // The closed socket's slot is given back as its session ends.
    // Asks until it is let in; each ask still refused counts too.
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut refused_asks = 0.0;
    let metrics_after = loop {
        let r = server
            .http("GET", "/metrics", Some(agentwire_e2e::API_KEY))
            .await;
        if r.status == 200 {
            break r.body;
        }
        assert_error(&r, 503, "unavailable");
        refused_asks += 1.0;
        assert!(tokio::time::Instant::now() < deadline, "no slot came free");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(
        metric(&metrics_after, "agentwire_tcp_connections_refused_total"),
        Some(1.0 + refused_asks)
    );
    for c in clients {
        c.close().await;
    }
    server.stop().await;
}

/// `--socket-send-buffer` bounds the kernel send buffer of the connections the server
/// accepts: the size the kernel reports for one (`agentwire_socket_send_buffer_bytes`)
/// follows the flag — on Linux exactly twice it, capped at `net.core.wmem_max`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accepted_connections_get_the_send_buffer_the_flag_names() {
    let wmem_max: Option<usize> = std::fs::read_to_string("/proc/sys/net/core/wmem_max")
        .ok()
        .and_then(|s| s.trim().parse().ok());
    for bytes in [64 * 1024, 160 * 1024] {
        let server = TestServer::start_with(|c| c.socket_send_buffer = bytes).await;
        let metrics = server.metrics().await;
        let reported = metric(&metrics, "agentwire_socket_send_buffer_bytes").unwrap_or(0.0);
        match wmem_max {
            Some(max) if cfg!(target_os = "linux") => {
                assert_eq!(reported, (2 * bytes.min(max)) as f64, "{bytes}: {metrics}");
            }
            _ => assert!(reported >= bytes as f64, "{bytes}: {metrics}"),
        }
        server.stop().await;
    }
}
