//! End to end: the WebSocket transport under the protocol — frames of every length form
//! and batches larger than one write arrive whole and in order, protocol-level pings are
//! answered, a client's close is echoed, and a request that is not a handshake gets 400.

use agentwire::protocol::{Custom, Event};
use agentwire_e2e::{TestServer, custom_value, user};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;

/// A `custom` event numbered `n` whose payload is about `pad` bytes long.
fn padded(n: u64, pad: usize) -> Event {
    Event::new(
        None,
        None,
        Custom {
            name: "x".repeat(pad.max(1)),
            value: serde_json::json!(n),
            extra: Default::default(),
        },
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_of_every_length_form_and_long_batches_arrive_whole_and_in_order() {
    let server = TestServer::start_with(|c| c.write_batch_frames = 7).await;
    let mut client = server.connect("alice").await;
    // Payloads under 126 bytes, up to 64 KiB (16-bit length) and past it (64-bit
    // length), then a run of small ones longer than several write batches.
    let sizes = [1usize, 120, 300, 60_000, 70_000, 5];
    let mut n = 0;
    for &pad in &sizes {
        n += 1;
        server.emit("alice", padded(n, pad)).await;
    }
    for _ in 0..200 {
        n += 1;
        server.emit("alice", padded(n, 10)).await;
    }
    for expect in 1..=n {
        let e = client.event().await;
        assert_eq!(custom_value(&e), Some(expect));
        assert_eq!(e.seq.0, expect);
    }
    drop(server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_protocol_ping_is_answered_with_a_pong_carrying_its_payload() {
    let server = TestServer::start().await;
    let mut client = server.connect("alice").await;
    client
        .send_message(Message::Ping(b"are you there".to_vec().into()))
        .await;
    loop {
        match client.next_message().await {
            Some(Ok(Message::Pong(p))) => {
                assert_eq!(&p[..], b"are you there");
                break;
            }
            Some(Ok(Message::Ping(_))) => {}
            other => panic!("expected a pong, got {other:?}"),
        }
    }
    // The connection is still served after it.
    server.emit("alice", agentwire_e2e::custom(1)).await;
    assert_eq!(custom_value(&client.event().await), Some(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_close_is_echoed_and_the_connection_is_released() {
    let server = TestServer::start().await;
    let mut client = server.connect("alice").await;
    client
        .send_message(Message::Close(Some(CloseFrame {
            code: 4321.into(),
            reason: "leaving".into(),
        })))
        .await;
    loop {
        match client.next_message().await {
            Some(Ok(Message::Close(Some(f)))) => {
                assert_eq!(u16::from(f.code), 4321);
                break;
            }
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
            other => panic!("expected the close echoed, got {other:?}"),
        }
    }
    server
        .wait_until("the connection is released", agentwire_e2e::WAIT, |s| {
            s.manager().connections_of(&user("alice")).is_empty()
        })
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_that_is_not_a_handshake_gets_400_naming_what_is_missing() {
    let server = TestServer::start().await;
    let token = server.token("alice");
    let r = server.http("GET", "/ws", Some(&token)).await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.body.contains("Connection"), "{}", r.body);
}
