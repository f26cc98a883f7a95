//! Runs published through three `agentwire-server` processes with `--run-lifecycle
//! enforce` on one Redis, and on a 3-master Redis Cluster, keep their lifecycle as one node
//! would: runs whose events each go to one node and again, as a retry under the same
//! `event_id`, to another are stored and delivered well-formed and once; every violation
//! (an event before the run started, an event after its end) is answered 409
//! `run_violation` by whichever node received it and stored nowhere; and `agent_started`
//! of one run sent to the three nodes at once, under three ids, is accepted exactly once.
//!
//! Each test runs its own `redis-server` (agentwire-redis's `testing` feature), stopped by
//! PID; without one these tests say `skipped:` and pass, under `CI=true` they fail.

mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;

use agentwire_redis::testing::{self, RedisCluster, RedisServer};
use futures_util::future::join_all;
use serde_json::{Value, json};

use support::nodes::{API_KEY, Read, Target, Ws, http, node_command, publish, start};
use support::{ServerProcess, WAIT};

/// Runs each user publishes, one after another.
const RUNS_PER_USER: usize = 10;

/// The five critical events of a run, in order.
const STEPS: [&str; 5] = [
    "agent_started",
    "agent_thinking",
    "tool_executing",
    "tool_completed",
    "agent_completed",
];

/// Three nodes of one deployment under a fresh prefix on the Redis at `target`, enforcing
/// the run lifecycle.
async fn three_nodes(target: &Target, label: &str) -> Vec<ServerProcess> {
    let prefix = testing::unique_prefix(label);
    let mut nodes = Vec::new();
    for _ in 0..3 {
        nodes.push(
            start(node_command(
                target,
                &prefix,
                &["--run-lifecycle", "enforce"],
            ))
            .await,
        );
    }
    nodes
}

/// Event `step` (an index into [`STEPS`]) of `run` for `user`, under `event_id`.
fn run_event(user: &str, run: &str, step: usize, event_id: &str) -> Value {
    let data = match STEPS[step] {
        "agent_started" => json!({"agent_name": "cluster"}),
        "agent_thinking" => json!({"thought": "Look it up.", "step": 1}),
        "tool_executing" => json!({"tool_call_id": "tc1", "tool_name": "search"}),
        "tool_completed" => json!({"tool_call_id": "tc1", "tool_name": "search", "result": 1}),
        _ => json!({"result": "done"}),
    };
    json!({"user_id": user, "type": STEPS[step], "thread_id": "t1", "run_id": run,
           "event_id": event_id, "data": data})
}

/// Asserts that `answer` is a 409 `run_violation` naming the event's type.
fn assert_violation(node: usize, answer: &support::nodes::Answer) {
    assert_eq!(answer.status, 409, "node {node}: {}", answer.body);
    let body = answer.json();
    assert_eq!(
        body["error"], "run_violation",
        "node {node}: {}",
        answer.body
    );
    assert_eq!(body["field"], "type", "node {node}: {}", answer.body);
}

/// Publishes step 1 of `run` (a step that needs the run started and not ended) on
/// `nodes[node]`, and checks that it is refused as a run violation.
async fn publish_violation(
    nodes: &[SocketAddr],
    node: usize,
    user: &str,
    run: &str,
    event_id: &str,
) {
    let answer = publish(nodes[node], &run_event(user, run, 1, event_id)).await;
    assert_violation(node, &answer);
}

/// The seq of the one event of a 200 answer.
fn seq_of(node: usize, answer: &support::nodes::Answer) -> u64 {
    assert_eq!(answer.status, 200, "node {node}: {}", answer.body);
    answer.json()["results"][0]["seq"]
        .as_u64()
        .unwrap_or_else(|| panic!("node {node}: no seq in {}", answer.body))
}

/// Publishes `user`'s runs: each event to one node and again to the next (the same body:
/// a retry), a violation before each run's start and after its end, each on another node.
async fn publish_runs(nodes: &[SocketAddr], u: usize, user: &str) {
    let mut next_seq = 1;
    for r in 0..RUNS_PER_USER {
        let run = format!("run-{r}");
        // Spread over the nodes by user, run and step, so a run's events cross nodes.
        let node_of = |step: usize| (u * 7 + r * 3 + step) % nodes.len();
        let early = format!("{run}-early");
        publish_violation(nodes, node_of(7), user, &run, &early).await;
        for step in 0..STEPS.len() {
            let body = run_event(user, &run, step, &format!("{run}-{step}"));
            let first = node_of(step);
            let seq = seq_of(first, &publish(nodes[first], &body).await);
            assert_eq!(seq, next_seq, "{user} {run} step {step}");
            next_seq += 1;
            let retry = (first + 1) % nodes.len();
            let again = seq_of(retry, &publish(nodes[retry], &body).await);
            assert_eq!(
                again, seq,
                "{user} {run} step {step}: the retry is the first acceptance"
            );
        }
        let late = format!("{run}-late");
        publish_violation(nodes, node_of(11), user, &run, &late).await;
    }
}

