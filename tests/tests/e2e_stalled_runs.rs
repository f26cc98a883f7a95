//! End to end: the stall watchdog against a real server. A run whose publisher stops after
//! `tool_executing` is ended by the server with `agent_error` code `stalled` (retryable),
//! seen once by a connected client and once by one that connects later; the publisher's
//! late event gets 409; the run's own timeout (`stall_timeout_ms`) and the heartbeat
//! endpoint (`POST /v1/users/{user_id}/runs/{run_id}/heartbeat`) keep a run alive, and
//! clients see nothing of a heartbeat.

use std::time::Duration;

use agentwire::protocol::{EventData, EventEnvelope, STALLED_CODE};
use agentwire_e2e::{API_KEY, Received, TestServer, metric};
use serde_json::{Value, json};

/// The server's stall timeout in these tests: short, so they run quickly; the assertions
/// do not measure it.
const STALL: Duration = Duration::from_secs(1);

fn event(user: &str, ty: &str, run: &str, data: Value) -> Value {
    json!({"user_id": user, "type": ty, "thread_id": "t1", "run_id": run, "data": data})
}

async fn server() -> TestServer {
    TestServer::start_with(|c| c.run_stall_timeout = STALL).await
}

fn stalled(e: &EventEnvelope) -> bool {
    matches!(&e.event.data, EventData::AgentError(d)
        if d.code.as_deref() == Some(STALLED_CODE) && d.retryable)
}

fn heartbeat_path(user: &str, run: &str) -> String {
    format!("/v1/users/{user}/runs/{run}/heartbeat")
}

#[tokio::test]
async fn a_silent_run_is_ended_as_stalled_once_for_every_client() {
    let server = server().await;
    let mut live = server.connect("alice").await;
    let epoch = live.established.clone().expect("established").epoch;
    for e in [
        event("alice", "agent_started", "r1", json!({"agent_name": "e2e"})),
        event(
            "alice",
            "tool_executing",
            "r1",
            json!({"tool_call_id": "tc1", "tool_name": "search"}),
        ),
    ] {
        assert_eq!(server.publish(&e).await.status, 200);
    }
    assert_eq!(live.event().await.seq.get(), 1);
    assert_eq!(live.event().await.seq.get(), 2);
    let ended = live.event().await;
    assert_eq!(ended.seq.get(), 3);
    assert!(stalled(&ended), "the run ended with {:?}", ended.event.data);
    assert_eq!(ended.event.run_id.as_ref().map(|r| r.as_str()), Some("r1"));
    // A client that connects later reads it from history, once.
    let mut later = server
        .connect_query("alice", &format!("?last_seq=0&epoch={epoch}"))
        .await;
    let seqs: Vec<u64> = [
        later.event().await,
        later.event().await,
        later.event().await,
    ]
    .iter()
    .map(|e| e.seq.get())
    .collect();
    assert_eq!(seqs, [1, 2, 3]);
    // The publisher comes back too late.
    let late = event(
        "alice",
        "tool_completed",
        "r1",
        json!({"tool_call_id": "tc1", "tool_name": "search", "result": 1}),
    );
    let r = server.publish(&late).await;
    assert_eq!(r.status, 409, "{}", r.body);
    assert_eq!(r.json()["error"], "run_violation");
    assert!(r.body.contains("AfterTerminal"), "{}", r.body);
    // Nothing more comes, to either client.
    for c in [&mut live, &mut later] {
        assert!(
            !matches!(c.recv_within(STALL * 3).await, Some(Received::Frame(_))),
            "a second frame after the run ended"
        );
    }
    let m = server.metrics().await;
    assert_eq!(
        metric(&m, "agentwire_runs_stalled_total{reason=\"timeout\"}"),
        Some(1.0)
    );
    let r = server
        .http("POST", &heartbeat_path("alice", "r1"), Some(API_KEY))
        .await;
    assert_eq!(r.status, 409, "{}", r.body);
    server.stop().await;
}

#[tokio::test]
async fn heartbeats_and_the_runs_own_timeout_keep_it_alive() {
    let server = server().await;
    let mut client = server.connect("bob").await;
    // `patient` may be silent far longer than the server's timeout; `beating` is kept
    // alive by heartbeats alone.
    for e in [
        event(
            "bob",
            "agent_started",
            "patient",
            json!({"stall_timeout_ms": 3_600_000}),
        ),
        event("bob", "agent_started", "beating", json!({})),
    ] {
        assert_eq!(server.publish(&e).await.status, 200);
    }
    assert_eq!(client.event().await.seq.get(), 1);
    assert_eq!(client.event().await.seq.get(), 2);
    for _ in 0..8 {
        let r = server
            .http("POST", &heartbeat_path("bob", "beating"), Some(API_KEY))
            .await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.json()["state"], "running");
        // Nothing is delivered for a heartbeat, and no run stalls meanwhile.
        assert!(
            client.recv_within(STALL / 4).await.is_none(),
            "a frame while both runs were alive"
        );
    }
    // The heartbeats stop: `beating` stalls, `patient` does not.
    let ended = client.event().await;
    assert!(stalled(&ended));
    assert_eq!(
        ended.event.run_id.as_ref().map(|r| r.as_str()),
        Some("beating")
    );
    assert!(client.recv_within(STALL * 3).await.is_none());
    let r = server
        .http(
            "POST",
            &heartbeat_path("bob", "never-started"),
            Some(API_KEY),
        )
        .await;
    assert_eq!(
        (r.status, r.json()["error"].clone()),
        (404, json!("not_found"))
    );
    let r = server
        .http("POST", &heartbeat_path("bob", "patient"), None)
        .await;
    assert_eq!(r.status, 401);
    let r = server
        .http("POST", &heartbeat_path("bob", "patient"), Some(API_KEY))
        .await;
    assert_eq!(r.status, 200);
    server.stop().await;
}

