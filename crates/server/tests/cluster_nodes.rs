//! Three `agentwire-server` processes on one Redis are one cluster: a user's connection
//! limit holds across them (evict-oldest 4003, reject 4004) and a SIGKILLed node's
//! connections stop counting within the lease; the admin API lists and disconnects a
//! user's connections on every node; a key publishing through three nodes gets its rate
//! once; and Redis paused answers 503s, then everything holds again.
//!
//! Each test runs its own `redis-server` (agentwire-redis's `testing` feature), stopped by
//! PID; without one these tests say `skipped:` and pass, under `CI=true` they fail.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use agentwire_redis::testing::{self, RedisCluster, RedisServer};
use futures_util::future::join_all;
use serde_json::{Value, json};

use support::nodes::{
    API_KEY, Read, Target, Ws, custom, http, metrics, node_command, publish, sample, start,
};
use support::{ServerProcess, WAIT};

/// The connection lease most tests run with: short, so a killed node stops counting soon.
const LEASE: &str = "2s";

/// Three nodes of one deployment on `redis`, with connection lease `lease` and `extra`
/// flags.
async fn three_nodes(
    redis: &RedisServer,
    label: &str,
    lease: &str,
    extra: &[&str],
) -> Vec<ServerProcess> {
    three_nodes_on(&Target::Standalone(redis.url()), label, lease, extra).await
}

/// Three nodes of one deployment on the Redis at `target`, with connection lease `lease`
/// and `extra` flags.
async fn three_nodes_on(
    target: &Target,
    label: &str,
    lease: &str,
    extra: &[&str],
) -> Vec<ServerProcess> {
    let prefix = testing::unique_prefix(label);
    let mut nodes = Vec::new();
    for _ in 0..3 {
        let mut flags = vec!["--connection-lease", lease];
        flags.extend_from_slice(extra);
        nodes.push(start(node_command(target, &prefix, &flags)).await);
    }
    // Every node's control channel is up (it announces itself as it comes up): an admin
    // request on one node lists all three.
    let first = nodes[0].addr;
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let r = http(
            first,
            "GET",
            "/v1/users/nobody/connections",
            Some(API_KEY),
            None,
        )
        .await;
        let answered = r.json()["unanswered_nodes"].as_array().map(Vec::len) == Some(0);
        if r.status == 200 && answered && known_nodes(&nodes).await == 3 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the nodes never met: {}",
            r.body
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    nodes
}

/// How many distinct nodes answered `node` across the three nodes' admin answers.
async fn known_nodes(nodes: &[ServerProcess]) -> usize {
    let mut names = Vec::new();
    for n in nodes {
        let r = http(
            n.addr,
            "GET",
            "/v1/users/nobody/connections",
            Some(API_KEY),
            None,
        )
        .await;
        if let Some(name) = r.json()["node"].as_str() {
            names.push(name.to_owned());
        }
    }
    names.sort();
    names.dedup();
    names.len()
}

/// What became of one connection attempt.
enum Outcome {
    /// Open after the wait.
    Open(Box<Ws>),
    /// Closed with this code (or refused at connect with it).
    Closed(Option<u16>),
}

/// Connects `user` to `addr` and watches it for `watch`: open at the end, or closed.
async fn connect_and_watch(addr: SocketAddr, user: String, watch: Duration) -> Outcome {
    let mut ws = match Ws::connect(addr, &user, "").await {
        Ok((ws, _)) => ws,
        Err(e) => {
            let code = ["4003", "4004", "1011", "1013"]
                .into_iter()
                .find(|c| e.contains(c))
                .and_then(|c| c.parse().ok());
            return Outcome::Closed(code);
        }
    };
    let deadline = tokio::time::Instant::now() + watch;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match ws.next(left).await {
            Read::Nothing => return Outcome::Open(Box::new(ws)),
            Read::Closed(code) => return Outcome::Closed(code),
            Read::Frame(_) => {}
        }
    }
}

/// What each node logged so far, to read beside a failed assertion.
fn logs(nodes: &[ServerProcess]) -> String {
    nodes
        .iter()
        .enumerate()
        .map(|(i, n)| format!("--- node {i} ({}):\n{}", n.addr, n.stderr.so_far()))
        .collect::<Vec<_>>()
        .join("\n")
}

