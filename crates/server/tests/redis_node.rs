//! The `agentwire-server` binary on Redis (`--broker redis`): it serves, exports the
//! Redis broker's metrics, answers `/readyz` and the publish API with 503 (and
//! `Retry-After`) while Redis is paused or gone, stores a retried batch once and whole, and
//! refuses to start — saying why, without a password — on a bad or unreachable Redis.
//!
//! Each test runs its own `redis-server` (agentwire-redis's `testing` feature), stopped by
//! PID; without one these tests say `skipped:` and pass, under `CI=true` they fail.

mod support;

use std::time::Duration;

use agentwire_redis::testing::{self, RedisServer, TlsRedis};
use serde_json::json;

use support::nodes::{
    API_KEY, Read, Target, Ws, custom, http, metrics, node_command, publish, sample, secured,
    start, wait_for_status,
};
use support::{WAIT, run_to_exit};

/// The control channel alone down — Redis takes its channels away from the node's user,
/// while commands and the users' event channels still work: `/readyz` answers 503 with
/// `Retry-After`, naming the control channel, and `agentwire_redis_control_up` is 0;
/// given the channels back, the node is ready again.
#[tokio::test]
async fn a_node_whose_control_channel_is_down_is_not_ready() {
    let Some(redis) = testing::require("a node on Redis", RedisServer::start()) else {
        return;
    };
    let prefix = testing::unique_prefix("ctl");
    let node = start(node_command(&Target::Standalone(redis.url()), &prefix, &[])).await;
    let addr = node.addr;
    wait_for_status(addr, "/readyz", 200, WAIT).await;
    let up = |text: &str| sample(text, "agentwire_redis_control_up");
    assert_eq!(up(&metrics(addr).await), Some(1.0));

    // Only the users' event channels (`…:channel`) stay allowed: Redis drops the control
    // channel's subscription and refuses it when the node subscribes again.
    redis
        .cli(&["ACL", "SETUSER", "default", "resetchannels", "&*:channel"])
        .expect("ACL SETUSER");
    wait_for_status(addr, "/readyz", 503, WAIT).await;
    let r = http(addr, "GET", "/readyz", None, None).await;
    assert_eq!(r.status, 503, "{}", r.body);
    assert_eq!(r.json()["status"], "unavailable", "{}", r.body);
    assert!(
        r.json()["reason"]
            .as_str()
            .is_some_and(|why| why.contains("control channel")),
        "{}",
        r.body
    );
    assert_eq!(r.header("retry-after"), Some("1"), "{:?}", r.headers);
    assert_eq!(up(&metrics(addr).await), Some(0.0));

    redis
        .cli(&["ACL", "SETUSER", "default", "allchannels"])
        .expect("ACL SETUSER");
    wait_for_status(addr, "/readyz", 200, WAIT).await;
    assert_eq!(up(&metrics(addr).await), Some(1.0));
}

/// How long a refused start may take.
const WITHIN: Duration = Duration::from_secs(15);

