//! Many `agentwire-server` processes on one Redis (`--broker redis`), and what holds when a
//! node or Redis fails — with real processes, stopped by PID:
//!
//! - three nodes, 200 users on random nodes, publishes on random nodes: each user receives
//!   exactly their events, in order, once;
//! - a node SIGKILLed mid-run: its clients resume on another node, nothing lost, nothing
//!   repeated;
//! - Redis SIGKILLed and started again (with its data): 503 meanwhile, the retries under
//!   the same `event_id`s stored once, subscribers resynced;
//! - Redis back empty: clients are told with `replay_gap` and follow the new epoch;
//! - Redis SIGSTOPped for 3 s: 503s, no crash, no stuck connection, delivery resumes;
//! - two nodes on a 3-master Redis Cluster (`--redis-cluster-nodes`): the same delivery;
//! - delivery receipts across nodes: a client acknowledges on one node, and a publisher
//!   reads the receipt, and is woken from its long poll, on the other;
//! - the receipt webhook on two nodes: an acknowledged run gets no notice (the ack was on
//!   the other node), an unacknowledged run and a stalled run both nodes watched get one
//!   each, from one node.
//!
//! Counts are small (the machine is shared) and nothing asserts on timing. Without
//! `redis-server` these tests say `skipped:` and pass; under `CI=true` they fail.

mod support;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use agentwire_redis::testing::{self, RedisCluster, RedisServer};
use futures_util::future::join_all;
use serde_json::Value;
use tokio::time::Instant;

use support::ServerProcess;
use support::nodes::{
    API_KEY, Live, Read, Seen, Target, Ws, custom, follow, http, metrics, node_command, publish,
    publish_until_accepted, sample, start, wait_for_status,
};

/// How long one scenario may take, start to end, before it fails.
const SCENARIO: Duration = Duration::from_secs(120);

/// The value event `n` of user `i` carries: unique per user, so a user who received
/// another's event would see a value that is not theirs.
fn value(i: usize, n: u64) -> u64 {
    u64::try_from(i).expect("small") * 1_000 + n
}

fn user(i: usize) -> String {
    format!("u{i}")
}

/// Starts `count` nodes on `redis` under `prefix`.
async fn nodes(redis: &RedisServer, prefix: &str, count: usize) -> (Vec<ServerProcess>, Live) {
    nodes_on(&Target::Standalone(redis.url()), prefix, count).await
}

/// Starts `count` nodes on the Redis at `target` under `prefix`.
async fn nodes_on(target: &Target, prefix: &str, count: usize) -> (Vec<ServerProcess>, Live) {
    let mut procs = Vec::new();
    for _ in 0..count {
        procs.push(start(node_command(target, prefix, &[])).await);
    }
    let live = Live::new(procs.iter().map(|p| p.addr));
    (procs, live)
}

/// One follower per user, user `i` first on node `i % nodes`, each done once it has
/// processed `events` events.
fn followers(
    users: usize,
    live: &Live,
    nodes: usize,
    events: usize,
    deadline: Instant,
) -> Vec<tokio::task::JoinHandle<Seen>> {
    (0..users)
        .map(|i| {
            let live = live.clone();
            let first = live.get(i % nodes);
            tokio::spawn(follow(
                user(i),
                live,
                first,
                move |s| s.events.len() >= events,
                deadline,
            ))
        })
        .collect()
}

/// Publishes event `n` of every user at once, each on a random live node, retrying after a
/// 503 with the same `event_id`, and checks each answer's `seq`.
async fn round(live: &Live, users: usize, n: u64, refused: &AtomicU64, deadline: Instant) {
    join_all((0..users).map(|i| async move {
        let body = custom(&user(i), value(i, n), &format!("u{i}-e{n}"));
        let r = publish_until_accepted(live, &body, refused, deadline).await;
        assert_eq!(r.status, 200, "u{i} event {n}: {}", r.body);
        assert_eq!(r.json()["results"][0]["seq"], n + 1, "u{i}: {}", r.body);
    }))
    .await;
}