/// 30 concurrent connects of one user spread over `nodes`: (open connections, close codes
/// of the others).
async fn thirty_connects(nodes: &[ServerProcess], user: &str) -> (Vec<Ws>, Vec<Option<u16>>) {
    let attempts = (0..30)
        .map(|i| connect_and_watch(nodes[i % 3].addr, user.to_owned(), Duration::from_secs(4)));
    let mut open = Vec::new();
    let mut closed = Vec::new();
    for o in join_all(attempts).await {
        match o {
            Outcome::Open(ws) => open.push(*ws),
            Outcome::Closed(code) => closed.push(code),
        }
    }
    (open, closed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_per_user_limit_holds_across_three_nodes_and_a_killed_node_stops_counting() {
    let Some(redis) = testing::require("three nodes on Redis", RedisServer::start()) else {
        return;
    };
    // Evict-oldest: exactly 3 stay open, every other one closed with 4003.
    let evicting = three_nodes(&redis, "limit-evict", LEASE, &[]).await;
    let (open, closed) = thirty_connects(&evicting, "walt").await;
    assert_eq!(open.len(), 3, "closed: {closed:?}");
    assert!(closed.iter().all(|c| *c == Some(4003)), "{closed:?}");
    for ws in open {
        ws.close().await;
    }
    drop(evicting);

    // Reject: exactly 3 open, every other one refused with 4004.
    let mut rejecting = three_nodes(
        &redis,
        "limit-reject",
        LEASE,
        &["--per-user-policy", "reject"],
    )
    .await;
    let (open, closed) = thirty_connects(&rejecting, "rita").await;
    assert_eq!(open.len(), 3, "closed: {closed:?}");
    assert!(closed.iter().all(|c| *c == Some(4004)), "{closed:?}");
    for ws in open {
        ws.close().await;
    }

    // Node 0 holds two of the user's three connections, node 1 one: node 2 refuses more.
    let (a, _) = Ws::connect(rejecting[0].addr, "kim", "").await.expect("a");
    let (b, _) = Ws::connect(rejecting[0].addr, "kim", "").await.expect("b");
    let (mut c, _) = Ws::connect(rejecting[1].addr, "kim", "").await.expect("c");
    let refused = connect_and_watch(rejecting[2].addr, "kim".into(), Duration::ZERO).await;
    assert!(
        matches!(refused, Outcome::Closed(Some(4004))),
        "the limit counts node 0"
    );
    // SIGKILL node 0: its leases are not renewed, and stop counting within the lease.
    rejecting[0].child.kill().expect("SIGKILL");
    let _ = rejecting[0].child.wait();
    std::mem::forget((a, b));
    let mut fresh = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while fresh.len() < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the killed node's connections still count"
        );
        match connect_and_watch(rejecting[2].addr, "kim".into(), Duration::ZERO).await {
            Outcome::Open(ws) => fresh.push(ws),
            Outcome::Closed(Some(4004)) => tokio::time::sleep(Duration::from_millis(200)).await,
            Outcome::Closed(other) => panic!("refused with {other:?}"),
        }
    }
    // The survivor's connection is still open and still counts: a fourth is refused.
    assert!(matches!(
        c.next(Duration::from_millis(200)).await,
        Read::Nothing | Read::Frame(_)
    ));
    let refused = connect_and_watch(rejecting[1].addr, "kim".into(), Duration::ZERO).await;
    assert!(matches!(refused, Outcome::Closed(Some(4004))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_per_user_limit_holds_across_three_nodes_on_a_redis_cluster() {
    let Some(cluster) = testing::require("three nodes on a cluster", RedisCluster::start(3)) else {
        return;
    };
    let target = Target::Cluster(cluster.urls());
    for (policy, code) in [("evict-oldest", 4003), ("reject", 4004)] {
        let nodes = three_nodes_on(
            &target,
            &format!("cluster-{policy}"),
            LEASE,
            &["--per-user-policy", policy],
        )
        .await;
        let (open, closed) = thirty_connects(&nodes, "cleo").await;
        assert_eq!(open.len(), 3, "{policy}: closed {closed:?}");
        assert!(
            closed.iter().all(|c| *c == Some(code)),
            "{policy}: {closed:?}"
        );
        for ws in open {
            ws.close().await;
        }
    }
    drop(cluster);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_lists_and_disconnects_a_users_connections_on_every_node() {
    let Some(redis) = testing::require("three nodes on Redis", RedisServer::start()) else {
        return;
    };
    let nodes = three_nodes(&redis, "admin", LEASE, &[]).await;
    let mut conns = Vec::new();
    for n in &nodes {
        conns.push(
            Ws::connect(n.addr, "ada", "")
                .await
                .expect("ada connects")
                .0,
        );
    }
    for n in &nodes {
        let body = ada_connections(n.addr).await;
        let listed = body["connections"].as_array().expect("connections");
        assert_eq!(listed.len(), 3, "{body}");
        let mut on: Vec<&str> = listed.iter().filter_map(|c| c["node"].as_str()).collect();
        on.sort_unstable();
        on.dedup();
        assert_eq!(on.len(), 3, "one connection on each node: {body}");
        assert_eq!(body["unanswered_nodes"], json!([]));
    }
    let r = http(
        nodes[1].addr,
        "POST",
        "/v1/users/ada/disconnect",
        Some(API_KEY),
        None,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["disconnected"], 3, "{}", r.body);
    // From the disconnect's answer on, no node lists the connections it closed, though
    // they stay registered until their close handshakes end.
    for n in &nodes {
        let body = ada_connections(n.addr).await;
        assert_eq!(body["connections"], json!([]), "{body}");
    }
    for mut ws in conns {
        loop {
            match ws.next(WAIT).await {
                Read::Closed(code) => {
                    assert_eq!(code, Some(1001));
                    break;
                }
                Read::Frame(_) => {}
                Read::Nothing => panic!("not disconnected"),
            }
        }
    }
}

/// The admin's list of ada's connections, asked of the node at `addr`.
async fn ada_connections(addr: SocketAddr) -> Value {
    let r = http(
        addr,
        "GET",
        "/v1/users/ada/connections",
        Some(API_KEY),
        None,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    r.json()
}

/// Publishes one event per request through `addr` until `until`; returns the `seq`s
/// accepted and the 429s seen (each with a `Retry-After`).
async fn publish_until(
    addr: SocketAddr,
    who: usize,
    until: tokio::time::Instant,
) -> (Vec<u64>, u32) {
    let (mut seqs, mut limited) = (Vec::new(), 0);
    let mut n = 0u64;
    while tokio::time::Instant::now() < until {
        n += 1;
        let r = publish(addr, &custom("rated", n, &format!("p{who}-{n}"))).await;
        match r.status {
            200 => seqs.extend(r.json()["results"][0]["seq"].as_u64()),
            429 => {
                assert!(r.header("retry-after").is_some(), "{:?}", r.headers);
                limited += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            other => panic!("publish answered {other}: {}", r.body),
        }
    }
    (seqs, limited)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_key_publishing_through_three_nodes_gets_its_rate_once() {
    let Some(redis) = testing::require("three nodes on Redis", RedisServer::start()) else {
        return;
    };
    let (rate, burst) = (10.0, 5.0);
    let nodes = three_nodes(
        &redis,
        "rate",
        LEASE,
        &["--publish-rate", "10", "--publish-burst", "5"],
    )
    .await;
    // A body larger than the burst never fits: 429 without Retry-After, nothing taken.
    let big: Vec<Value> = (0..6)
        .map(|i| custom("rated", i, &format!("big-{i}")))
        .collect();
    let r = publish(nodes[0].addr, &Value::Array(big)).await;
    assert_eq!(r.status, 429, "{}", r.body);
    assert!(r.header("retry-after").is_none());

    let started = tokio::time::Instant::now();
    let until = started + Duration::from_secs(3);
    let runs = (0..3).map(|i| publish_until(nodes[i].addr, i, until));
    let results = join_all(runs).await;
    let elapsed = started.elapsed().as_secs_f64();
    let mut seqs: Vec<u64> = results
        .iter()
        .flat_map(|(s, _)| s.iter().copied())
        .collect();
    let limited: u32 = results.iter().map(|(_, l)| l).sum();
    seqs.sort_unstable();
    let accepted = seqs.len();
    // Nothing accepted twice, and each accepted event in the stream once.
    assert_eq!(seqs, (1..=accepted as u64).collect::<Vec<_>>());
    #[allow(clippy::cast_precision_loss)]
    let got = accepted as f64;
    assert!(
        got <= burst + rate * elapsed + 1.0,
        "{accepted} events in {elapsed:.1} s through three nodes: more than one key's rate"
    );
    assert!(got >= burst, "{accepted} events: not even the burst");
    assert!(limited > 0, "the three nodes never refused");
    let text = metrics(nodes[0].addr).await;
    assert!(
        sample(&text, "agentwire_redis_rate_refused_total").is_some(),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_paused_answers_503s_and_then_the_cluster_holds_again() {
    let Some(mut redis) = testing::require("three nodes on Redis", RedisServer::start()) else {
        return;
    };
    let nodes = three_nodes(
        &redis,
        "paused",
        // Longer than the pause: the held connection's lease outlives it.
        "9s",
        &[
            "--per-user-policy",
            "reject",
            "--publish-rate",
            "100",
            "--publish-burst",
            "100",
        ],
    )
    .await;
    let (held, _) = Ws::connect(nodes[0].addr, "pat", "")
        .await
        .expect("pat connects");
    redis.pause().expect("SIGSTOP");
    // The admin's view, a publish (and its rate), a new connection: clear refusals.
    let r = http(
        nodes[1].addr,
        "GET",
        "/v1/users/pat/connections",
        Some(API_KEY),
        None,
    )
    .await;
    assert_eq!(r.status, 503, "{}", r.body);
    assert!(r.header("retry-after").is_some(), "{:?}", r.headers);
    let r = publish(nodes[2].addr, &custom("pat", 1, "pat-1")).await;
    assert_eq!(r.status, 503, "{}", r.body);
    assert!(r.header("retry-after").is_some(), "{:?}", r.headers);
    let refused = connect_and_watch(nodes[2].addr, "pat".into(), Duration::ZERO).await;
    assert!(
        matches!(refused, Outcome::Closed(_)),
        "a connection admitted without its lease"
    );
    redis.resume().expect("SIGCONT");

    // Back: the retried publish is stored once; the user holds exactly the limit.
    let deadline = tokio::time::Instant::now() + WAIT;
    let first = loop {
        let r = publish(nodes[2].addr, &custom("pat", 1, "pat-1")).await;
        if r.status == 200 {
            break r;
        }
        assert!(tokio::time::Instant::now() < deadline, "{}", r.body);
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let again = publish(nodes[0].addr, &custom("pat", 1, "pat-1")).await;
    assert_eq!(again.json()["results"], first.json()["results"]);
    let (open, closed) = thirty_connects(&nodes, "pat").await;
    assert_eq!(open.len() + 1, 3, "held one before; closed: {closed:?}");
    assert!(closed.iter().all(|c| *c == Some(4004)), "{closed:?}");

    // Redis restarted empty: the leases are gone, and so is the user's stream, which
    // starts a new epoch. Every connection opened before is closed: `1013` when its node
    // resyncs it (resume, to learn the new epoch), or `4003` when a renewal found the
    // user's room taken first. The connection opened after the restart stays.
    redis.kill();
    redis.restart_empty().expect("Redis starts again");
    for n in &nodes {
        support::nodes::wait_for_status(n.addr, "/readyz", 200, Duration::from_secs(20)).await;
    }
    let Outcome::Open(late) = connect_and_watch(nodes[1].addr, "pat".into(), Duration::ZERO).await
    else {
        panic!("no room after the restart\n{}", logs(&nodes));
    };
    for mut ws in std::iter::once(held).chain(open) {
        let code = loop {
            match ws.next(WAIT).await {
                Read::Frame(_) => {}
                Read::Closed(code) => break code,
                Read::Nothing => panic!("still open after the restart\n{}", logs(&nodes)),
            }
        };
        assert!(
            matches!(code, Some(1013 | 4003)),
            "{code:?}\n{}",
            logs(&nodes)
        );
    }

    // The closed connections' leases are given back: one connection at a time, the user
    // takes exactly the limit again (a refusal before it is a release still on its way),
    // and never more; then 30 concurrent connects are all refused.
    let mut again = Vec::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    for i in 0.. {
        match connect_and_watch(nodes[i % 3].addr, "pat".into(), Duration::ZERO).await {
            Outcome::Open(ws) => again.push(*ws),
            Outcome::Closed(code) => {
                assert_eq!(code, Some(4004), "{}", logs(&nodes));
                if again.len() + 1 == 3 {
                    break;
                }
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "the closed connections' leases were not given back: {} open\n{}",
                    again.len() + 1,
                    logs(&nodes)
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        assert!(
            again.len() <= 2,
            "late and {} more: over the limit of 3\n{}",
            again.len(),
            logs(&nodes)
        );
    }
    let (open, closed) = thirty_connects(&nodes, "pat").await;
    assert!(open.is_empty(), "{} more than the limit", open.len());
    assert!(closed.iter().all(|c| *c == Some(4004)), "{closed:?}");
    drop((late, again));
}
