//! End to end: an answer streamed as `message_delta` events to a client that stops reading
//! while it streams. Its connection's queue fills; from half its bound the deltas of the
//! message merge into frames covering several seqs, so the client is not cut as a slow
//! consumer, and once it reads again it gets the whole text, every seq once and in order,
//! and the events after the message as they were. With the default `--socket-send-buffer`,
//! a client with the usual buffers that stops reading gets the same merging.

use std::time::Duration;

use agentwire::protocol::{
    AgentCompleted, AgentStarted, Event, EventData, MessageCompleted, MessageDelta, ServerFrame,
};
use agentwire_e2e::{TestServer, WAIT, connect_small_buffer};
use futures_util::{Stream, StreamExt};
use tokio::time::{Instant, timeout};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

/// Deltas of the streamed message.
const DELTAS: u64 = 3_000;
/// Bytes of each delta's text: the message is about 3 MB, far more than the queue's
/// frame bound lets through unmerged.
const DELTA_BYTES: usize = 1_000;

fn event(data: impl Into<EventData>) -> Event {
    Event::new(None, Some("r1".parse().expect("run")), data)
}

/// Reads up to the run's `agent_started` (seq 1), which the connection delivers once it is
/// live.
async fn read_agent_started<S>(ws: &mut S)
where
    S: Stream<Item = Result<Message, WsError>> + Unpin,
{
    loop {
        match timeout(WAIT, ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) if t.contains("agent_started") => return,
            Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => {}
            other => panic!("no agent_started: {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_that_pauses_mid_stream_gets_merged_deltas_and_is_not_cut() {
    let server = TestServer::start_with(|c| {
        c.queue_max_frames = 64;
        c.write_batch_frames = 16;
        // The reader's pause lasts as long as publishing the whole answer takes, which an
        // unoptimized build on a slow host stretches past 20 s (0.3 s optimized).
        c.write_timeout = Duration::from_secs(120);
    })
    .await;
    // A small receive buffer: the kernels hold little, the connection's queue the rest.
    let mut ws = connect_small_buffer(server.addr, "alice", 3600, 8 * 1024).await;
    match timeout(WAIT, ws.next()).await {
        Ok(Some(Ok(Message::Text(t)))) => assert!(t.contains("connection_established")),
        other => panic!("no connection_established: {other:?}"),
    }

    // The run's first event is read before the pause: the connection is live by then. Until
    // its start from history is done, a connection holds live events aside unmerged, under
    // the queue's frame bound.
    server.emit("alice", event(AgentStarted::default())).await;
    read_agent_started(&mut ws).await;

    // The client reads nothing while the whole answer is published.
    let mut want = String::with_capacity(DELTAS as usize * DELTA_BYTES);
    for i in 0..DELTAS {
        let piece = format!("{i:>8}|{}", "x".repeat(DELTA_BYTES - 9));
        want.push_str(&piece);
        server
            .emit(
                "alice",
                event(MessageDelta {
                    message_id: "m1".into(),
                    delta: piece,
                    extra: Default::default(),
                }),
            )
            .await;
    }
    server
        .emit(
            "alice",
            event(MessageCompleted {
                message_id: "m1".into(),
                ..Default::default()
            }),
        )
        .await;
    let last = server
        .emit("alice", event(AgentCompleted::default()))
        .await
        .seq
        .get();

    // Now it reads everything.
    let mut text = String::new();
    let mut next_seq = 2;
    let mut merged_frames = 0;
    let mut types = Vec::new();
    let deadline = Instant::now() + WAIT;
    while next_seq <= last {
        let left = deadline.saturating_duration_since(Instant::now());
        let msg = timeout(left, ws.next())
            .await
            .expect("every event arrives within the wait bound");
        let raw = match msg {
            Some(Ok(Message::Text(t))) => t,
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            other => panic!("the stream ended at seq {next_seq}: {other:?}"),
        };
        let ServerFrame::Event(e) = ServerFrame::decode(raw.as_bytes()).expect("a frame") else {
            continue;
        };
        assert_eq!(e.seqs().start().get(), next_seq, "a hole or a repeat");
        next_seq = e.seq.get() + 1;
        if e.from_seq.is_some() {
            merged_frames += 1;
        }
        if let EventData::MessageDelta(d) = &e.event.data {
            text.push_str(&d.delta);
        }
        types.push(e.event.event_type().as_str());
    }
    assert!(text == want, "the text differs from what was streamed");
    assert!(merged_frames > 0, "nothing merged: {} frames", types.len());
    assert_eq!(
        &types[types.len() - 2..],
        ["message_completed", "agent_completed"]
    );
    let stats = server.manager().get_stats();
    assert_eq!(stats.slow_consumer_closes, 0, "{stats:?}");
    assert!(stats.deltas_merged > 0, "{stats:?}");
    server.stop().await;
}

/// A client with the kernel's usual buffers stops reading while a long answer streams: with
/// the default `--socket-send-buffer` the server's kernel holds only a bounded part of it,
/// so the rest waits in the connection's queue, where the deltas of the message merge
/// (`deltas_merged` rises). With the kernel's autotuning (`0`) the whole answer fits in
/// kernel buffers on loopback and nothing merges.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_default_send_buffer_a_reader_that_stops_makes_deltas_merge() {
    const SEND_BUFFER: usize = 256 * 1024;
    assert_eq!(
        agentwire::server::ServerConfig::default().socket_send_buffer,
        SEND_BUFFER,
        "the default this test is about"
    );
    let server = TestServer::start_with(|c| {
        c.write_timeout = Duration::from_secs(60);
        c.socket_send_buffer = SEND_BUFFER;
    })
    .await;
    let mut silent = server.connect("alice").await;
    server.emit("alice", event(AgentStarted::default())).await;
    // Live once it has read the run's first event; then it stops reading.
    assert_eq!(
        silent.event().await.event.event_type().as_str(),
        "agent_started"
    );
    for i in 0..DELTAS {
        server
            .emit(
                "alice",
                event(MessageDelta {
                    message_id: "m1".into(),
                    delta: format!("{i:>8}|{}", "x".repeat(DELTA_BYTES - 9)),
                    extra: Default::default(),
                }),
            )
            .await;
    }
    let stats = server.manager().get_stats();
    assert!(stats.deltas_merged > 0, "{stats:?}");
    drop(silent);
    server.stop().await;
}