/// Rounds `0..events`, round `at` in flight while `fault` runs (`fault` starts at once:
/// a fault it begins synchronously is in place before the round's first publish). The
/// number of publishes refused (503 or no answer) and retried.
async fn rounds_through(
    live: &Live,
    users: usize,
    events: u64,
    at: u64,
    fault: impl std::future::Future<Output = ()>,
    deadline: Instant,
) -> u64 {
    let refused = AtomicU64::new(0);
    let mut fault = Some(fault);
    for n in 0..events {
        match fault.take_if(|_| n == at) {
            Some(fault) => {
                tokio::join!(fault, round(live, users, n, &refused, deadline));
            }
            None => round(live, users, n, &refused, deadline).await,
        }
    }
    refused.load(Ordering::Relaxed)
}

/// Every follower processed exactly its user's events `0..events`, in order, with seqs
/// `1..=events` of one epoch, and no connection sent an event twice.
fn assert_exact(seen: &[Seen], events: u64) {
    for (i, s) in seen.iter().enumerate() {
        let values: Vec<u64> = s.events.iter().map(|e| e.2).collect();
        let expected: Vec<u64> = (0..events).map(|n| value(i, n)).collect();
        assert_eq!(values, expected, "u{i}: {s:?}");
        let seqs: Vec<u64> = s.events.iter().map(|e| e.1).collect();
        assert_eq!(seqs, (1..=events).collect::<Vec<_>>(), "u{i}: {s:?}");
        assert_eq!(s.repeated_on_a_connection, 0, "u{i}: {s:?}");
        assert_eq!(s.holes, 0, "u{i}: {s:?}");
        assert!(s.gaps.is_empty(), "u{i}: {s:?}");
    }
}

async fn collect(handles: Vec<tokio::task::JoinHandle<Seen>>) -> Vec<Seen> {
    join_all(handles)
        .await
        .into_iter()
        .map(|r| r.expect("a follower"))
        .collect()
}