/// Reads `user`'s delivered events on `ws` until `count` have come (or the wait ends):
/// `(seq, run_id, type)` each.
async fn delivered(mut ws: Ws, count: usize) -> Vec<(u64, String, String)> {
    let mut out = Vec::new();
    while out.len() < count {
        match ws.next(WAIT).await {
            Read::Frame(f) if f["seq"].is_u64() => out.push((
                f["seq"].as_u64().unwrap_or_default(),
                f["run_id"].as_str().unwrap_or_default().to_owned(),
                f["type"].as_str().unwrap_or_default().to_owned(),
            )),
            Read::Frame(_) => {}
            Read::Closed(code) => panic!("closed with {code:?} after {} events", out.len()),
            Read::Nothing => break,
        }
    }
    ws.close().await;
    out
}

/// Asserts that `events` (seq, run, type) are `RUNS_PER_USER` whole runs, each once and in
/// order, with seqs 1, 2, 3, …
fn assert_well_formed(user: &str, what: &str, events: &[(u64, String, String)]) {
    let seqs: Vec<u64> = events.iter().map(|e| e.0).collect();
    let expected: Vec<u64> = (1..=(RUNS_PER_USER * STEPS.len()) as u64).collect();
    assert_eq!(
        seqs, expected,
        "{user} ({what}): every event once, in order"
    );
    let mut runs: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (_, run, ty) in events {
        runs.entry(run).or_default().push(ty);
    }
    assert_eq!(runs.len(), RUNS_PER_USER, "{user} ({what}): {runs:?}");
    for (run, types) in runs {
        assert_eq!(types, STEPS, "{user} {run} ({what})");
    }
}

/// `users` users, each followed by a WebSocket on one node, publish their runs through the
/// three nodes; then what was delivered and what each node's history holds are whole runs;
/// then three nodes race `agent_started` of one run, twenty times.
async fn runs_hold_across(target: Target, label: &str, users: usize) {
    let procs = three_nodes(&target, label).await;
    let nodes: Vec<SocketAddr> = procs.iter().map(|p| p.addr).collect();
    let names: Vec<String> = (0..users).map(|u| format!("{label}-u{u}")).collect();

    let mut followers = Vec::new();
    for (u, user) in names.iter().enumerate() {
        let (ws, _) = Ws::connect(nodes[(u + 2) % 3], user, "")
            .await
            .unwrap_or_else(|e| panic!("{user}: {e}"));
        followers.push(tokio::spawn(delivered(ws, RUNS_PER_USER * STEPS.len())));
    }
    join_all(
        names
            .iter()
            .enumerate()
            .map(|(u, user)| publish_runs(&nodes, u, user)),
    )
    .await;

    for (user, follower) in names.iter().zip(followers) {
        let seen = follower.await.expect("the follower");
        assert_well_formed(user, "delivered", &seen);
    }
    for (u, user) in names.iter().enumerate() {
        let node = u % 3;
        let r = http(
            nodes[node],
            "GET",
            &format!("/v1/users/{user}/events?limit=100"),
            Some(API_KEY),
            None,
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.body);
        let stored: Vec<(u64, String, String)> = r.json()["events"]
            .as_array()
            .expect("events")
            .iter()
            .map(|e| {
                (
                    e["seq"].as_u64().unwrap_or(0),
                    e["run_id"].as_str().unwrap_or_default().to_owned(),
                    e["type"].as_str().unwrap_or_default().to_owned(),
                )
            })
            .collect();
        assert_well_formed(user, &format!("history on node {node}"), &stored);
    }

    // agent_started of one run, under three ids, on the three nodes at once.
    let racer = format!("{label}-racer");
    for k in 0..20 {
        let run = format!("race-{k}");
        let answers = join_all(nodes.iter().enumerate().map(|(i, addr)| {
            let body = run_event(&racer, &run, 0, &format!("{run}-node{i}"));
            async move { publish(*addr, &body).await }
        }))
        .await;
        let accepted = answers.iter().filter(|a| a.status == 200).count();
        assert_eq!(accepted, 1, "{run}: exactly one agent_started accepted");
        for (i, a) in answers.iter().enumerate() {
            if a.status != 200 {
                assert_violation(i, a);
            }
        }
    }
    let r = http(
        nodes[1],
        "GET",
        &format!("/v1/users/{racer}/events?limit=100"),
        Some(API_KEY),
        None,
    )
    .await;
    assert_eq!(
        r.json()["events"].as_array().map(Vec::len),
        Some(20),
        "{}",
        r.body
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_runs_through_three_nodes_are_whole_and_once() {
    let Some(redis) = testing::require("three nodes on Redis", RedisServer::start()) else {
        return;
    };
    // 50 users × 10 runs.
    runs_hold_across(Target::Standalone(redis.url()), "runs", 50).await;
    drop(redis);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_through_three_nodes_on_a_redis_cluster_are_whole_and_once() {
    let Some(cluster) = testing::require("three nodes on a cluster", RedisCluster::start(3)) else {
        return;
    };
    // 20 users × 10 runs: the same rules with each user's keys on one of three masters.
    runs_hold_across(Target::Cluster(cluster.urls()), "cruns", 20).await;
    drop(cluster);
}
