//! End to end: the Python publishers of `examples/python/` against a real server, with a
//! WebSocket client of the user checking what arrived (issue 6). They publish with the
//! `agentwire` package (`clients/python/src`, put on `PYTHONPATH`) and a publish-only key
//! (issue 19).
//!
//! They need `python3`. Where it is missing the tests fail under CI (`CI=true`) and are
//! skipped, with the reason printed, elsewhere.

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::Arc;

use std::time::Duration;

use agentwire::manager::{BrokerError, InMemoryBroker, ManagerConfig, UnifiedWebSocketManager};
use agentwire::protocol::{CRITICAL_EVENTS, EventData, EventEnvelope};
use agentwire::server::ServerConfig;
use agentwire_e2e::{Client, TestServer, command_succeeds, custom, prerequisite, workspace_root};
use agentwire_manager::conformance::{Fault, FaultyBroker};

/// Longest a script may run before the test fails (it is killed then).
const SCRIPT_WAIT: Duration = Duration::from_secs(60);

/// The publish-only key the examples publish with.
const PUBLISH_KEY: &str = "agentwire-e2e-examples-publish-key";

fn publish_only_key(c: &mut ServerConfig) {
    c.publish_api_keys = vec![PUBLISH_KEY.into()];
}

fn examples_dir() -> PathBuf {
    workspace_root().join("examples").join("python")
}

/// Whether `python3` runs; when it does not, fails under CI and says why elsewhere.
fn python_available() -> bool {
    prerequisite(
        (!command_succeeds("python3", &["--version"])).then(|| "python3 is not installed".into()),
        "the Python example tests",
    )
}

/// Runs `examples/python/<script>` with `args`, bounded by [`SCRIPT_WAIT`].
async fn run_script(script: &str, args: Vec<String>) -> Output {
    let script = examples_dir().join(script);
    let run = tokio::task::spawn_blocking(move || {
        let mut child = Command::new("python3")
            .arg(&script)
            .args(&args)
            .env("PYTHONPATH", workspace_root().join("clients/python/src"))
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start python3");
        let deadline = std::time::Instant::now() + SCRIPT_WAIT;
        while child.try_wait().expect("wait for python3").is_none() {
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        child.wait_with_output().expect("python3 output")
    });
    run.await.expect("the script runner")
}

fn show(out: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout\n{}--- stderr\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Reads `n` events.
async fn events(client: &mut Client, n: usize) -> Vec<EventEnvelope> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(client.event().await);
    }
    out
}

