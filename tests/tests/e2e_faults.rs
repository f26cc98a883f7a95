//! End to end: faults. A client that stops reading is cut (write timeout or 1013) while
//! other users keep receiving; a client that stops answering pings is closed and removed;
//! oversized frames close with 1009; malformed frames get `error` frames and, repeated,
//! 1008; a thousand connections opened and closed leave nothing behind.

use std::time::Duration;

use agentwire::protocol::{ClientFrame, Custom, ErrorCode, Event, ServerFrame};
use agentwire_e2e::{TestServer, WAIT, custom, custom_value, user};
use futures_util::StreamExt;
use tokio_tungstenite::tungstenite::Message;

fn big(n: u64, bytes: usize) -> Event {
    Event::new(
        None,
        None,
        Custom {
            name: "big".into(),
            value: serde_json::json!({ "n": n, "pad": "x".repeat(bytes) }),
            extra: Default::default(),
        },
    )
}

/// How a stalled reader was cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cut {
    /// Its queue overflowed: closed with 1013.
    SlowConsumer,
    /// A write did not finish in time: dropped.
    WriteTimeout,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_closed_1013_while_others_keep_receiving() {
    stalled_reader(Cut::SlowConsumer).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_dropped_by_the_write_timeout() {
    stalled_reader(Cut::WriteTimeout).await;
}

async fn stalled_reader(cut: Cut) {
    let server = TestServer::start_with(|c| {
        c.write_timeout = Duration::from_secs(1);
        match cut {
            Cut::SlowConsumer => {
                c.queue_max_bytes = 512 * 1024;
                // Long enough that the queue overflows first.
                c.write_timeout = Duration::from_secs(2);
            }
            Cut::WriteTimeout => {
                // Room for everything: only the write timeout can cut it.
                c.queue_max_bytes = 64 * 1024 * 1024;
                c.queue_max_frames = 100_000;
            }
        }
    })
    .await;
    let stalled = server.connect("stalled").await; // never read again
    let mut healthy = server.connect("healthy").await;

    // ~24 MiB for the stalled user: more than the socket buffers and its queue hold.
    const BIG: u64 = 400;
    const SMALL: u64 = 100;
    let manager = server.manager().clone();
    let flood = tokio::spawn(async move {
        let id = user("stalled");
        for n in 1..=BIG {
            manager
                .emit_critical_event(&id, big(n, 60 * 1024))
                .await
                .expect("emit");
            if n % 20 == 0 {
                tokio::task::yield_now().await;
            }
        }
    });
    let manager = server.manager().clone();
    let trickle = tokio::spawn(async move {
        let id = user("healthy");
        for n in 1..=SMALL {
            manager
                .emit_critical_event(&id, custom(n))
                .await
                .expect("emit");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    });
    for n in 1..=SMALL {
        let e = healthy.event().await;
        assert_eq!(e.seq.get(), n);
        assert_eq!(custom_value(&e), Some(n));
    }
    flood.await.expect("flood");
    trickle.await.expect("trickle");

    server
        .wait_until("the stalled connection is removed", WAIT, |s| {
            s.manager().connections_of(&user("stalled")).is_empty()
        })
        .await;
    let stats = server.manager().get_stats();
    let metrics = server.metrics().await;
    let write_timeouts =
        agentwire_e2e::metric(&metrics, "agentwire_write_timeouts_total").unwrap_or(0.0);
    match cut {
        Cut::SlowConsumer => assert_eq!(stats.slow_consumer_closes, 1, "{stats:?}"),
        Cut::WriteTimeout => {
            assert_eq!(stats.slow_consumer_closes, 0, "{stats:?}");
            assert!(write_timeouts >= 1.0, "{metrics}");
        }
    }
    // The healthy user is still connected and served.
    healthy.send(&ClientFrame::Ping).await;
    assert_eq!(healthy.frame().await, ServerFrame::Pong);
    // The server let go of the socket too: reading what was buffered ends in a close
    // (1013) or the end of the stream, never in a wait.
    let mut stalled = stalled;
    let code = stalled.closed().await;
    assert!(matches!(code, None | Some(1013)), "{code:?}");
    healthy.close().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_answering_pings_is_closed_and_removed() {
    let server = TestServer::start_with(|c| {
        c.heartbeat_interval = Duration::from_millis(200);
        c.heartbeat_timeout = Duration::from_millis(300);
        c.sweep_interval = Duration::from_millis(100);
        c.close_timeout = Duration::from_millis(500);
    })
    .await;
    let silent = server.connect("silent").await; // never reads, so never answers a ping
    let mut alive = server.connect("alive").await;

    // The live client keeps reading (its library answers pings meanwhile).
    assert_eq!(alive.recv_within(Duration::from_millis(1500)).await, None);
    server
        .wait_until("the silent connection is removed", WAIT, |s| {
            s.manager().connections_of(&user("silent")).is_empty()
        })
        .await;
    assert!(server.manager().get_stats().heartbeat_timeouts >= 1);
    assert_eq!(server.manager().connections_of(&user("alive")).len(), 1);
    alive.send(&ClientFrame::Ping).await;
    assert_eq!(alive.frame().await, ServerFrame::Pong);
    drop(silent);
    alive.close().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_message_closes_with_1009() {
    let server = TestServer::start().await;
    let mut c = server.connect("alice").await;
    let huge = format!(
        r#"{{"type":"refresh_token","token":"{}"}}"#,
        "a".repeat(20 * 1024)
    );
    c.send_text(&huge).await;
    assert_eq!(c.closed().await, Some(1009));
    server
        .wait_until("the connection is removed", WAIT, |s| {
            s.manager().connection_count() == 0
        })
        .await;
    // Others are unaffected.
    let mut b = server.connect("bob").await;
    b.send(&ClientFrame::Ping).await;
    assert_eq!(b.frame().await, ServerFrame::Pong);
    b.close().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_frames_get_error_frames_and_repeated_abuse_closes_1008() {
    let server = TestServer::start().await;
    let mut c = server.connect("alice").await;
    let cases: [(&str, ErrorCode, &str); 5] = [
        ("not json", ErrorCode::BadRequest, "malformed JSON"),
        (r#"{"type":"subscribe"}"#, ErrorCode::UnknownType, "type"),
        (r#"{"type":"ack","seq":"x"}"#, ErrorCode::BadRequest, "seq"),
        (
            r#"{"type":"ping","extra":1}"#,
            ErrorCode::BadRequest,
            "extra",
        ),
        (r#"[1,2]"#, ErrorCode::BadRequest, "object"),
    ];
    for (text, code, names) in cases {
        c.send_text(text).await;
        match c.frame().await {
            ServerFrame::Error(e) => {
                assert_eq!(e.code, code, "{text}");
                assert!(e.message.contains(names), "{text}: {}", e.message);
            }
            other => panic!("{text}: expected an error frame, got {other:?}"),
        }
    }
    c.send_message(Message::binary(vec![1u8, 2, 3])).await;
    assert!(matches!(c.frame().await, ServerFrame::Error(e) if e.code == ErrorCode::BadRequest));
    // Still served after a few bad frames.
    c.send(&ClientFrame::Ping).await;
    assert_eq!(c.frame().await, ServerFrame::Pong);
    // 6 bad so far; the limit is 10, so the 11th closes.
    for _ in 0..4 {
        c.send_text("{").await;
        assert!(matches!(c.frame().await, ServerFrame::Error(_)));
    }
    c.send_text("{").await;
    assert_eq!(c.closed().await, Some(1008));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_connections_opened_and_closed_leave_nothing_behind() {
    let server = TestServer::start_with(|c| c.history_max_events = 3).await;
    for batch in 0..10u64 {
        let mut handles = Vec::new();
        for i in 0..100u64 {
            let n = batch * 100 + i;
            let name = format!("churn-{}", n % 250);
            let token = server.token(&name);
            let req = server.request(&token, "");
            let manager = server.manager().clone();
            handles.push(tokio::spawn(async move {
                let (mut ws, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(req))
                    .await
                    .expect("connect in time")
                    .expect("connect");
                let first = tokio::time::timeout(WAIT, ws.next())
                    .await
                    .expect("hello in time");
                assert!(matches!(first, Some(Ok(Message::Text(_)))));
                if n % 4 == 0 {
                    manager
                        .emit_critical_event(&user(&name), custom(n))
                        .await
                        .expect("emit");
                }
                if n % 2 == 0 {
                    let _ = ws.close(None).await;
                    let _ = tokio::time::timeout(WAIT, async {
                        while let Some(Ok(_)) = ws.next().await {}
                    })
                    .await;
                }
                // The odd ones just drop the TCP connection.
            }));
        }
        for h in handles {
            h.await.expect("client");
        }
    }
    server
        .wait_until("every connection is removed", WAIT, |s| {
            s.manager().connection_count() == 0
        })
        .await;
    let stats = server.manager().get_stats();
    assert_eq!(stats.users, 0, "registry entries left: {stats:?}");
    assert_eq!(stats.connections_opened, 1000);
    assert_eq!(stats.connections_closed, 1000);
    // History holds only users with events, each within its bound.
    assert!(stats.history_users <= 250, "{stats:?}");
    assert!(stats.history_events <= 3 * stats.history_users, "{stats:?}");
    server.stop().await;
}
