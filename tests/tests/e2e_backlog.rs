//! End to end: a connection whose queue stays full (issue 14, item 6). A client that reads
//! slowly behind a long backlog still gets its heartbeat pings, its token's expiry
//! (`4002`, the backlog dropped) and the echo of its own close within about one batch
//! write; a slow consumer that keeps reading gets the `1013` close frame rather than
//! having its connection cut with none.
//!
//! The backlog is history replayed to a resuming connection: the catch-up keeps the queue
//! full for as long as the client reads slowly. The client's receive buffer is small, so
//! what the kernels hold between the writer and the client stays small next to it.

use std::time::Duration;

use agentwire_e2e::{TestServer, WAIT, connect_small_buffer, padded};
use futures_util::{SinkExt, StreamExt};
use tokio::time::{Instant, timeout};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;

/// Events of history before the client connects.
const BACKLOG: u64 = 600;
/// Bytes of each event's padding.
const PAD: usize = 16 * 1024;
/// How long the client takes per message it reads: about 1 MB/s.
const READ_PAUSE: Duration = Duration::from_millis(16);

/// What a slow reader saw before the connection ended.
#[derive(Debug, Default)]
struct Seen {
    events: u64,
    pings: u64,
    close: Option<u16>,
}

/// Connects `user` (token valid `ttl_secs`) with a small receive buffer; the stream
/// starts from the oldest event of history.
async fn slow_client(
    server: &TestServer,
    user: &str,
    ttl_secs: u64,
) -> WebSocketStream<tokio::net::TcpStream> {
    connect_small_buffer(server.addr, user, ttl_secs, 8 * 1024).await
}

/// Reads slowly until the connection ends or `stop` says so after a message.
async fn read_slowly(
    ws: &mut WebSocketStream<tokio::net::TcpStream>,
    mut stop: impl FnMut(&Seen) -> bool,
) -> Seen {
    let mut seen = Seen::default();
    let deadline = Instant::now() + WAIT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let msg = timeout(left, ws.next())
            .await
            .expect("the connection ends within the wait bound");
        match msg {
            Some(Ok(Message::Text(t))) if t.contains("\"seq\":") => seen.events += 1,
            Some(Ok(Message::Ping(_))) => seen.pings += 1,
            Some(Ok(Message::Close(frame))) => {
                seen.close = frame.map(|f| u16::from(f.code));
                return seen;
            }
            Some(Ok(_)) => {}
            Some(Err(_)) | None => return seen,
        }
        if stop(&seen) {
            return seen;
        }
        tokio::time::sleep(READ_PAUSE).await;
    }
}

async fn server_with_backlog(
    change: impl FnOnce(&mut agentwire::server::ServerConfig),
) -> TestServer {
    let server = TestServer::start_with(|c| {
        // Small batches: whatever the writer serves between two batches comes soon.
        c.write_batch_frames = 16;
        c.write_timeout = Duration::from_secs(8);
        c.history_max_events = BACKLOG as usize;
        change(c);
    })
    .await;
    for n in 1..=BACKLOG {
        server.emit("alice", padded(n, PAD)).await;
    }
    server
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pings_and_token_expiry_are_served_while_the_queue_stays_full() {
    let server = server_with_backlog(|c| {
        c.heartbeat_interval = Duration::from_millis(300);
        c.heartbeat_timeout = Duration::from_secs(30);
    })
    .await;
    let mut ws = slow_client(&server, "alice", 2).await;
    let seen = read_slowly(&mut ws, |_| false).await;
    assert!(
        seen.pings >= 1,
        "no ping while the queue was full: {seen:?}"
    );
    assert_eq!(seen.close, Some(4002), "{seen:?}");
    assert!(
        seen.events < BACKLOG,
        "the backlog is dropped when the token expires: {seen:?}"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_clients_close_is_echoed_while_its_queue_stays_full() {
    let server = server_with_backlog(|_| {}).await;
    let mut ws = slow_client(&server, "alice", 3600).await;
    let first = read_slowly(&mut ws, |s| s.events >= 5).await;
    assert_eq!(first.close, None, "{first:?}");
    timeout(
        WAIT,
        ws.send(Message::Close(Some(CloseFrame {
            code: 4321.into(),
            reason: "leaving".into(),
        }))),
    )
    .await
    .expect("send in time")
    .expect("send");
    let rest = read_slowly(&mut ws, |_| false).await;
    assert_eq!(
        rest.close,
        Some(4321),
        "the echo of the client's close: {rest:?}"
    );
    assert!(
        first.events + rest.events < BACKLOG,
        "the echo did not wait for the backlog: {first:?} {rest:?}"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_consumer_that_keeps_reading_gets_a_1013_close_frame() {
    let server = server_with_backlog(|c| {
        // Batches of 4 MiB take about 4 s at the client's pace: longer than the write
        // timeout, so only a batch cut at the queue's overflow lets the close frame
        // through in time.
        c.write_batch_frames = 256;
        c.write_timeout = Duration::from_secs(2);
        c.queue_max_bytes = 4 * 1024 * 1024;
        c.queue_max_frames = 100_000;
    })
    .await;
    let mut ws = slow_client(&server, "alice", 3600).await;
    // Live events while the catch-up is under way overflow the connection's bounds.
    let manager = server.manager().clone();
    let flood = tokio::spawn(async move {
        let alice = agentwire_e2e::user("alice");
        for n in 1..=400 {
            manager
                .emit_critical_event(&alice, padded(BACKLOG + n, PAD))
                .await
                .expect("emit");
        }
    });
    let seen = read_slowly(&mut ws, |_| false).await;
    flood.await.expect("flood");
    assert_eq!(seen.close, Some(1013), "{seen:?}");
    assert_eq!(server.manager().get_stats().slow_consumer_closes, 1);
    server.stop().await;
}
