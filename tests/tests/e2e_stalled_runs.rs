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
