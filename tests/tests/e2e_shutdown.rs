//! End to end: graceful shutdown (issue 14, item 10). For `--drain-delay` `/readyz`
//! answers 503 while everything else — health, publishing, WebSockets — is served as
//! before; then the listener closes, a keep-alive connection finishes the request it is
//! in, and every WebSocket is closed with 1001.

use std::time::Duration;

use agentwire_e2e::{API_KEY, TestServer, WAIT, custom};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_fails_for_the_drain_delay_then_requests_in_progress_finish() {
    let mut server = TestServer::start_with(|c| c.drain_delay = Duration::from_millis(800)).await;
    let mut alice = server.connect("alice").await;
    assert_eq!(server.http("GET", "/readyz", None).await.status, 200);

    // A publish whose body is still on its way when the listener closes.
    let body = br#"{"user_id":"alice","type":"custom","data":{"name":"n","value":7}}"#;
    let head = format!(
        "POST /v1/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {API_KEY}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    let mut slow = TcpStream::connect(server.addr).await.expect("connect");
    slow.write_all(head.as_bytes()).await.expect("head");
    slow.write_all(&body[..5]).await.expect("part of the body");

    let drain_began = Instant::now();
    server.begin_stop();
    let r = loop {
        let r = server.http("GET", "/readyz", None).await;
        if r.status == 503 {
            break r;
        }
        assert!(drain_began.elapsed() < WAIT, "/readyz never failed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(r.json()["status"], "shutting_down", "{}", r.body);
    // Everything else is served while load balancers notice.
    assert_eq!(server.http("GET", "/healthz", None).await.status, 200);
    server.emit("alice", custom(1)).await;
    assert_eq!(alice.event().await.seq.get(), 1);

    // The listener closes after the delay; new connections are refused from then on.
    let closed = loop {
        if TcpStream::connect(server.addr).await.is_err() {
            break Instant::now();
        }
        assert!(drain_began.elapsed() < WAIT, "the listener never closed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(closed > drain_began);
    // The request in progress finishes, then its connection closes.
    slow.write_all(&body[5..])
        .await
        .expect("the rest of the body");
    let mut answer = Vec::new();
    timeout(WAIT, slow.read_to_end(&mut answer))
        .await
        .expect("the answer and the close in time")
        .expect("read");
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 200 "), "{text}");
    assert!(text.contains("\"seq\":2"), "{text}");
    // The WebSocket was closed with 1001; the event published since waits in history for
    // its resume.
    assert_eq!(alice.closed().await, Some(1001));
    server.stop().await;
}