#[tokio::test]
async fn a_node_on_redis_serves_and_answers_503_while_redis_is_away() {
    let Some(mut redis) = testing::require("a node on Redis", RedisServer::start()) else {
        return;
    };
    let prefix = testing::unique_prefix("node");
    let node = start(node_command(&Target::Standalone(redis.url()), &prefix, &[])).await;
    let addr = node.addr;
    wait_for_status(addr, "/readyz", 200, WAIT).await;

    let (mut alice, hello) = Ws::connect(addr, "alice", "")
        .await
        .expect("alice connects");
    let epoch = hello["epoch"].clone();
    let r = publish(addr, &custom("alice", 1, "a-1")).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["results"][0]["seq"], 1);
    match alice.next(WAIT).await {
        Read::Frame(f) => assert_eq!(f["seq"], 1, "{f}"),
        other => panic!("no event: {other:?}"),
    }
    let text = metrics(addr).await;
    assert!(
        sample(&text, "agentwire_redis_round_trip_seconds_count").is_some_and(|n| n >= 1.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "agentwire_redis_subscribed_channels"),
        Some(1.0)
    );

    // Paused: commands time out. /readyz says so, a publish is 503 with Retry-After.
    redis.pause().expect("SIGSTOP");
    wait_for_status(addr, "/readyz", 503, WAIT).await;
    let batch = json!([custom("alice", 2, "a-2"), custom("alice", 3, "a-3")]);
    let r = publish(addr, &batch).await;
    assert_eq!(r.status, 503, "{}", r.body);
    assert_eq!(r.json()["error"], "unavailable", "{}", r.body);
    assert!(r.header("retry-after").is_some(), "{:?}", r.headers);
    redis.resume().expect("SIGCONT");
    wait_for_status(addr, "/readyz", 200, WAIT).await;

    // The retry of the batch, with the same event_ids, is stored once and whole — whether
    // or not the first try reached Redis before it stopped.
    let first = publish(addr, &batch).await;
    assert_eq!(first.status, 200, "{}", first.body);
    assert_eq!(first.json()["results"][0]["seq"], 2, "{}", first.body);
    assert_eq!(first.json()["results"][1]["seq"], 3, "{}", first.body);
    let again = publish(addr, &batch).await;
    assert_eq!(again.json()["results"], first.json()["results"]);
    let history = http(addr, "GET", "/v1/users/alice/events", Some(API_KEY), None).await;
    assert_eq!(history.status, 200, "{}", history.body);
    let seqs: Vec<u64> = history.json()["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter_map(|e| e["seq"].as_u64())
        .collect();
    assert_eq!(seqs, [1, 2, 3], "{}", history.body);
    assert_eq!(history.json()["epoch"], epoch);
    // Alice gets them once, whatever way they reach her.
    for seq in [2, 3] {
        match alice.next(WAIT).await {
            Read::Frame(f) => assert_eq!(f["seq"], seq, "{f}"),
            other => panic!("no event: {other:?}"),
        }
    }

    // Gone: the same 503s; back empty: the node serves again.
    redis.kill();
    wait_for_status(addr, "/readyz", 503, WAIT).await;
    let r = publish(addr, &custom("alice", 4, "a-4")).await;
    assert_eq!(r.status, 503, "{}", r.body);
    assert!(r.header("retry-after").is_some(), "{:?}", r.headers);
    redis.restart_empty().expect("Redis starts again");
    wait_for_status(addr, "/readyz", 200, Duration::from_secs(20)).await;
    let r = publish(addr, &custom("alice", 4, "a-4")).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let text = metrics(addr).await;
    assert!(
        sample(&text, "agentwire_redis_reconnects_total").is_some_and(|n| n >= 1.0),
        "{text}"
    );
    alice.close().await;
}

/// Runs `cmd`, which must exit unsuccessfully within [`WITHIN`] with every one of `says`
/// on its stderr; returns the stderr.
fn refuses_to_start(case: &str, cmd: std::process::Command, says: &[&str]) -> String {
    let (status, _, stderr) = run_to_exit(cmd, WITHIN);
    let status = status.unwrap_or_else(|| panic!("{case}: still running"));
    assert!(!status.success(), "{case}: started");
    for needle in says {
        assert!(
            stderr.contains(needle),
            "{case}: {needle} missing: {stderr}"
        );
    }
    stderr
}

#[test]
fn a_node_refuses_to_start_on_a_bad_or_unreachable_redis() {
    let free_port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let unreachable = format!("redis://:hunter2@127.0.0.1:{free_port}");
    let cases: [(&str, Vec<&str>, &[&str]); 4] = [
        (
            "unreachable",
            vec!["--redis-url", &unreachable],
            &["cannot reach Redis", "127.0.0.1"],
        ),
        (
            "not a Redis URL",
            vec!["--redis-url", "http://:hunter2@127.0.0.1:6379"],
            &["invalid Redis URL"],
        ),
        (
            "both a URL and cluster nodes",
            vec![
                "--redis-url",
                "redis://127.0.0.1:6379",
                "--redis-cluster-nodes",
                "redis://127.0.0.1:7000",
            ],
            &["--redis-url and --redis-cluster-nodes"],
        ),
        (
            "a key prefix that moves the hash tag",
            vec![
                "--redis-url",
                "redis://127.0.0.1:6379",
                "--redis-key-prefix",
                "a{b",
            ],
            &["key prefix"],
        ),
    ];
    for (case, args, says) in cases {
        let mut cmd = secured();
        cmd.args(["--broker", "redis", "--redis-command-timeout", "500ms"])
            .args(&args);
        let stderr = refuses_to_start(case, cmd, says);
        assert!(
            !stderr.contains("hunter2"),
            "{case} shows the password: {stderr}"
        );
    }
    // A Redis address without --broker redis is a mistake, not a silent single node.
    let mut cmd = secured();
    cmd.args(["--redis-url", "redis://127.0.0.1:6379"]);
    let (status, _, stderr) = run_to_exit(cmd, WITHIN);
    assert!(status.is_some_and(|s| !s.success()), "{stderr}");
    assert!(stderr.contains("add --broker redis"), "{stderr}");
}

