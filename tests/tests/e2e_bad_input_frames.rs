//! Bad input, surface 2 of 5: client frames (issue 14). A bad frame is answered with an
//! `error` frame naming the problem and the connection stays served; what the server
//! cannot read closes the connection with the code that says why (1007, 1009); repeated
//! abuse and floods close with 1008. Every case asserts the code, that nothing was
//! published or recorded for the sender, and that another user's stream goes on.

use std::time::Duration;

use agentwire::protocol::{ClientFrame, ErrorCode, ServerFrame};
use agentwire_e2e::{Bystander, Client, Received, TestServer, WAIT, accepted_events, user};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};

/// A token for `user` that expired a minute ago.
fn expired_token(user: &str) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &serde_json::json!({ "sub": user, "exp": now - 60 }),
        &jsonwebtoken::EncodingKey::from_secret(agentwire_e2e::SECRET.as_bytes()),
    )
    .expect("encode")
}

/// Reads until an `error` frame (skipping pings), and returns it.
async fn error_frame(c: &mut Client, case: &str) -> agentwire::protocol::ErrorFrame {
    match c.frame().await {
        ServerFrame::Error(e) => e,
        other => panic!("{case}: expected an error frame, got {other:?}"),
    }
}

/// The sender is still served: a ping gets its pong.
async fn still_open(c: &mut Client, case: &str) {
    c.send(&ClientFrame::Ping).await;
    assert_eq!(c.frame().await, ServerFrame::Pong, "{case}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_frames_get_error_frames_and_touch_no_one_else() {
    // Room for every case below before the bad-frame limit closes the connection.
    let server = TestServer::start_with(|c| c.max_bad_frames = 100).await;
    let mut bystander = Bystander::connect(&server, "bystander").await;
    let mut alice = server.connect("alice").await;
    let bob_token = server.token("bob");
    let expired = expired_token("alice");
    let deep = format!(
        r#"{{"type":"ack","seq":1,"x":{}1{}}}"#,
        "[".repeat(10),
        "]".repeat(10)
    );
    let cases: Vec<(&str, String, ErrorCode, &str)> = vec![
        ("not JSON", "hello".into(), ErrorCode::BadRequest, "JSON"),
        ("an array", "[1,2]".into(), ErrorCode::BadRequest, "object"),
        (
            "no type",
            r#"{"seq":1}"#.into(),
            ErrorCode::BadRequest,
            "type",
        ),
        (
            "an unknown type",
            r#"{"type":"subscribe"}"#.into(),
            ErrorCode::UnknownType,
            "subscribe",
        ),
        (
            "an unknown field",
            r#"{"type":"ping","extra":1}"#.into(),
            ErrorCode::BadRequest,
            "extra",
        ),
        (
            "a key named twice",
            r#"{"type":"ack","seq":1,"seq":999}"#.into(),
            ErrorCode::BadRequest,
            "seq",
        ),
        (
            "an ill-typed field",
            r#"{"type":"ack","seq":"x"}"#.into(),
            ErrorCode::BadRequest,
            "seq",
        ),
        (
            "a negative seq",
            r#"{"type":"ack","seq":-1}"#.into(),
            ErrorCode::BadRequest,
            "seq",
        ),
        ("nested too deep", deep, ErrorCode::TooLarge, "deep"),
        (
            "resume after the first frame",
            r#"{"type":"resume","last_seq":0,"epoch":"e_1"}"#.into(),
            ErrorCode::ResumeNotFirst,
            "first",
        ),
        (
            "a refresh_token that is not a token",
            r#"{"type":"refresh_token","token":"nope"}"#.into(),
            ErrorCode::InvalidToken,
            "token",
        ),
        (
            "another user's token",
            format!(r#"{{"type":"refresh_token","token":"{bob_token}"}}"#),
            ErrorCode::InvalidToken,
            "another user",
        ),
        (
            "an expired token",
            format!(r#"{{"type":"refresh_token","token":"{expired}"}}"#),
            ErrorCode::InvalidToken,
            "token",
        ),
    ];
    let frames_over = "x".repeat(agentwire::protocol::MAX_CLIENT_FRAME_BYTES - 64);
    for (name, text, code, names) in &cases {
        let before = accepted_events(&server);
        alice.send_text(text).await;
        let e = error_frame(&mut alice, name).await;
        assert_eq!(e.code, *code, "{name}: {}", e.message);
        assert!(
            e.message.to_lowercase().contains(&names.to_lowercase()),
            "{name}: {}",
            e.message
        );
        still_open(&mut alice, name).await;
        bystander.untouched_since(&server, before, name).await;
    }
    // A binary frame.
    alice.send_message(Message::binary(vec![1u8, 2, 3])).await;
    assert_eq!(
        error_frame(&mut alice, "binary").await.code,
        ErrorCode::BadRequest
    );
    still_open(&mut alice, "binary").await;
    // No bad ack moved the acknowledged seq.
    let acked: Vec<u64> = server
        .manager()
        .connections_of(&user("alice"))
        .iter()
        .map(|c| c.acked_seq.get())
        .collect();
    assert_eq!(acked, [0], "a refused ack records nothing");
    // A frame just under the size limit that is not a client frame is one more error.
    alice
        .send_text(&format!(r#"{{"type":"ping","x":"{frames_over}"}}"#))
        .await;
    assert!(matches!(
        error_frame(&mut alice, "large").await.code,
        ErrorCode::BadRequest | ErrorCode::TooLarge
    ));
    bystander.still_served(&server, "large").await;
    alice.close().await;
    server.stop().await;
}

/// What closes a connection: each case on a connection of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_the_server_cannot_read_close_with_their_code() {
    let server = TestServer::start().await;
    let mut bystander = Bystander::connect(&server, "bystander").await;
    let cases: Vec<(&str, Message, u16)> = vec![
        (
            "a message over --max-message-size",
            Message::text("x".repeat(20 * 1024)),
            1009,
        ),
        (
            "a text frame that is not UTF-8",
            Message::Frame(Frame::message(
                vec![0xff, 0xfe, 0xfd],
                OpCode::Data(Data::Text),
                true,
            )),
            1007,
        ),
    ];
    for (name, msg, code) in cases {
        let before = accepted_events(&server);
        let mut c = server.connect("alice").await;
        c.send_message(msg).await;
        assert_eq!(c.closed().await, Some(code), "{name}");
        server
            .wait_until("the connection is removed", WAIT, |s| {
                s.manager().connections_of(&user("alice")).is_empty()
            })
            .await;
        bystander.untouched_since(&server, before, name).await;
    }
    // Repeated bad frames: the 11th closes with 1008.
    let mut c = server.connect("alice").await;
    for _ in 0..10 {
        c.send_text("{").await;
        assert!(matches!(c.frame().await, ServerFrame::Error(_)));
    }
    c.send_text("{").await;
    assert_eq!(c.closed().await, Some(1008), "repeated bad frames");
    bystander.still_served(&server, "repeated bad frames").await;
    server.stop().await;
}

/// Issue 14: one client sending frames in a loop held a core. Frames beyond the rate are
/// dropped unread (one `rate_limited` frame says so), and a client that keeps on is
/// closed with 1008.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_flood_is_dropped_then_closed_with_1008() {
    let server = TestServer::start_with(|c| {
        c.client_frame_rate = 20;
        c.client_frame_burst = 20;
    })
    .await;
    let mut bystander = Bystander::connect(&server, "bystander").await;
    let mut flooder = server.connect("alice").await;
    // Twenty acks fit the burst; the acks coalesce into one record of the newest.
    for seq in 1..=20u64 {
        flooder
            .send_text(&format!(r#"{{"type":"ack","seq":{seq}}}"#))
            .await;
    }
    // Then a flood, far faster than 20 frames a second.
    let mut pongs = 0;
    let mut limited = 0;
    for _ in 0..200 {
        flooder.send(&ClientFrame::Ping).await;
    }
    let close = loop {
        match flooder.recv_within(WAIT).await {
            Some(Received::Frame(ServerFrame::Pong)) => pongs += 1,
            Some(Received::Frame(ServerFrame::Error(e))) => {
                assert_eq!(e.code, ErrorCode::RateLimited, "{}", e.message);
                limited += 1;
            }
            Some(Received::Close(code)) => break code,
            Some(other) => panic!("unexpected {other:?}"),
            None => panic!("no close within the wait bound"),
        }
    };
    assert_eq!(close, Some(1008));
    assert_eq!(
        limited, 1,
        "one rate_limited frame for the run of dropped frames"
    );
    assert!(
        pongs < 200,
        "frames past the rate were dropped: {pongs} pongs"
    );
    assert_eq!(accepted_events(&server), 0);
    bystander.still_served(&server, "flood").await;
    let metrics = server.metrics().await;
    assert_eq!(
        agentwire_e2e::metric(&metrics, "agentwire_client_rate_limit_closes_total"),
        Some(1.0)
    );
    assert!(
        agentwire_e2e::metric(&metrics, "agentwire_client_frames_rate_limited_total")
            .is_some_and(|n| n >= 20.0),
        "{metrics}"
    );
    // A well-behaved client on the same node, sending within the rate, is never limited.
    let mut calm = server.connect("carol").await;
    for _ in 0..5 {
        calm.send(&ClientFrame::Ping).await;
        assert_eq!(calm.frame().await, ServerFrame::Pong);
        tokio::time::sleep(Duration::from_millis(60)).await;
    }
    calm.close().await;
    server.stop().await;
}

/// Issue 14: flooders closed with 1008 connected again at once and flooded again, and the
/// loop of handshakes and floods held the node's core. A user closed for its frame rate is
/// refused at the handshake (429 `rate_limited` with `Retry-After`, on `/ws` and
/// `/v1/stream`) until its cool-down ends, then connects as before; what its closed
/// connection kept sending did not keep the 1008 from reaching it; other users connect
/// and are served throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooder_that_comes_straight_back_is_refused_until_its_cooldown_ends() {
    let cooldown = Duration::from_secs(4);
    let server = TestServer::start_with(|c| {
        c.client_frame_rate = 20;
        c.client_frame_burst = 20;
        c.client_frame_cooldown = cooldown;
    })
    .await;
    let mut bystander = Bystander::connect(&server, "bystander").await;
    let mut flooder = server.connect("alice").await;
    // Far past the burst and its debt: the frames after the 1008 are discarded unread.
    for _ in 0..2_000 {
        flooder.send_text(r#"{"type":"ack","seq":1}"#).await;
    }
    assert_eq!(flooder.closed().await, Some(1008), "the flood is closed");
    let metrics = server.metrics().await;
    for name in [
        "agentwire_client_rate_limit_closes_total",
        "agentwire_client_frame_cooldowns_total",
    ] {
        assert_eq!(
            agentwire_e2e::metric(&metrics, name),
            Some(1.0),
            "{metrics}"
        );
    }

    // Straight back: refused before the upgrade, with the documented answer.
    let token = server.token("alice");
    let resp = match server.try_connect(server.request(&token, "")).await {
        Ok(_) => panic!("a flooder coming straight back was upgraded"),
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => resp,
        Err(e) => panic!("expected an HTTP refusal, got {e}"),
    };
    assert_eq!(resp.status().as_u16(), 429);
    let retry_after: u64 = resp
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .expect("Retry-After in whole seconds");
    assert!(
        (1..=cooldown.as_secs()).contains(&retry_after),
        "Retry-After {retry_after} s within the cool-down"
    );
    let body: serde_json::Value =
        serde_json::from_slice(resp.body().as_deref().unwrap_or_default()).expect("JSON body");
    assert_eq!(body["error"], "rate_limited", "{body}");
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.contains("--client-frame-cooldown")),
        "{body}"
    );
    // The event stream shares the handshake's checks.
    let sse = server.http("GET", "/v1/stream", Some(&token)).await;
    agentwire_e2e::assert_error_body(&sse, 429, "rate_limited", None, "/v1/stream");
    assert!(sse.header("retry-after").is_some(), "{:?}", sse.headers);

    // Nobody else is touched: the bystander's stream goes on, a new user connects.
    assert_eq!(accepted_events(&server), 0);
    bystander.still_served(&server, "cool-down").await;
    let carol = server.connect("carol").await;
    let metrics = server.metrics().await;
    assert_eq!(
        agentwire_e2e::metric(
            &metrics,
            r#"agentwire_handshake_rejections_total{reason="rate_limited"}"#
        ),
        Some(1.0),
        "{metrics}"
    );

    // Once the window has passed, the user connects as before.
    tokio::time::sleep(cooldown + Duration::from_millis(200)).await;
    let mut back = server.connect("alice").await;
    still_open(&mut back, "after the cool-down").await;
    back.close().await;
    carol.close().await;
    server.stop().await;
}

/// Acks are cumulative and a burst of them is recorded once, as the newest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_acks_records_the_newest() {
    let server = TestServer::start().await;
    let mut c = server.connect("alice").await;
    for seq in [3u64, 9, 4, 7] {
        c.send_text(&format!(r#"{{"type":"ack","seq":{seq}}}"#))
            .await;
    }
    still_open(&mut c, "acks").await;
    server
        .wait_until("the newest ack is recorded", WAIT, |s| {
            s.manager()
                .connections_of(&user("alice"))
                .iter()
                .all(|i| i.acked_seq.get() == 9)
        })
        .await;
    c.close().await;
    server.stop().await;
}
