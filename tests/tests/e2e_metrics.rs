//! End to end: after a scripted scenario, `/metrics` shows the exact expected values; the
//! health, readiness and admin endpoints answer as documented.

use agentwire::protocol::{ClientFrame, ServerFrame};
use agentwire_e2e::{API_KEY, TestServer, WAIT, agent_started, custom, metric, user};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_show_exact_values_after_a_scripted_scenario() {
    let server = TestServer::start().await;

    // One refused handshake.
    let no_token = server.ws_url("").into_client_request().expect("request");
    assert_eq!(server.refused(no_token).await.0, 401);

    // Two events while alice is offline: replayed on connect.
    server.emit("alice", agent_started("r1")).await;
    server.emit("alice", custom(2)).await;
    let mut alice = server.connect("alice").await;
    assert_eq!(alice.event().await.seq.get(), 1);
    assert_eq!(alice.event().await.seq.get(), 2);
    let mut bob = server.connect("bob").await;
    // A round trip each, so both streams are live before the next emits.
    alice.send(&ClientFrame::Ping).await;
    assert_eq!(alice.frame().await, ServerFrame::Pong);
    bob.send(&ClientFrame::Ping).await;
    assert_eq!(bob.frame().await, ServerFrame::Pong);

    // Three live events: two for alice, one for bob.
    server.emit("alice", custom(3)).await;
    server.emit("alice", custom(4)).await;
    server.emit("bob", custom(1)).await;
    assert_eq!(alice.event().await.seq.get(), 3);
    assert_eq!(alice.event().await.seq.get(), 4);
    assert_eq!(bob.event().await.seq.get(), 1);

    // One bad frame.
    alice.send_text("nope").await;
    assert!(matches!(alice.frame().await, ServerFrame::Error(_)));
    alice
        .send(&ClientFrame::Ack {
            seq: agentwire::protocol::Seq(4),
        })
        .await;

    // The admin API: alice's connection, with its ack, then a disconnect with 1001.
    server
        .wait_until("alice's ack is recorded", WAIT, |s| {
            s.manager().connections_of(&user("alice"))[0]
                .acked_seq
                .get()
                == 4
        })
        .await;
    let list = server
        .http("GET", "/v1/users/alice/connections", Some(API_KEY))
        .await;
    assert_eq!(list.status, 200, "{}", list.body);
    let list = list.json();
    assert_eq!(list["connections"].as_array().map(Vec::len), Some(1));
    assert_eq!(list["connections"][0]["acked_seq"], 4);
    assert_eq!(
        server
            .http("GET", "/v1/users/alice/connections", None)
            .await
            .status,
        401
    );
    assert_eq!(
        server
            .http("POST", "/v1/users/alice/disconnect", Some("wrong key"))
            .await
            .status,
        401
    );
    let off = server
        .http("POST", "/v1/users/alice/disconnect", Some(API_KEY))
        .await;
    assert_eq!(off.status, 200, "{}", off.body);
    assert_eq!(off.json()["disconnected"], 1);
    assert_eq!(alice.closed().await, Some(1001));
    bob.close().await;
    server
        .wait_until("every connection is removed", WAIT, |s| {
            s.manager().connection_count() == 0
        })
        .await;

    let text = server.metrics().await;
    let expect = [
        ("agentwire_connections", 0.0),
        ("agentwire_users", 0.0),
        ("agentwire_connections_opened_total", 2.0),
        ("agentwire_connections_closed_total", 2.0),
        ("agentwire_events_emitted_total", 5.0),
        (
            "agentwire_events_emitted_by_type_total{type=\"agent_started\"}",
            1.0,
        ),
        (
            "agentwire_events_emitted_by_type_total{type=\"custom\"}",
            4.0,
        ),
        (
            "agentwire_events_emitted_by_type_total{type=\"agent_error\"}",
            0.0,
        ),
        ("agentwire_events_replayed_total", 2.0),
        ("agentwire_events_delivered_total", 3.0),
        ("agentwire_replay_gaps_total", 0.0),
        ("agentwire_events_deduplicated_total", 0.0),
        ("agentwire_emit_failures_total", 0.0),
        ("agentwire_evictions_total", 0.0),
        ("agentwire_rejections_user_limit_total", 0.0),
        ("agentwire_rejections_node_full_total", 0.0),
        ("agentwire_slow_consumer_closes_total", 0.0),
        ("agentwire_heartbeat_timeouts_total", 0.0),
        ("agentwire_history_events", 5.0),
        ("agentwire_history_users", 2.0),
        ("agentwire_history_trimmed_total", 0.0),
        // 2 hellos + 5 events + 2 pongs + 1 error frame.
        ("agentwire_frames_written_total", 10.0),
        ("agentwire_publish_to_write_seconds_count", 5.0),
        ("agentwire_client_bad_frames_total", 1.0),
        ("agentwire_write_timeouts_total", 0.0),
        (
            "agentwire_handshake_rejections_total{reason=\"token_missing\"}",
            1.0,
        ),
        ("agentwire_closes_total{code=\"1001\"}", 1.0),
    ];
    for (name, value) in expect {
        assert_eq!(metric(&text, name), Some(value), "{name}\n{text}");
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_readiness() {
    let server = TestServer::start().await;
    let health = server.http("GET", "/healthz", None).await;
    assert_eq!(health.status, 200);
    assert_eq!(health.json()["status"], "ok");
    let ready = server.http("GET", "/readyz", None).await;
    assert_eq!(ready.status, 200);
    assert_eq!(ready.json()["status"], "ready");
    let metrics = server.http("GET", "/metrics", None).await;
    assert!(
        metrics
            .header("content-type")
            .is_some_and(|t| t.starts_with("application/openmetrics-text")),
        "{:?}",
        metrics.headers
    );
    assert!(metrics.body.trim_end().ends_with("# EOF"));
    let bad_user = server
        .http("GET", "/v1/users/%00/connections", Some(API_KEY))
        .await;
    assert_eq!(bad_user.status, 400, "{}", bad_user.body);
    server.stop().await;
}