/// `rediss://` to a Redis that requires a client certificate, with a CA of the test's own:
/// the node connects with `--redis-tls-*`, serves, and delivers.
#[tokio::test]
async fn a_node_on_redis_over_mutual_tls_serves() {
    let Some(redis) = testing::require("a node on Redis over TLS", TlsRedis::start(true)) else {
        return;
    };
    let prefix = testing::unique_prefix("tls");
    let path = |p: &std::path::Path| p.to_str().expect("a UTF-8 path").to_owned();
    let (ca, cert, key) = (
        path(&redis.ca_file),
        path(&redis.client_cert_file),
        path(&redis.client_key_file),
    );
    let node = start(node_command(
        &Target::Standalone(redis.url()),
        &prefix,
        &[
            "--redis-tls-ca-file",
            &ca,
            "--redis-tls-cert-file",
            &cert,
            "--redis-tls-key-file",
            &key,
        ],
    ))
    .await;
    let addr = node.addr;
    wait_for_status(addr, "/readyz", 200, WAIT).await;
    let (mut alice, _) = Ws::connect(addr, "alice", "")
        .await
        .expect("alice connects");
    let r = publish(addr, &custom("alice", 1, "a-1")).await;
    assert_eq!(r.status, 200, "{}", r.body);
    match alice.next(WAIT).await {
        Read::Frame(f) => assert_eq!(f["seq"], 1, "{f}"),
        other => panic!("no event: {other:?}"),
    }
    alice.close().await;
}

/// TLS that cannot be trusted or used stops the start, saying why: a server certificate
/// no trusted CA signed, TLS files with a `redis://` address, a file that is not there, a
/// client certificate without its key, and TLS files without `--broker redis`.
#[test]
fn a_node_refuses_to_start_on_redis_tls_it_cannot_use() {
    let Some(redis) = testing::require("a node on Redis over TLS", TlsRedis::start(false)) else {
        return;
    };
    let url = redis.url();
    let ca = redis.ca_file.to_str().expect("a UTF-8 path").to_owned();
    let cert = redis
        .client_cert_file
        .to_str()
        .expect("a UTF-8 path")
        .to_owned();
    let missing = format!("{ca}.missing");
    // Each after `--broker redis --redis-url`.
    let cases: [(&str, Vec<&str>, &[&str]); 4] = [
        (
            "the system's CAs do not know the server's",
            vec![&url],
            &["cannot reach Redis", "certificate"],
        ),
        (
            "TLS files with a plain address",
            vec!["redis://127.0.0.1:6379", "--redis-tls-ca-file", &ca],
            &["rediss://"],
        ),
        (
            "a CA file that is not there",
            vec![&url, "--redis-tls-ca-file", &missing],
            &["CA certificate", ".missing"],
        ),
        (
            "a client certificate without its key",
            vec![
                &url,
                "--redis-tls-ca-file",
                &ca,
                "--redis-tls-cert-file",
                &cert,
            ],
            &["without its key"],
        ),
    ];
    for (case, args, says) in cases {
        let mut cmd = secured();
        cmd.args(["--redis-command-timeout", "1s", "--broker", "redis"])
            .arg("--redis-url")
            .args(&args);
        refuses_to_start(case, cmd, says);
    }
    let mut cmd = secured();
    cmd.args(["--redis-tls-ca-file", &ca]);
    let (status, _, stderr) = run_to_exit(cmd, WITHIN);
    assert!(status.is_some_and(|s| !s.success()), "{stderr}");
    assert!(stderr.contains("add --broker redis"), "{stderr}");
}