/// Publishes a marker through the manager and checks it is the client's next event: so
/// nothing else (no duplicate) arrived before it.
async fn assert_nothing_more(server: &TestServer, client: &mut Client, user: &str, next: u64) {
    // The losing broker below accepts every event, but may report a timeout: the marker
    // is in the stream either way.
    let _ = server
        .manager()
        .emit_critical_event(&agentwire_e2e::user(user), custom(999))
        .await;
    assert_eq!(
        client.event().await.seq.get(),
        next,
        "an event arrived that was not expected"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_run_py_delivers_the_whole_run_in_order() {
    if !python_available() {
        return;
    }
    let server = TestServer::start_with(publish_only_key).await;
    for batch in [false, true] {
        let user = if batch { "py-batch" } else { "py-one-by-one" };
        let mut client = server.connect(user).await;
        let mut args = vec![
            "--url".to_owned(),
            format!("http://{}", server.addr),
            "--api-key".to_owned(),
            PUBLISH_KEY.to_owned(),
            "--user".to_owned(),
            user.to_owned(),
            "--run".to_owned(),
            "run-py".to_owned(),
        ];
        if batch {
            args.push("--batch".to_owned());
        }
        let out = run_script("publish_run.py", args).await;
        assert!(out.status.success(), "{}", show(&out));

        // The run, its answer streamed in 12 words, then its end.
        let got = events(&mut client, 21).await;
        let types: Vec<&str> = got.iter().map(|e| e.event.event_type().as_str()).collect();
        let mut want = vec![
            "agent_started",
            "agent_thinking",
            "tool_executing",
            "tool_completed",
            "agent_thinking",
            "tool_executing",
            "tool_completed",
        ];
        want.extend(["message_delta"; 12]);
        want.extend(["message_completed", "agent_completed"]);
        assert_eq!(types, want, "{}", show(&out));
        let answer: String = got
            .iter()
            .filter_map(|e| match &e.event.data {
                EventData::MessageDelta(d) => Some(d.delta.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(
            answer,
            "TP 551 on Dec 5 for 129 EUR; sunny Saturday, cloudy Sunday."
        );
        // The five critical events, in their order, are all there.
        let mut critical = CRITICAL_EVENTS.iter().peekable();
        for t in &types {
            if critical.peek() == Some(&t) {
                critical.next();
            }
        }
        assert_eq!(
            critical.next(),
            None,
            "critical events missing from {types:?}"
        );
        for (i, e) in got.iter().enumerate() {
            assert_eq!(e.seq.get(), i as u64 + 1);
            assert_eq!(e.event.run_id.as_ref().map(|r| r.as_str()), Some("run-py"));
        }
        // The script printed what the server answered.
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            stdout.contains("published agent_completed  seq=21"),
            "{}",
            show(&out)
        );
        assert_nothing_more(&server, &mut client, user, 22).await;
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_with_retries_py_retries_and_every_event_arrives_once() {
    if !python_available() {
        return;
    }
    // Every other answer is lost: the event is accepted, but the caller hears that the
    // broker timed out — as when a response is lost on the way back.
    let broker = Arc::new(FaultyBroker::new(InMemoryBroker::default(), |attempt| {
        attempt.is_multiple_of(2).then(|| {
            Fault::LoseAnswer(BrokerError::Timeout(
                "the test broker lost the answer".into(),
            ))
        })
    }));
    let manager = UnifiedWebSocketManager::new(ManagerConfig::default(), broker.clone());
    let server = TestServer::start_over(manager, publish_only_key).await;
    let user = "py-retries";
    let mut client = server.connect(user).await;
    let out = run_script(
        "publish_with_retries.py",
        vec![
            "--url".to_owned(),
            format!("http://{}", server.addr),
            "--api-key".to_owned(),
            PUBLISH_KEY.to_owned(),
            "--user".to_owned(),
            user.to_owned(),
            "--run".to_owned(),
            "run-retries".to_owned(),
        ],
    )
    .await;
    assert!(out.status.success(), "{}", show(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    for expected in [
        // Lost answers came back as 503 and were retried, after the server's Retry-After.
        "failed (503 unavailable: ",
        "retrying in 1.",
        "published twice with one event_id: seq 2 then 2",
        "refused as expected: 409 run_violation field=data.tool_call_id",
        // Issue 19: a body over 4 MiB is a 413, not a broken pipe retried five times.
        "refused as expected: 413 payload_too_large",
        "run run-retries ended with agent_error",
    ] {
        assert!(
            stdout.contains(expected),
            "no {expected:?} in\n{}",
            show(&out)
        );
    }
    // The run as the user saw it: each event once.
    let got = events(&mut client, 5).await;
    let types: Vec<&str> = got.iter().map(|e| e.event.event_type().as_str()).collect();
    assert_eq!(
        types,
        [
            "agent_started",
            "agent_thinking",
            "tool_executing",
            "tool_completed",
            "agent_error"
        ],
        "{}",
        show(&out)
    );
    assert_eq!(
        got.iter().map(|e| e.seq.get()).collect::<Vec<_>>(),
        [1, 2, 3, 4, 5]
    );
    match &got[3].event.data {
        EventData::ToolCompleted(t) => assert!(t.is_error, "the failed tool: {t:?}"),
        other => panic!("expected tool_completed, got {other:?}"),
    }
    assert_nothing_more(&server, &mut client, user, 6).await;
    assert!(broker.attempts().len() >= 6);
    server.stop().await;
}
