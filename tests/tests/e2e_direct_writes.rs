//! End to end: direct writes (docs/architecture.md, *Direct writes*). While a
//! connection's writer waits, a live event is written to the socket by the task that
//! delivers it; a socket that takes only part of a frame leaves the rest to the writer,
//! which writes it before anything else — before the next events, and before the
//! heartbeat pings that come due meanwhile.
//!
//! The client's receive buffer is small and it reads nothing for a while, so the server's
//! socket fills in the middle of a frame; then it reads everything.

use std::time::Duration;

use agentwire::protocol::ServerFrame;
use agentwire_e2e::{TestServer, WAIT, connect_small_buffer, metric, padded};
use futures_util::StreamExt;
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::Message;

/// Live events published while the client reads nothing.
const EVENTS: u64 = 60;
/// Bytes of each event's padding.
const PAD: usize = 16 * 1024;

fn metric_of(text: &str, name: &str) -> f64 {
    metric(text, name).unwrap_or_else(|| panic!("{name} in /metrics"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_written_in_part_by_their_deliverer_arrive_whole_and_in_order() {
    let server = TestServer::start_with(|c| {
        c.heartbeat_interval = Duration::from_millis(50);
        c.heartbeat_timeout = Duration::from_secs(30);
    })
    .await;
    let mut ws = connect_small_buffer(server.addr, "alice", 3600, 8 * 1024).await;
    let first = timeout(WAIT, ws.next())
        .await
        .expect("a first frame in time");
    let Some(Ok(Message::Text(text))) = first else {
        panic!("connection_established first: {first:?}");
    };
    assert!(
        matches!(
            ServerFrame::decode(text.as_bytes()),
            Ok(ServerFrame::ConnectionEstablished(_))
        ),
        "{text}"
    );
    // The writer has written that frame and waits, its socket lent. A machine busy enough
    // to pause direct writes (the load probe) delays the test until they resume.
    server
        .wait_until("the writer waits, direct writes on", WAIT, |s| {
            s.manager().get_stats().connections == 1 && !s.manager().direct_writes_paused()
        })
        .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    for n in 1..=EVENTS {
        server.emit("alice", padded(n, PAD)).await;
    }
    // Pings come due while the socket holds a frame begun by a deliverer.
    tokio::time::sleep(Duration::from_millis(300)).await;

    let (mut events, mut pings) = (Vec::new(), 0u64);
    let mut last_seq = 0;
    while (events.len() as u64) < EVENTS {
        let msg = timeout(WAIT, ws.next()).await.expect("every event in time");
        match msg {
            Some(Ok(Message::Text(text))) => match ServerFrame::decode(text.as_bytes()) {
                Ok(ServerFrame::Event(e)) => {
                    assert!(
                        e.seq.get() > last_seq,
                        "in order: {} after {last_seq}",
                        e.seq
                    );
                    last_seq = e.seq.get();
                    let n = match &e.event.data {
                        agentwire::protocol::EventData::Custom(c) => c.value["n"].as_u64(),
                        _ => None,
                    };
                    events.push(n.expect("a padded event"));
                }
                other => panic!("an event frame, whole: {other:?}"),
            },
            Some(Ok(Message::Ping(_))) => pings += 1,
            other => panic!("frames whole and the connection open: {other:?}"),
        }
    }
    assert_eq!(events, (1..=EVENTS).collect::<Vec<_>>());
    assert!(pings >= 1, "the pings that came due were written too");
    let text = server.metrics().await;
    let direct = metric_of(&text, "agentwire_direct_frames_total");
    let split = metric_of(&text, "agentwire_direct_frames_split_total");
    assert!(direct >= 1.0, "frames written by their deliverer: {direct}");
    assert!(split >= 1.0, "a frame the socket took in part: {split}");
    server.stop().await;
}
