//! End to end: `GET /v1/stream`, the Server-Sent Events transport, read by a raw HTTP
//! client — authentication refusals, per-user isolation, resume with `Last-Event-ID` and
//! `?last_seq=&epoch=`, `replay_gap`, the limits it shares with `/ws`, heartbeat comments
//! and the final `close` event.

use std::time::Duration;

use agentwire::protocol::ServerFrame;
use agentwire::server::PerUserPolicy;
use agentwire_e2e::sse::{SseClient, open};
use agentwire_e2e::{Received, TestServer, WAIT, custom, custom_value, metric, token_ttl};

/// Reads `connection_established`, the stream's first message.
async fn established(c: &mut SseClient) -> agentwire::protocol::ConnectionEstablished {
    let m = c.next().await;
    assert_eq!(m.id, None, "connection_established is not a resume point");
    match m.frame() {
        ServerFrame::ConnectionEstablished(e) => e,
        other => panic!("expected connection_established, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_arrive_as_messages_whose_id_is_epoch_and_seq() {
    let server = TestServer::start().await;
    // As from a page on another origin: the answer lets it read the stream.
    let mut c = server
        .sse("alice", "", &[("Origin", "https://app.example")])
        .await;
    let header = |n: &str| {
        c.headers
            .iter()
            .find(|(k, _)| k == n)
            .map(|(_, v)| v.clone())
    };
    assert_eq!(header("content-type").as_deref(), Some("text/event-stream"));
    assert_eq!(header("access-control-allow-origin").as_deref(), Some("*"));
    assert_eq!(header("cache-control").as_deref(), Some("no-cache"));
    assert_eq!(header("x-accel-buffering").as_deref(), Some("no"));
    let hello = established(&mut c).await;
    assert_eq!(c.retry(), Some(1000), "the reconnect hint comes first");
    assert_eq!(hello.user_id.as_str(), "alice");
    for n in 1..=3 {
        server.emit("alice", custom(n)).await;
    }
    for n in 1..=3u64 {
        let (e, id) = c.event().await;
        assert_eq!(e.seq.get(), n);
        assert_eq!(custom_value(&e), Some(n));
        assert_eq!(id, Some(format!("{}:{n}", hello.epoch.as_str())));
    }
    assert_eq!(server.manager().connection_count(), 1);
    drop(c);
    server
        .wait_until("the stream is unregistered", WAIT, |s| {
            s.manager().connection_count() == 0
        })
        .await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_is_refused_without_a_valid_token() {
    let server = TestServer::start().await;
    let refused = |r: Result<SseClient, agentwire_e2e::HttpResponse>| match r {
        Ok(_) => panic!("the stream was expected to be refused"),
        Err(r) => r,
    };
    let r = refused(open(server.addr, "/v1/stream", &[]).await);
    assert_eq!(r.status, 401, "{}", r.body);
    assert_eq!(r.json()["error"], "unauthorized");
    let r = refused(open(server.addr, "/v1/stream?token=not.a.jwt", &[]).await);
    assert_eq!(r.status, 401, "{}", r.body);
    assert_eq!(r.json()["field"], "token");
    let r = refused(
        open(
            server.addr,
            "/v1/stream",
            &[("Authorization", "Bearer not.a.jwt")],
        )
        .await,
    );
    assert_eq!(r.status, 401, "{}", r.body);
    let expired = token_ttl("alice", 0);
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let r = refused(open(server.addr, &format!("/v1/stream?token={expired}"), &[]).await);
    assert_eq!(r.status, 401, "{}", r.body);
    // Two carriers that disagree.
    let auth = format!("Bearer {}", server.token("alice"));
    let query = format!("/v1/stream?token={}", server.token("bob"));
    let r = refused(open(server.addr, &query, &[("Authorization", &auth)]).await);
    assert_eq!(r.status, 400, "{}", r.body);
    // A resume point that is not one.
    for (path, headers, field) in [
        ("/v1/stream", vec![("Last-Event-ID", "7")], "Last-Event-ID"),
        ("/v1/stream?last_seq=7", vec![], "epoch"),
    ] {
        let mut h = vec![("Authorization", auth.as_str())];
        h.extend(headers);
        let r = refused(open(server.addr, path, &h).await);
        assert_eq!(r.status, 400, "{}", r.body);
        assert_eq!(r.json()["field"], field);
    }
    // `?token=` is how an `EventSource` authenticates.
    let mut c = match open(
        server.addr,
        &format!("/v1/stream?token={}", server.token("alice")),
        &[],
    )
    .await
    {
        Ok(c) => c,
        Err(r) => panic!("refused: {} {}", r.status, r.body),
    };
    assert_eq!(established(&mut c).await.user_id.as_str(), "alice");
    let metrics = server.metrics().await;
    assert!(
        metric(
            &metrics,
            "agentwire_sse_rejections_total{reason=\"token_missing\"}"
        )
        .is_some_and(|n| n >= 1.0),
        "{metrics}"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_stream_sees_only_its_own_users_events() {
    let server = TestServer::start().await;
    let mut alice = server.sse("alice", "", &[]).await;
    let mut bob = server.sse("bob", "", &[]).await;
    let mut bob_ws = server.connect("bob").await;
    established(&mut alice).await;
    established(&mut bob).await;
    for n in 1..=5 {
        server.emit("alice", custom(n)).await;
    }
    server.emit("bob", custom(100)).await;
    for n in 1..=5 {
        assert_eq!(custom_value(&alice.event().await.0), Some(n));
    }
    // Bob's first event is his own: none of Alice's came before it.
    assert_eq!(custom_value(&bob.event().await.0), Some(100));
    assert_eq!(custom_value(&bob_ws.event().await), Some(100));
    assert!(
        alice
            .next_within(Duration::from_millis(200))
            .await
            .is_none(),
        "Bob's event reached Alice"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconnect_resumes_after_its_last_event_id() {
    let server = TestServer::start().await;
    let mut c = server.sse("alice", "", &[]).await;
    let hello = established(&mut c).await;
    for n in 1..=3 {
        server.emit("alice", custom(n)).await;
    }
    let mut last_id = None;
    for _ in 1..=3 {
        last_id = c.event().await.1;
    }
    drop(c);
    server
        .wait_until("the stream is unregistered", WAIT, |s| {
            s.manager().connection_count() == 0
        })
        .await;
    for n in 4..=5 {
        server.emit("alice", custom(n)).await;
    }
    // What a browser's `EventSource` sends on its own reconnect; the first URL's older
    // `?last_seq=` loses to it.
    let last_id = last_id.expect("events carry ids");
    let query = format!("?last_seq=1&epoch={}", hello.epoch.as_str());
    let mut again = server
        .sse("alice", &query, &[("Last-Event-ID", &last_id)])
        .await;
    let resumed = established(&mut again).await;
    assert!(resumed.resumed);
    assert_eq!(resumed.epoch, hello.epoch);
    for n in 4..=5u64 {
        let (e, id) = again.event().await;
        assert_eq!((e.seq.get(), custom_value(&e)), (n, Some(n)));
        assert_eq!(id, Some(format!("{}:{n}", hello.epoch.as_str())));
    }
    drop(again);

    // The first connect of a client that holds a position: `?last_seq=&epoch=`.
    let mut first = server.sse("alice", &query, &[]).await;
    assert!(established(&mut first).await.resumed);
    for n in 2..=5u64 {
        assert_eq!(first.event().await.0.seq.get(), n);
    }
    drop(first);

    // A position in another stream: the gap is a message of its own, with the id that
    // moves the client past it.
    let mut gap = server
        .sse("alice", "", &[("Last-Event-ID", "e_gone:2")])
        .await;
    established(&mut gap).await;
    let m = gap.next().await;
    match m.frame() {
        ServerFrame::ReplayGap(g) => {
            assert_eq!(
                m.id,
                Some(format!("{}:{}", hello.epoch.as_str(), g.to_seq.get()))
            );
        }
        other => panic!("expected replay_gap, got {other:?}"),
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_and_websockets_share_the_per_user_limit() {
    let server = TestServer::start_with(|c| {
        c.max_connections_per_user = 2;
        c.per_user_policy = PerUserPolicy::Reject;
    })
    .await;
    let mut ws = server.connect("alice").await;
    let mut stream = server.sse("alice", "", &[]).await;
    established(&mut stream).await;
    // A third of either kind is refused: a stream with 429 before it begins, a WebSocket
    // with 4004.
    let auth = format!("Bearer {}", server.token("alice"));
    match open(server.addr, "/v1/stream", &[("Authorization", &auth)]).await {
        Ok(_) => panic!("a third connection was accepted"),
        Err(r) => {
            assert_eq!(r.status, 429, "{}", r.body);
            assert_eq!(r.json()["error"], "too_many_connections");
        }
    }
    let mut third = server
        .try_connect(server.request(&server.token("alice"), ""))
        .await
        .expect("the handshake itself succeeds");
    assert_eq!(third.recv().await, Received::Close(Some(4004)));
    // Another user is not counted against Alice.
    let mut bob = server.sse("bob", "", &[]).await;
    established(&mut bob).await;
    // Closing the stream frees its place for a WebSocket.
    drop(stream);
    server
        .wait_until("the stream is unregistered", WAIT, |s| {
            s.manager().connection_count() == 2
        })
        .await;
    let mut again = server.connect("alice").await;
    server.emit("alice", custom(1)).await;
    assert_eq!(ws.event().await.seq.get(), 1);
    assert_eq!(again.event().await.seq.get(), 1);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_evicted_stream_ends_with_a_close_event_4003() {
    let server = TestServer::start_with(|c| c.max_connections_per_user = 1).await;
    let mut stream = server.sse("alice", "", &[]).await;
    established(&mut stream).await;
    let _ws = server.connect("alice").await;
    assert_eq!(stream.closed().await, Some(4003));
    let metrics = server.metrics().await;
    assert_eq!(
        metric(&metrics, "agentwire_sse_closes_total{code=\"4003\"}"),
        Some(1.0),
        "{metrics}"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_are_comments_and_an_expired_token_ends_the_stream_with_4002() {
    let server = TestServer::start_with(|c| {
        c.heartbeat_interval = Duration::from_millis(100);
    })
    .await;
    let token = token_ttl("alice", 2);
    let mut c = match open(server.addr, &format!("/v1/stream?token={token}"), &[]).await {
        Ok(c) => c,
        Err(r) => panic!("refused: {} {}", r.status, r.body),
    };
    established(&mut c).await;
    assert_eq!(c.closed().await, Some(4002));
    assert!(c.comments() >= 2, "heartbeat comments: {}", c.comments());
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shutdown_ends_every_stream_with_1001_after_what_was_queued() {
    let server = TestServer::start().await;
    let mut c = server.sse("alice", "", &[]).await;
    established(&mut c).await;
    server.emit("alice", custom(1)).await;
    let stopping = tokio::spawn(server.stop());
    assert_eq!(c.event().await.0.seq.get(), 1);
    assert_eq!(c.closed().await, Some(1001));
    stopping.await.expect("the server stops");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_that_stops_reading_is_cut_by_the_queue_bound_and_the_write_timeout() {
    let server = TestServer::start_with(|c| {
        c.queue_max_frames = 4;
        c.write_timeout = Duration::from_millis(300);
    })
    .await;
    let mut stalled = server.sse("alice", "", &[]).await;
    established(&mut stalled).await;
    let mut bystander = server.sse("bob", "", &[]).await;
    established(&mut bystander).await;
    // Far more than the socket's buffers hold: the stream's queue fills, the manager
    // abandons it (1013), and the close event cannot be handed over either.
    let big = "x".repeat(128 * 1024);
    for _ in 0..200 {
        let event = agentwire::protocol::Event::new(
            None,
            None,
            agentwire::protocol::Custom {
                name: "big".into(),
                value: serde_json::json!(big),
                extra: Default::default(),
            },
        );
        server.emit("alice", event).await;
        if server
            .manager()
            .connections_of(&agentwire_e2e::user("alice"))
            .is_empty()
        {
            break;
        }
    }
    server
        .wait_until("the stalled stream is unregistered", WAIT, |s| {
            s.manager()
                .connections_of(&agentwire_e2e::user("alice"))
                .is_empty()
        })
        .await;
    let metrics = server.metrics().await;
    assert_eq!(
        metric(&metrics, "agentwire_sse_closes_total{code=\"1013\"}"),
        Some(1.0),
        "{metrics}"
    );
    assert!(
        metric(&metrics, "agentwire_sse_write_timeouts_total").is_some_and(|n| n >= 1.0),
        "{metrics}"
    );
    // The TCP connection is gone too: what the socket held is read, then it ends.
    let mut read = 0usize;
    while let Some(m) = stalled.next_within(WAIT).await {
        assert_ne!(
            m.event, "close",
            "the close event could not have been written"
        );
        read += 1;
    }
    assert!(read < 200, "the whole backlog was delivered: {read}");
    // Bob was not held up.
    server.emit("bob", custom(1)).await;
    assert_eq!(bystander.event().await.0.seq.get(), 1);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_router_mounted_in_another_application_serves_streams_too() {
    // axum::serve, not Server::serve: no front door, so no slot to cut a stalled stream
    // by; the rest is the same.
    let manager = agentwire::manager::UnifiedWebSocketManager::in_memory();
    let auth = agentwire::server::Auth::hs256(agentwire_e2e::SECRET.as_bytes()).expect("auth");
    let app = axum::Router::new().merge(agentwire::server::router(manager.clone(), auth));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    let token = token_ttl("alice", 3600);
    let mut c = match open(addr, &format!("/v1/stream?token={token}"), &[]).await {
        Ok(c) => c,
        Err(r) => panic!("refused: {} {}", r.status, r.body),
    };
    established(&mut c).await;
    manager
        .emit_critical_event(&agentwire_e2e::user("alice"), custom(1))
        .await
        .expect("emit");
    assert_eq!(c.event().await.0.seq.get(), 1);
    drop(c);
    task.abort();
}