/// Three `agentwire-server` nodes on one Redis (`--broker redis`), a client of the user on
/// two of them, the run's events published through two others: when the publisher goes
/// silent, exactly one node ends the run, every client sees the `stalled` error once,
/// and a heartbeat through the third node keeps another run alive on all of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_on_redis_end_a_stalled_run_once() {
    use agentwire::server::BrokerKind;

    let redis = std::net::TcpStream::connect("127.0.0.1:6379")
        .err()
        .map(|e| format!("no Redis on 127.0.0.1:6379 ({e})"));
    if !agentwire_e2e::prerequisite(redis, "three nodes on Redis") {
        return;
    }
    let prefix = format!("e2e-stall-{}:", agentwire::protocol::EventId::generate());
    let mut nodes = Vec::new();
    for _ in 0..3 {
        let prefix = prefix.clone();
        nodes.push(
            TestServer::start_with(move |c| {
                c.run_stall_timeout = STALL;
                c.broker = BrokerKind::Redis;
                c.redis_url = Some("redis://127.0.0.1:6379".into());
                c.redis_key_prefix = prefix;
            })
            .await,
        );
    }
    let mut on_0 = nodes[0].connect("dana").await;
    let mut on_2 = nodes[2].connect("dana").await;
    let started = |run: &str| event("dana", "agent_started", run, json!({}));
    assert_eq!(nodes[0].publish(&started("silent")).await.status, 200);
    assert_eq!(nodes[0].publish(&started("kept")).await.status, 200);
    let tool = event(
        "dana",
        "tool_executing",
        "silent",
        json!({"tool_call_id": "tc", "tool_name": "search"}),
    );
    assert_eq!(nodes[1].publish(&tool).await.status, 200);
    let think = event("dana", "agent_thinking", "kept", json!({"thought": "…"}));
    assert_eq!(nodes[1].publish(&think).await.status, 200);
    for c in [&mut on_0, &mut on_2] {
        let seqs: Vec<u64> = [
            c.event().await,
            c.event().await,
            c.event().await,
            c.event().await,
        ]
        .iter()
        .map(|e| e.seq.get())
        .collect();
        assert_eq!(seqs, [1, 2, 3, 4]);
    }
    // `kept` hears from its publisher through node 2 only, for three timeouts.
    let until = tokio::time::Instant::now() + STALL * 3;
    while tokio::time::Instant::now() < until {
        let r = nodes[2]
            .http("POST", &heartbeat_path("dana", "kept"), Some(API_KEY))
            .await;
        assert_eq!(r.status, 200, "{}", r.body);
        tokio::time::sleep(STALL / 4).await;
    }
    for c in [&mut on_0, &mut on_2] {
        let ended = c.event().await;
        assert_eq!(ended.seq.get(), 5);
        assert!(stalled(&ended));
        assert_eq!(
            ended.event.run_id.as_ref().map(|r| r.as_str()),
            Some("silent")
        );
    }
    // Then `kept` goes silent too: ended once more, nothing else.
    for c in [&mut on_0, &mut on_2] {
        let ended = c.event().await;
        assert_eq!(ended.seq.get(), 6);
        assert_eq!(
            ended.event.run_id.as_ref().map(|r| r.as_str()),
            Some("kept")
        );
        assert!(
            c.recv_within(STALL * 3).await.is_none(),
            "a second end of a run"
        );
    }
    let mut ended_by_nodes = 0.0;
    for n in &nodes {
        let m = n.metrics().await;
        ended_by_nodes +=
            metric(&m, "agentwire_runs_stalled_total{reason=\"timeout\"}").unwrap_or(0.0);
    }
    assert_eq!(ended_by_nodes, 2.0, "each run ended by exactly one node");
    let late = event(
        "dana",
        "agent_thinking",
        "silent",
        json!({"thought": "back"}),
    );
    assert_eq!(nodes[2].publish(&late).await.status, 409);
    for n in nodes {
        n.stop().await;
    }
}
