//! End to end: the run lifecycle lives in the broker (issues 13, 14 and 15). The publish
//! API sends run guards, so its runs and those of embedded emitters are one state; a
//! publisher's runs are bounded by its share (429 `too_many_runs`), and another key's runs
//! in progress are never evicted for it; a body for several users is atomic per user; the
//! run-state metrics say what happened.

use agentwire::emitter::{EmitterError, RunContext, WebSocketEmitterFactory};
use agentwire::protocol::RunViolation;
use agentwire_e2e::{API_KEY, HttpResponse, TestServer, metric};
use serde_json::{Value, json};

const OTHER_KEY: &str = "agentwire-e2e-second-api-key";

fn event(user: &str, ty: &str, run: &str, data: Value) -> Value {
    json!({"user_id": user, "type": ty, "thread_id": "t1", "run_id": run, "data": data})
}

fn start(user: &str, run: &str) -> Value {
    event(user, "agent_started", run, json!({"agent_name": "e2e"}))
}

fn thinking(user: &str, run: &str) -> Value {
    event(user, "agent_thinking", run, json!({"thought": "…"}))
}

fn completed(user: &str, run: &str) -> Value {
    event(user, "agent_completed", run, json!({"result": "done"}))
}

fn seqs(r: &HttpResponse) -> Vec<u64> {
    assert_eq!(r.status, 200, "{}", r.body);
    r.json()["results"]
        .as_array()
        .expect("results")
        .iter()
        .map(|x| x["seq"].as_u64().expect("seq"))
        .collect()
}

fn refused(r: &HttpResponse, status: u16, error: &str, field: &str) -> String {
    assert_eq!(r.status, status, "{}", r.body);
    let body = r.json();
    assert_eq!(body["error"], error, "{}", r.body);
    assert_eq!(body["field"], field, "{}", r.body);
    body["message"].as_str().expect("message").to_owned()
}

/// One API key's runs in progress are bounded by `--max-runs-per-key`: beyond it a new run
/// is 429 `too_many_runs` (with `Retry-After`, nothing published), another key still starts
/// runs, the key's own runs go on, and an ended run gives its place back. The refusals show
/// in the metrics by bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keys_share_of_runs_is_bounded_and_no_other_key_pays_for_it() {
    let server = TestServer::start_with(|c| {
        c.api_keys = vec![API_KEY.into(), OTHER_KEY.into()];
        c.max_runs_per_key = 2;
    })
    .await;
    assert_eq!(seqs(&server.publish(&start("alice", "a1")).await), [1]);
    assert_eq!(seqs(&server.publish(&start("alice", "a2")).await), [2]);
    let r = server.publish(&start("alice", "a3")).await;
    let message = refused(&r, 429, "too_many_runs", "run_id");
    assert!(message.contains("--max-runs-per-key"), "{message}");
    assert!(message.contains("nothing was published"), "{message}");
    assert_eq!(r.header("retry-after"), Some("1"));
    // Another key's share is its own.
    assert_eq!(
        seqs(&server.publish_as(OTHER_KEY, &start("alice", "b1")).await),
        [3]
    );
    // The first key's runs in progress go on.
    assert_eq!(seqs(&server.publish(&thinking("alice", "a1")).await), [4]);
    assert_eq!(seqs(&server.publish(&thinking("alice", "a2")).await), [5]);
    assert_eq!(seqs(&server.publish(&completed("alice", "a1")).await), [6]);
    assert_eq!(seqs(&server.publish(&start("alice", "a3")).await), [7]);
    let text = server.metrics().await;
    assert_eq!(
        metric(
            &text,
            "agentwire_runs_refused_total{bound=\"max_runs_per_key\"}"
        ),
        Some(1.0)
    );
    assert_eq!(metric(&text, "agentwire_runs_in_progress"), Some(3.0));
    assert_eq!(metric(&text, "agentwire_run_states"), Some(4.0));
    assert!(metric(&text, "agentwire_run_state_bytes").is_some_and(|b| b > 0.0));
    assert_eq!(
        metric(&text, "agentwire_publish_requests_total{status=\"429\"}"),
        Some(1.0)
    );
    server.stop().await;
}

/// A body for several users goes to the broker as one batch per user, each checked and
/// appended atomically: a violation refuses its user's events, and the other users' events
/// of the body are published — the answer names the refused event and what was accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_for_several_users_is_atomic_per_user() {
    let server = TestServer::start().await;
    let body = json!([
        start("alice", "r1"),
        thinking("bob", "r9"),
        start("bob", "r8"),
        thinking("alice", "r1"),
    ]);
    let r = server.publish(&body).await;
    let message = refused(&r, 409, "run_violation", "[1].type");
    assert!(message.starts_with("NotStarted: "), "{message}");
    assert!(
        message.contains("the events [0], [3] were accepted"),
        "{message}"
    );
    let history = |user: &'static str| {
        let server = &server;
        async move {
            let path = format!("/v1/users/{user}/events");
            server.http("GET", &path, Some(API_KEY)).await.json()["last_seq"].clone()
        }
    };
    assert_eq!(history("alice").await, 2);
    assert_eq!(history("bob").await, 0, "bob's events were all refused");
    let text = server.metrics().await;
    assert_eq!(
        metric(
            &text,
            "agentwire_run_violations_total{violation=\"NotStarted\"}"
        ),
        Some(1.0)
    );
    server.stop().await;
}

/// An emitter embedded in the server's process and the publish API report on one run:
/// each sees what the other did, and each is refused what the other made wrong.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_emitters_and_the_publish_api_share_one_run() {
    let server = TestServer::start().await;
    let emitter =
        WebSocketEmitterFactory::new(server.manager().clone()).create_emitter(RunContext::new(
            "alice".parse().expect("user"),
            "t1".parse().expect("thread"),
            "r1".parse().expect("run"),
        ));
    emitter
        .emit_agent_started("embedded")
        .await
        .expect("started");
    let r = server.publish(&start("alice", "r1")).await;
    let message = refused(&r, 409, "run_violation", "type");
    assert!(message.starts_with("AlreadyStarted: "), "{message}");
    let open = event(
        "alice",
        "tool_executing",
        "r1",
        json!({"tool_call_id": "tc1", "tool_name": "search", "arguments": {}}),
    );
    assert_eq!(seqs(&server.publish(&open).await), [2]);
    emitter
        .emit_tool_completed("tc1", "search", json!([1]), false, None)
        .await
        .expect("the call the publish API opened");
    assert_eq!(seqs(&server.publish(&completed("alice", "r1")).await), [4]);
    assert!(matches!(
        emitter.emit_agent_thinking("late", None).await,
        Err(EmitterError::Violation(RunViolation::AfterTerminal { .. }))
    ));
    server.stop().await;
}
