//! End to end, issue 14: a slowloris against the `agentwire-server` binary under an
//! open-file limit of 300. Before the front door, 300 silent sockets locked every client
//! out (`/healthz` included) and 500 half-sent header blocks added ~185 MiB. Now, with more
//! silent and half-sent sockets than the process has descriptors for, the server keeps
//! serving `/healthz`, accepts new WebSockets, keeps delivering to the ones it has, and
//! its memory stays small.

mod support;

use std::time::Duration;

use futures_util::StreamExt;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

use support::{ServerProcess, WAIT, bin_with_nofile, get_status};

const SECRET: &str = "slowloris-test-secret-of-forty-bytes-xxxx";
const KEY: &str = "slowloris-test-api-key";
const NOFILE: u64 = 300;

async fn websocket(
    addr: std::net::SocketAddr,
    user: &str,
) -> tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>> {
    let token = agentwire_server::mint_hs256(
        SECRET.as_bytes(),
        &user.parse().expect("user id"),
        Duration::from_secs(600),
        None,
        None,
    )
    .expect("mint");
    support::websocket(addr, &token).await
}

/// The next text frame that carries `"seq":`.
async fn next_event(
    ws: &mut tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>,
) -> String {
    loop {
        match tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("an event in time")
        {
            Some(Ok(Message::Text(t))) if t.contains("\"seq\":") => return t.to_string(),
            Some(Ok(_)) => {}
            other => panic!("expected an event, got {other:?}"),
        }
    }
}

fn publish(addr: std::net::SocketAddr, user: &str, n: u64) -> u16 {
    use std::io::{Read, Write};
    let body =
        format!(r#"{{"user_id":"{user}","type":"custom","data":{{"name":"n","value":{n}}}}}"#);
    let mut s = std::net::TcpStream::connect_timeout(&addr, WAIT).expect("connect");
    s.set_read_timeout(Some(WAIT)).expect("timeout");
    let request = format!(
        "POST /v1/events HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
         Authorization: Bearer {KEY}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(request.as_bytes()).expect("write");
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    answer
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

/// Resident memory of `pid`, in KiB (Linux).
fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slowloris_under_a_low_file_limit_does_not_lock_clients_out() {
    let mut cmd = bin_with_nofile(NOFILE);
    cmd.args([
        "--listen",
        "127.0.0.1:0",
        "--jwt-secret",
        SECRET,
        "--api-keys",
        KEY,
    ]);
    let server = ServerProcess::spawn(cmd).expect("the server starts");
    let addr = server.addr;
    let pid = server.child.id();
    assert_eq!(get_status(addr, "/healthz"), 200);
    let mut alice = websocket(addr, "alice").await;
    let before = rss_kib(pid);

    // 300 sockets that never send a byte, and 200 that send half a header block: more
    // than the process has file descriptors for.
    let mut attack = Vec::new();
    for _ in 0..NOFILE {
        if let Ok(Ok(s)) = tokio::time::timeout(WAIT, TcpStream::connect(addr)).await {
            attack.push(s);
        }
    }
    let half = format!(
        "GET /healthz HTTP/1.1\r\nHost: {addr}\r\nX-Slow: {}",
        "s".repeat(8 * 1024)
    );
    for _ in 0..200 {
        if let Ok(Ok(mut s)) = tokio::time::timeout(WAIT, TcpStream::connect(addr)).await {
            let _ = s.write_all(half.as_bytes()).await;
            attack.push(s);
        }
    }

    // Health checks, new WebSockets and deliveries go on.
    for _ in 0..5 {
        let status = tokio::task::spawn_blocking(move || get_status(addr, "/healthz"))
            .await
            .expect("join");
        assert_eq!(status, 200, "/healthz during the attack");
    }
    let mut bob = websocket(addr, "bob").await;
    for (n, user) in [(1, "alice"), (1, "bob")] {
        let status = tokio::task::spawn_blocking(move || publish(addr, user, n))
            .await
            .expect("join");
        assert_eq!(status, 200, "publish to {user}");
    }
    assert!(next_event(&mut alice).await.contains("\"seq\":1"));
    assert!(next_event(&mut bob).await.contains("\"seq\":1"));

    // The attack cost little memory: half-sent heads are bounded by --max-header-bytes,
    // and the sockets over the cap were closed.
    if let (Some(before), Some(during)) = (before, rss_kib(pid)) {
        assert!(
            during.saturating_sub(before) < 64 * 1024,
            "resident memory grew from {before} KiB to {during} KiB"
        );
    }
    let metrics = tokio::task::spawn_blocking(move || metrics_text(addr))
        .await
        .expect("join");
    let value = |name: &str| -> f64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("{name} missing from: {metrics}"))
    };
    assert!(
        value("agentwire_tcp_connections_evicted_total") >= 200.0,
        "{metrics}"
    );
    // 300 files, 64 kept free: at most 236 connections.
    assert!(value("agentwire_tcp_connections") <= 236.0, "{metrics}");
    drop(attack);
    drop(server);
}

fn metrics_text(addr: std::net::SocketAddr) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&addr, WAIT).expect("connect");
    s.set_read_timeout(Some(WAIT)).expect("timeout");
    let request = format!(
        "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
         Authorization: Bearer {KEY}\r\n\r\n"
    );
    s.write_all(request.as_bytes()).expect("write");
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    answer
}