/// The `custom` values of `user`'s history, read on `addr`.
async fn history_values(addr: SocketAddr, user: &str) -> Vec<u64> {
    let r = http(
        addr,
        "GET",
        &format!("/v1/users/{user}/events"),
        Some(API_KEY),
        None,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    r.json()["events"]
        .as_array()
        .map(|events| {
            events
                .iter()
                .filter_map(|e| e["data"]["value"].as_u64())
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_deliver_each_users_events_in_order_once() {
    const USERS: usize = 200;
    const EVENTS: u64 = 6;
    let Some(redis) = testing::require("three nodes on one Redis", RedisServer::start()) else {
        return;
    };
    let (procs, live) = nodes(&redis, &testing::unique_prefix("three"), 3).await;
    let deadline = Instant::now() + SCENARIO;
    let clients = followers(USERS, &live, 3, EVENTS as usize, deadline);
    // Users in turn by 20 publishers; each user's events in order, on random nodes: even
    // users one event per request, odd users in batches of three.
    let refused = AtomicU64::new(0);
    join_all((0..20).map(|worker| {
        let live = &live;
        let refused = &refused;
        async move {
            for i in (worker..USERS).step_by(20) {
                let events: Vec<Value> = (0..EVENTS)
                    .map(|n| custom(&user(i), value(i, n), &format!("u{i}-e{n}")))
                    .collect();
                let bodies: Vec<Value> = if i % 2 == 0 {
                    events
                } else {
                    events.chunks(3).map(|c| Value::Array(c.to_vec())).collect()
                };
                let mut next_seq = 1;
                for body in bodies {
                    let r = publish_until_accepted(live, &body, refused, deadline).await;
                    assert_eq!(r.status, 200, "u{i}: {}", r.body);
                    for result in r.json()["results"].as_array().expect("results") {
                        assert_eq!(result["seq"], next_seq, "u{i}: {}", r.body);
                        next_seq += 1;
                    }
                }
            }
        }
    }))
    .await;
    let seen = collect(clients).await;
    assert_exact(&seen, EVENTS);
    assert_eq!(
        refused.load(Ordering::Relaxed),
        0,
        "no node refused a publish"
    );
    // Every node delivered some of it through Redis.
    for p in &procs {
        let text = metrics(p.addr).await;
        assert!(
            sample(&text, "agentwire_redis_messages_delivered_total").is_some_and(|n| n > 0.0),
            "{text}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_nodes_clients_resume_on_another_with_nothing_lost_or_repeated() {
    const USERS: usize = 60;
    const EVENTS: u64 = 10;
    let Some(redis) = testing::require("a node killed mid-run", RedisServer::start()) else {
        return;
    };
    let (mut procs, live) = nodes(&redis, &testing::unique_prefix("kill-node"), 3).await;
    let deadline = Instant::now() + SCENARIO;
    let clients = followers(USERS, &live, 3, EVENTS as usize, deadline);
    // SIGKILL node 0 while a round's publishes are in flight: publishes that reached it
    // are retried elsewhere under the same event_ids.
    let kill = async {
        tokio::time::sleep(Duration::from_millis(20)).await;
        live.remove(0);
        let _ = procs[0].child.kill();
    };
    rounds_through(&live, USERS, EVENTS, EVENTS / 2, kill, deadline).await;
    let _ = procs[0].child.wait();
    let seen = collect(clients).await;
    assert_exact(&seen, EVENTS);
    for (i, s) in seen.iter().enumerate().filter(|(i, _)| i % 3 == 0) {
        assert!(
            s.connections >= 2 && s.closes.contains(&None),
            "u{i} started on the killed node and resumed elsewhere: {s:?}"
        );
    }
    // Stored once: every user's history holds each event once.
    for i in (0..USERS).step_by(7) {
        let expected: Vec<u64> = (0..EVENTS).map(|n| value(i, n)).collect();
        assert_eq!(history_values(live.any(), &user(i)).await, expected, "u{i}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_and_restarted_gives_503s_then_stores_each_retry_once() {
    const USERS: usize = 20;
    const EVENTS: u64 = 8;
    let Some(mut redis) = testing::require(
        "Redis killed and restarted",
        RedisServer::start_persistent(),
    ) else {
        return;
    };
    let (procs, live) = nodes(&redis, &testing::unique_prefix("kill-redis"), 2).await;
    let deadline = Instant::now() + SCENARIO;
    let clients = followers(USERS, &live, 2, EVENTS as usize, deadline);
    let outage = async {
        redis.kill();
        // While Redis is gone: 503 with Retry-After, on every node.
        for p in &procs {
            let r = publish(p.addr, &custom(&user(0), value(0, 3), "u0-e3")).await;
            assert_eq!(r.status, 503, "{}", r.body);
            assert!(r.header("retry-after").is_some(), "{:?}", r.headers);
            wait_for_status(p.addr, "/readyz", 503, support::WAIT).await;
        }
        // It comes back with its data.
        redis.restart().expect("Redis starts again");
    };
    let refused = rounds_through(&live, USERS, EVENTS, 3, outage, deadline).await;
    assert!(refused > 0, "publishes were refused meanwhile");
    let seen = collect(clients).await;
    assert_exact(&seen, EVENTS);
    for i in 0..USERS {
        let expected: Vec<u64> = (0..EVENTS).map(|n| value(i, n)).collect();
        assert_eq!(history_values(live.any(), &user(i)).await, expected, "u{i}");
    }
    let mut resyncs = 0.0;
    for p in &procs {
        wait_for_status(p.addr, "/readyz", 200, support::WAIT).await;
        let text = metrics(p.addr).await;
        resyncs += sample(&text, "agentwire_redis_resyncs_total").unwrap_or_default();
    }
    assert!(resyncs > 0.0, "subscribers were resynced");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_back_empty_gives_clients_a_replay_gap_and_a_new_epoch() {
    const USERS: usize = 10;
    let Some(mut redis) = testing::require("Redis back empty", RedisServer::start()) else {
        return;
    };
    let (_procs, live) = nodes(&redis, &testing::unique_prefix("empty"), 2).await;
    let deadline = Instant::now() + SCENARIO;
    // Three events before, two after: each follower is done with five events and a gap.
    let progress: Arc<Vec<AtomicUsize>> =
        Arc::new((0..USERS).map(|_| AtomicUsize::new(0)).collect());
    let clients: Vec<_> = (0..USERS)
        .map(|i| {
            let live = live.clone();
            let first = live.get(i % 2);
            let progress = progress.clone();
            tokio::spawn(follow(
                user(i),
                live,
                first,
                move |s| {
                    progress[i].store(s.events.len(), Ordering::Relaxed);
                    s.events.len() >= 5 && !s.gaps.is_empty()
                },
                deadline,
            ))
        })
        .collect();
    let refused = AtomicU64::new(0);
    for n in 0..3 {
        round(&live, USERS, n, &refused, deadline).await;
    }
    // Every follower has the three before Redis loses them.
    while progress.iter().any(|p| p.load(Ordering::Relaxed) < 3) {
        assert!(
            Instant::now() < deadline,
            "the first events reach every follower"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    redis.restart_empty().expect("Redis starts again, empty");
    // The new stream starts at seq 1 under a new epoch.
    join_all((0..USERS).map(|i| {
        let live = &live;
        let refused = &refused;
        async move {
            for n in 0..2 {
                let body = custom(&user(i), value(i, 10 + n), &format!("u{i}-new{n}"));
                let r = publish_until_accepted(live, &body, refused, deadline).await;
                assert_eq!(r.status, 200, "{}", r.body);
                assert_eq!(r.json()["results"][0]["seq"], n + 1, "{}", r.body);
            }
        }
    }))
    .await;
    for (i, s) in collect(clients).await.iter().enumerate() {
        assert_eq!(s.gaps, [(1, 3)], "u{i}: the old stream is void: {s:?}");
        let by_epoch = s.events.iter().fold(HashMap::new(), |mut m, e| {
            m.entry(e.0.clone())
                .or_insert_with(Vec::new)
                .push((e.1, e.2));
            m
        });
        assert_eq!(by_epoch.len(), 2, "u{i}: two epochs: {s:?}");
        let (old, new) = (&s.events[0].0, &s.events[4].0);
        assert_eq!(
            by_epoch[old],
            [(1, value(i, 0)), (2, value(i, 1)), (3, value(i, 2))],
            "u{i}"
        );
        assert_eq!(
            by_epoch[new],
            [(1, value(i, 10)), (2, value(i, 11))],
            "u{i}"
        );
        assert_eq!(s.repeated_on_a_connection, 0, "u{i}: {s:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_paused_for_3_s_gives_503s_and_delivery_resumes() {
    const USERS: usize = 20;
    const EVENTS: u64 = 8;
    let Some(redis) = testing::require("Redis paused", RedisServer::start()) else {
        return;
    };
    let (mut procs, live) = nodes(&redis, &testing::unique_prefix("pause"), 2).await;
    let deadline = Instant::now() + SCENARIO;
    let clients = followers(USERS, &live, 2, EVENTS as usize, deadline);
    let pause = async {
        redis.pause().expect("SIGSTOP");
        let paused = Instant::now();
        // A client connecting meanwhile is closed with 1011 (and comes back later).
        let newcomer = Ws::connect(live.any(), "newcomer", "").await;
        assert!(
            matches!(&newcomer, Err(e) if e.contains("Closed(Some(1011))")),
            "{:?}",
            newcomer.map(|c| c.1)
        );
        tokio::time::sleep(Duration::from_secs(3).saturating_sub(paused.elapsed())).await;
        redis.resume().expect("SIGCONT");
    };
    let refused = rounds_through(&live, USERS, EVENTS, 3, pause, deadline).await;
    assert!(refused > 0, "publishes were refused meanwhile");
    let seen = collect(clients).await;
    assert_exact(&seen, EVENTS);
    for p in &mut procs {
        assert!(
            p.child.try_wait().expect("try_wait").is_none(),
            "the node is alive"
        );
        wait_for_status(p.addr, "/readyz", 200, support::WAIT).await;
    }
    // A new client gets the whole stream.
    let late = follow(
        user(0),
        live.clone(),
        None,
        |s| s.events.len() >= EVENTS as usize,
        Instant::now() + support::WAIT,
    )
    .await;
    assert_exact(&[late], EVENTS);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_on_a_redis_cluster_deliver_each_users_events_in_order_once() {
    const USERS: usize = 40;
    const EVENTS: u64 = 4;
    let Some(cluster) = testing::require("nodes on a Redis Cluster", RedisCluster::start(3)) else {
        return;
    };
    // One node's address is enough: the rest of the cluster is discovered.
    let target = Target::Cluster(cluster.urls().into_iter().take(1).collect());
    let (_procs, live) = nodes_on(&target, &testing::unique_prefix("cluster"), 2).await;
    let deadline = Instant::now() + SCENARIO;
    let clients = followers(USERS, &live, 2, EVENTS as usize, deadline);
    // No fault here: its round would come after the last.
    let refused = rounds_through(&live, USERS, EVENTS, EVENTS, async {}, deadline).await;
    assert_eq!(refused, 0);
    let seen = collect(clients).await;
    assert_exact(&seen, EVENTS);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ack_on_one_node_is_read_and_ends_a_long_poll_on_another() {
    let Some(redis) = testing::require("receipts across nodes", RedisServer::start()) else {
        return;
    };
    let (procs, _) = nodes(&redis, &testing::unique_prefix("receipts"), 2).await;
    let (a, b) = (procs[0].addr, procs[1].addr);
    let (mut client, _) = Ws::connect(a, "alice", "").await.expect("alice on node A");
    let run = |ty: &str, data: Value| serde_json::json!({"user_id": "alice", "type": ty, "run_id": "r1", "data": data});
    let r = publish(
        b,
        &serde_json::json!([
            run("agent_started", serde_json::json!({})),
            run("agent_completed", serde_json::json!({"result": "done"})),
        ]),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let mut seqs = Vec::new();
    while seqs.len() < 2 {
        match client.next(Duration::from_secs(10)).await {
            Read::Frame(f) if f["seq"].is_u64() => seqs.push(f["seq"].as_u64()),
            Read::Frame(_) => {}
            other => panic!("alice's events: {other:?}"),
        }
    }
    assert_eq!(seqs, [Some(1), Some(2)]);
    // Node B sees node A's delivery, not yet an ack.
    let deadline = Instant::now() + SCENARIO;
    let path = "/v1/users/alice/runs/r1";
    loop {
        let body = http(b, "GET", path, Some(API_KEY), None).await.json();
        if body["terminal"]["delivered"] == true {
            assert_eq!(body["terminal"]["acked"], false, "{body}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "node B never saw the delivery: {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A long poll on B, waiting before alice acknowledges on A.
    let poll = tokio::spawn(async move {
        http(
            b,
            "GET",
            "/v1/users/alice/runs/r1?wait_acked=60s",
            Some(API_KEY),
            None,
        )
        .await
    });
    loop {
        if sample(&metrics(b).await, "agentwire_receipt_waiters") == Some(1.0) {
            break;
        }
        assert!(Instant::now() < deadline, "the long poll never waited");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    client
        .send(&serde_json::json!({"type": "ack", "seq": 2}))
        .await;
    let answer = poll.await.expect("the long poll's task");
    assert_eq!(answer.status, 200, "{}", answer.body);
    let body = answer.json();
    assert_eq!(
        body["terminal"]["acked"], true,
        "woken by the ack on A: {body}"
    );
    assert_eq!(body["acked_seq"], 2);
    let user = http(b, "GET", "/v1/users/alice/receipts", Some(API_KEY), None)
        .await
        .json();
    assert_eq!(
        (user["delivered_seq"].clone(), user["acked_seq"].clone()),
        (2.into(), 2.into())
    );
    client.close().await;
    drop(procs);
}

/// Reads `client`'s frames up to the event `seq`, which it returns.
async fn read_to(client: &mut Ws, seq: u64) -> Value {
    loop {
        match client.next(Duration::from_secs(10)).await {
            Read::Frame(f) if f["seq"].as_u64() == Some(seq) => return f,
            Read::Frame(_) => {}
            other => panic!("the events up to {seq}: {other:?}"),
        }
    }
}

/// A receiver of webhook notices on 127.0.0.1:0: the bodies it took (each answered 200).
async fn notice_receiver() -> (Arc<std::sync::Mutex<Vec<Value>>>, SocketAddr) {
    let got: Arc<std::sync::Mutex<Vec<Value>>> = Arc::default();
    let store = got.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |body: axum::body::Bytes| {
            let store = store.clone();
            async move {
                let notice = serde_json::from_slice(&body).unwrap_or(Value::Null);
                store.lock().expect("lock").push(notice);
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the receiver");
    let addr = listener.local_addr().expect("its address");
    tokio::spawn(async move { axum::serve(listener, app).await });
    (got, addr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_webhook_of_two_nodes_sends_each_unacked_run_once() {
    let Some(redis) = testing::require("the webhook across nodes", RedisServer::start()) else {
        return;
    };
    let (got, receiver) = notice_receiver().await;
    let url = format!("http://{receiver}/hook");
    let target = Target::Standalone(redis.url());
    let prefix = testing::unique_prefix("webhook");
    let extra = [
        "--receipt-webhook-url",
        url.as_str(),
        "--receipt-webhook-secret",
        "a webhook key of at least thirty-two bytes",
        "--receipt-webhook-after",
        "2s",
    ];
    let a = start(node_command(&target, &prefix, &extra)).await;
    let b = start(node_command(&target, &prefix, &extra)).await;
    let (mut client, _) = Ws::connect(a.addr, "alice", "")
        .await
        .expect("alice on node A");
    let event = |ty: &str, run: &str, data: Value| serde_json::json!({"user_id": "alice", "type": ty, "run_id": run, "data": data});
    let started = |run: &str| event("agent_started", run, serde_json::json!({}));
    let completed = |run: &str| event("agent_completed", run, serde_json::json!({"result": "ok"}));
    // Seen: published on B, acknowledged on A.
    for (node, body) in [(b.addr, started("seen")), (b.addr, completed("seen"))] {
        assert_eq!(publish(node, &body).await.status, 200);
    }
    read_to(&mut client, 2).await;
    client
        .send(&serde_json::json!({"type": "ack", "seq": 2}))
        .await;
    // Unseen: started on A, ended on B, never acknowledged.
    for (node, body) in [(a.addr, started("unseen")), (b.addr, completed("unseen"))] {
        assert_eq!(publish(node, &body).await.status, 200);
    }
    // Stalled: both nodes published an event of it, so both watch it; one ends it.
    let stalls = event(
        "agent_started",
        "silent",
        serde_json::json!({"stall_timeout_ms": 1000}),
    );
    let tool = event(
        "tool_executing",
        "silent",
        serde_json::json!({"tool_call_id": "c1", "tool_name": "t"}),
    );
    assert_eq!(publish(a.addr, &stalls).await.status, 200);
    assert_eq!(publish(b.addr, &tool).await.status, 200);
    let stalled = read_to(&mut client, 7).await;
    assert_eq!(stalled["data"]["code"], "stalled", "{stalled}");

    let deadline = Instant::now() + SCENARIO;
    let total = |name: &'static str| async move {
        let mut sum = 0.0;
        for addr in [a.addr, b.addr] {
            sum += sample(&metrics(addr).await, name).unwrap_or(0.0);
        }
        sum
    };
    loop {
        let sent = total("agentwire_receipt_webhook_sent_total").await;
        let acked = total("agentwire_receipt_webhook_acked_total").await;
        let pending = total("agentwire_receipt_webhook_pending").await;
        if sent + acked >= 3.0 && pending == 0.0 {
            assert_eq!(
                (sent, acked),
                (2.0, 1.0),
                "two notices, one run acknowledged"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "sent {sent}, acked {acked}, pending {pending}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut notices = got.lock().expect("lock").clone();
    notices.sort_by_key(|n| n["run_id"].as_str().map(str::to_owned));
    let runs: Vec<(&str, &str)> = notices
        .iter()
        .map(|n| {
            (
                n["run_id"].as_str().unwrap_or(""),
                n["state"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(
        runs,
        [("silent", "stalled"), ("unseen", "completed")],
        "{notices:?}"
    );
    client.close().await;
    drop((a, b));
}
