//! End to end: the publish API (`POST /v1/events`) and the history read
//! (`GET /v1/users/{user_id}/events`) against a real server — delivery to WebSocket
//! clients, batches all or nothing, idempotent retries, the run lifecycle (checked by the
//! broker: shared with embedded emitters, bounded per API key), and every error status of
//! docs/protocol.md §8.1 provoked and checked (issue 6).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use agentwire::emitter::{EmitterError, RunContext, WebSocketEmitterFactory};
use agentwire::manager::{BrokerError, InMemoryBroker, ManagerConfig, UnifiedWebSocketManager};
use agentwire::protocol::{EventType, RunViolation, Seq, ServerFrame};
use agentwire::server::RunLifecycle;
use agentwire_e2e::{API_KEY, HttpResponse, TestServer, custom, http_send, metric};
use agentwire_manager::conformance::{Fault, FaultyBroker};
use serde_json::{Value, json};

const PUBLISH_KEY: &str = "agentwire-e2e-publish-only-key";

fn event(user: &str, ty: &str, run: &str, data: Value) -> Value {
    json!({"user_id": user, "type": ty, "thread_id": "t1", "run_id": run, "data": data})
}

fn with_id(mut e: Value, id: &str) -> Value {
    e["event_id"] = json!(id);
    e
}

/// The five critical events of one run, in order, each with its own `event_id`.
fn full_run(user: &str, run: &str) -> Vec<Value> {
    [
        event(user, "agent_started", run, json!({"agent_name": "e2e"})),
        event(user, "agent_thinking", run, json!({"thought": "Look it up.", "step": 1})),
        event(user, "tool_executing", run, json!({"tool_call_id": "tc1", "tool_name": "search", "arguments": {"q": "x"}})),
        event(user, "tool_completed", run, json!({"tool_call_id": "tc1", "tool_name": "search", "result": [1, 2], "duration_ms": 3})),
        event(user, "agent_completed", run, json!({"result": "done", "duration_ms": 9})),
    ]
    .into_iter()
    .enumerate()
    .map(|(i, e)| with_id(e, &format!("{user}-{run}-{i}")))
    .collect()
}

/// The error code of each status the publish API and the history read answer.
fn code_of(status: u16) -> &'static str {
    match status {
        400 => "bad_request",
        401 => "unauthorized",
        403 => "forbidden",
        409 => "run_violation",
        413 => "payload_too_large",
        415 => "unsupported_media_type",
        422 => "invalid_event",
        429 => "rate_limited",
        500 => "internal",
        503 => "unavailable",
        _ => "unexpected status",
    }
}

/// Asserts a refusal: its status, its code (the usual one of the status), and the `field`
/// and the start of the `message` of its body `{"error", "message", "field"}`.
fn assert_refused(r: &HttpResponse, status: u16, field: Option<&str>, message_starts: &str) {
    assert_refused_as(r, status, code_of(status), field, message_starts);
}

/// As [`assert_refused`], with the code given.
fn assert_refused_as(
    r: &HttpResponse,
    status: u16,
    code: &str,
    field: Option<&str>,
    message_starts: &str,
) {
    assert_eq!(r.status, status, "{}", r.body);
    let body = r.json();
    assert_eq!(
        body.as_object().map(|o| o.len()),
        Some(3),
        "the body is exactly {{error, message, field}}: {}",
        r.body
    );
    assert_eq!(body["error"].as_str(), Some(code), "{}", r.body);
    assert_eq!(body["field"].as_str(), field, "{}", r.body);
    let message = body["message"].as_str().unwrap_or_default();
    assert!(
        message.starts_with(message_starts),
        "message {message:?} should start with {message_starts:?}"
    );
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

async fn history(server: &TestServer, user: &str, query: &str, key: &str) -> HttpResponse {
    server
        .http("GET", &format!("/v1/users/{user}/events{query}"), Some(key))
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_published_in_one_batch_reaches_its_user_in_order() {
    let server = TestServer::start().await;
    let mut alice = server.connect("alice").await;
    let mut bob = server.connect("bob").await;
    let run = full_run("alice", "r1");
    let r = server.publish(&Value::Array(run.clone())).await;
    assert_eq!(seqs(&r), [1, 2, 3, 4, 5]);
    assert_eq!(r.header("content-type"), Some("application/json"));
    let results = r.json()["results"].clone();
    for (i, sent) in run.iter().enumerate() {
        let e = alice.event().await;
        assert_eq!(e.seq.get(), i as u64 + 1);
        assert_eq!(e.event.event_type().as_str(), sent["type"]);
        assert_eq!(e.event_id.as_str(), sent["event_id"]);
        assert_eq!(results[i]["event_id"], sent["event_id"]);
        assert_eq!(results[i]["ts"].as_u64(), Some(e.ts.as_millis()));
        assert_eq!(e.event.run_id.as_ref().map(|r| r.as_str()), Some("r1"));
    }
    // Bob saw none of it: his next frame is his own event.
    server.emit("bob", custom(7)).await;
    assert_eq!(bob.event().await.seq.get(), 1);

    // One event on its own, without an event_id: the broker assigns one.
    let one = server
        .publish(
            &json!({"user_id": "alice", "type": "custom", "data": {"name": "note", "value": 1}}),
        )
        .await;
    assert_eq!(seqs(&one), [6]);
    let assigned = one.json()["results"][0]["event_id"].clone();
    assert_eq!(alice.event().await.event_id.as_str(), assigned);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publisher_event_id_makes_every_retry_idempotent() {
    let server = TestServer::start().await;
    let mut alice = server.connect("alice").await;
    let run = full_run("alice", "r1");
    let first = server.publish(&run[0]).await;
    assert_eq!(seqs(&first), [1]);
    // The same event again — also a lifecycle violation (AlreadyStarted) if it were new —
    // is answered with the first acceptance.
    let again = server.publish(&run[0]).await;
    assert_eq!(seqs(&again), [1]);
    assert_eq!(again.json()["results"], first.json()["results"]);
    // The whole run, its first event included: only the new events are accepted.
    assert_eq!(
        seqs(&server.publish(&Value::Array(run.clone())).await),
        [1, 2, 3, 4, 5]
    );
    // After the end, a retry of the terminal event is still answered, not refused.
    assert_eq!(seqs(&server.publish(&run[4]).await), [5]);
    for want in 1..=5 {
        assert_eq!(alice.event().await.seq.get(), want);
    }
    // Nothing was delivered twice: the next frame is the next event.
    server.emit("alice", custom(6)).await;
    assert_eq!(alice.event().await.seq.get(), 6);
    let text = server.metrics().await;
    assert_eq!(
        metric(&text, "agentwire_events_deduplicated_total"),
        Some(3.0)
    );
    server.stop().await;
}

/// `data` reaches its user as the publisher wrote it — its fields in their order, its
/// numbers and escapes as written, the whitespace between tokens removed, a field with a
/// default added when left out — whether the body takes the one pass or (with a fraction)
/// the typed decoding; and an `event_id` sent again with the same fields in another order
/// names another event (409), while the same text is a retry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_reaches_its_user_as_written() {
    let server = TestServer::start().await;
    let mut alice = server.connect("alice").await;
    let quick = r#"{"user_id":"alice","type":"custom","event_id":"as-written","data": { "z" : [1, {"b":"x y"}], "name":"n\u00e9" , "a":18446744073709551615 }}"#;
    // Numbers beyond 64 bits and fractions keep their digits (read as a float and written
    // back, they would not).
    let slow = r#"[{"user_id":"alice","type":"custom","data":{"z":2.50,"name":"m","value":1E2,"big":123456789012345678901234567890}}]"#;
    assert_eq!(seqs(&server.publish_text(quick).await), [1]);
    assert_eq!(seqs(&server.publish_text(slow).await), [2]);
    let stored = history(&server, "alice", "", API_KEY).await;
    for data in [
        r#""data":{"z":[1,{"b":"x y"}],"name":"n\u00e9","a":18446744073709551615,"value":null}"#,
        r#""data":{"z":2.50,"name":"m","value":1E2,"big":123456789012345678901234567890}"#,
    ] {
        assert!(stored.body.contains(data), "{data} in {}", stored.body);
    }
    // The client reads them as the typed events they are.
    for name in ["né", "m"] {
        let e = alice.event().await;
        match &e.event.data {
            agentwire::protocol::EventData::Custom(c) => assert_eq!(c.name, name),
            other => panic!("not a custom event: {other:?}"),
        }
    }

    let reordered = r#"{"user_id":"alice","type":"custom","event_id":"as-written","data":{"name":"n\u00e9","z":[1,{"b":"x y"}],"a":18446744073709551615}}"#;
    assert_refused_as(
        &server.publish_text(reordered).await,
        409,
        "event_id_conflict",
        Some("event_id"),
        "",
    );
    assert_eq!(seqs(&server.publish_text(quick).await), [1]);
    server.stop().await;
}

/// An `event_id` names one event: reused for a different event it is refused with 409
/// `event_id_conflict` and nothing is published or applied; sent again with the same event
/// it is a retry, answered with the first acceptance (issue 14).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_id_reused_for_a_different_event_is_a_409_conflict() {
    let server = TestServer::start().await;
    let mut alice = server.connect("alice").await;
    let first_event = with_id(
        event("alice", "custom", "r1", json!({"name": "n", "value": 1})),
        "alice-once",
    );
    let first = server.publish(&first_event).await;
    assert_eq!(seqs(&first), [1]);
    assert_eq!(alice.event().await.seq.get(), 1);
    let before = history(&server, "alice", "", API_KEY).await.json();

    // Same id, another event: refused, on its own and inside a batch.
    let other = with_id(
        event("alice", "custom", "r1", json!({"name": "n", "value": 2})),
        "alice-once",
    );
    let r = server.publish(&other).await;
    assert_refused_as(&r, 409, "event_id_conflict", Some("event_id"), "");
    assert!(
        r.json()["message"]
            .as_str()
            .is_some_and(|s| s.contains("seq 1") && s.contains("nothing was published")),
        "{}",
        r.body
    );
    let batch = json!([
        event("alice", "custom", "r1", json!({"name": "n", "value": 3})),
        other.clone(),
    ]);
    let r = server.publish(&batch).await;
    assert_refused_as(&r, 409, "event_id_conflict", Some("[1].event_id"), "");
    // Another type under the id is another event too.
    let retyped = with_id(
        event("alice", "agent_started", "r9", json!({"agent_name": "x"})),
        "alice-once",
    );
    assert_refused_as(
        &server.publish(&retyped).await,
        409,
        "event_id_conflict",
        Some("event_id"),
        "",
    );
    assert_eq!(
        history(&server, "alice", "", API_KEY).await.json(),
        before,
        "a refused event changed the stream"
    );
    // The run table applied nothing: the run can still start.
    let started = with_id(
        event("alice", "agent_started", "r9", json!({"agent_name": "x"})),
        "alice-r9-start",
    );
    assert_eq!(seqs(&server.publish(&started).await), [2]);

    // Same id, same event: a retry, answered with the first acceptance.
    let again = server.publish(&first_event).await;
    assert_eq!(again.json()["results"], first.json()["results"]);
    assert_eq!(
        alice.event().await.seq.get(),
        2,
        "nothing refused reached the client"
    );
    let text = server.metrics().await;
    assert_eq!(
        metric(&text, "agentwire_publish_requests_total{status=\"409\"}"),
        Some(3.0)
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_batch_publishes_nothing() {
    let server = TestServer::start().await;
    let run = full_run("alice", "r1");

    // The third event breaks the run: nothing of the batch is accepted.
    let bad = vec![
        run[0].clone(),
        run[1].clone(),
        event(
            "alice",
            "tool_completed",
            "r1",
            json!({"tool_call_id": "nope", "tool_name": "x"}),
        ),
    ];
    let r = server.publish(&Value::Array(bad)).await;
    assert_refused(&r, 409, Some("[2].data.tool_call_id"), "UnknownToolCall: ");

    // A schema error in the last item, another user's event first: nothing either.
    let bad = vec![
        event("bob", "agent_started", "r9", json!({})),
        json!({"user_id": "alice", "type": "agent_thinking", "run_id": "r1", "data": {}}),
    ];
    let r = server.publish(&Value::Array(bad)).await;
    assert_refused(&r, 422, Some("[1].data.thought"), "missing field");

    for u in ["alice", "bob"] {
        let h = history(&server, u, "", API_KEY).await;
        assert_eq!(h.status, 200, "{}", h.body);
        assert_eq!(h.json()["last_seq"], 0, "{u}: {}", h.body);
    }
    // The refused batch left the run unstarted: the run can start now.
    assert_eq!(
        seqs(&server.publish(&Value::Array(run)).await),
        [1, 2, 3, 4, 5]
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_run_lifecycle_is_enforced_and_can_be_turned_off() {
    let server = TestServer::start().await;
    let not_started = server
        .publish(&event(
            "alice",
            "agent_thinking",
            "r1",
            json!({"thought": "?"}),
        ))
        .await;
    assert_refused(&not_started, 409, Some("type"), "NotStarted: ");
    let run = full_run("alice", "r1");
    assert_eq!(
        seqs(&server.publish(&Value::Array(run)).await),
        [1, 2, 3, 4, 5]
    );
    let after_end = server
        .publish(&event(
            "alice",
            "agent_thinking",
            "r1",
            json!({"thought": "more"}),
        ))
        .await;
    assert_refused(&after_end, 409, Some("type"), "AfterTerminal: ");
    // Custom events stand outside the lifecycle, even with the run's id.
    let note = server
        .publish(&event("alice", "custom", "r1", json!({"name": "n"})))
        .await;
    assert_eq!(seqs(&note), [6]);
    // Runs are per user: bob's r1 is another run.
    let bob = server
        .publish(&event("bob", "agent_started", "r1", json!({})))
        .await;
    assert_eq!(seqs(&bob), [1]);
    server.stop().await;

    let off = TestServer::start_with(|c| c.run_lifecycle = RunLifecycle::Off).await;
    let orphan = off
        .publish(&event(
            "alice",
            "tool_completed",
            "r1",
            json!({"tool_call_id": "x", "tool_name": "y"}),
        ))
        .await;
    assert_eq!(seqs(&orphan), [1]);
    off.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_refusal_has_its_status_and_names_the_field() {
    let server = TestServer::start_with(|c| {
        c.max_event_bytes = 1024;
        c.max_request_bytes = 8 * 1024;
        c.max_batch = 3;
        c.publish_api_keys = vec![PUBLISH_KEY.into()];
    })
    .await;
    let ok = event("alice", "agent_started", "r1", json!({}));
    let post = |headers: Vec<(&'static str, String)>, body: Vec<u8>| {
        let addr = server.addr;
        async move {
            let headers: Vec<(&str, &str)> =
                headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
            http_send(addr, "POST", "/v1/events", &headers, &body).await
        }
    };
    let auth = || ("Authorization", format!("Bearer {API_KEY}"));
    let json_type = || ("Content-Type", "application/json".to_owned());

    // 400: not JSON, not UTF-8, the wrong shape, nested too deep.
    for body in [
        b"{\"user_id\":".to_vec(),
        b"{\"user_id\":\"\xff\"}".to_vec(),
        b"42".to_vec(),
        b"[]".to_vec(),
        format!("{}{}", "[".repeat(70), "]".repeat(70)).into_bytes(),
    ] {
        let r = post(vec![auth(), json_type()], body).await;
        assert_eq!(r.status, 400, "{}", r.body);
        assert_eq!(r.json()["field"], Value::Null);
    }

    // 401: no key, an unknown key, another scheme.
    let r = post(vec![json_type()], ok.to_string().into_bytes()).await;
    assert_refused(&r, 401, None, "send `Authorization: Bearer");
    assert_eq!(r.header("www-authenticate"), Some("Bearer"));
    let r = server.publish_as("not-a-key", &ok).await;
    assert_refused(&r, 401, None, "unknown API key");
    let r = post(
        vec![("Authorization", format!("Basic {API_KEY}")), json_type()],
        ok.to_string().into_bytes(),
    )
    .await;
    assert_eq!(r.status, 401);

    // 403: a publish-only key may publish, but not read history nor use the admin API.
    assert_eq!(seqs(&server.publish_as(PUBLISH_KEY, &ok).await), [1]);
    let r = history(&server, "alice", "", PUBLISH_KEY).await;
    assert_refused(&r, 403, None, "this API key may only publish");
    let r = server
        .http("GET", "/v1/users/alice/connections", Some(PUBLISH_KEY))
        .await;
    assert_eq!(r.status, 403, "{}", r.body);

    // 409: see the lifecycle test; here, a second start.
    let r = server.publish(&ok).await;
    assert_refused(&r, 409, Some("type"), "AlreadyStarted: ");

    // 413: one event too large, the body too large, too many events.
    let big = event(
        "alice",
        "custom",
        "r1",
        json!({"name": "n", "value": "x".repeat(2000)}),
    );
    let r = server.publish(&big).await;
    assert_refused(&r, 413, None, "the event is");
    let r = server.publish(&json!([ok.clone(), big])).await;
    assert_refused(&r, 413, Some("[1]"), "the event is");
    let r = post(
        vec![auth(), json_type()],
        format!("[{}]", vec![ok.to_string(); 100].join(",")).into_bytes(),
    )
    .await;
    assert_refused(&r, 413, None, "the request body is larger than 8192 bytes");
    let four = json!([ok.clone(), ok.clone(), ok.clone(), ok.clone()]);
    let r = server.publish(&four).await;
    assert_refused(&r, 413, None, "the batch holds 4 events; the limit is 3");

    // 415: no content type, or another one.
    let r = post(vec![auth()], ok.to_string().into_bytes()).await;
    assert_refused(&r, 415, None, "send `Content-Type: application/json`");
    let r = post(
        vec![auth(), ("Content-Type", "text/plain".to_owned())],
        ok.to_string().into_bytes(),
    )
    .await;
    assert_eq!(r.status, 415);

    // 422: a missing or unknown type, a run event without run_id, an unknown field, a bad
    // identifier, an ill-typed field.
    let cases = [
        (json!({"user_id": "alice", "data": {}}), "type", "missing"),
        (
            json!({"user_id": "alice", "type": "nap"}),
            "type",
            "unknown type `nap`",
        ),
        (
            json!({"user_id": "alice", "type": "agent_started"}),
            "run_id",
            "is required",
        ),
        (
            json!({"user_id": "alice", "type": "custom", "data": {"name": "n"}, "extra": 1}),
            "extra",
            "unknown field",
        ),
        (
            json!({"user_id": "", "type": "custom", "data": {"name": "n"}}),
            "user_id",
            "",
        ),
        (
            json!({"user_id": "alice", "type": "agent_thinking", "run_id": "r1", "data": {"thought": 5}}),
            "data.thought",
            "invalid type",
        ),
    ];
    for (body, field, reason) in cases {
        let r = server.publish(&body).await;
        assert_refused(&r, 422, Some(field), reason);
    }
    let r = server
        .publish(&json!([ok.clone(), {"user_id": "alice", "type": "custom"}]))
        .await;
    assert_refused(&r, 422, Some("[1].data.name"), "missing field");

    // The history read refuses bad parameters and a bad user id.
    let r = history(&server, "alice", "?limit=5000", API_KEY).await;
    assert_refused(&r, 400, Some("limit"), "must be at most 1000");
    let r = history(&server, "alice", "?after_seq=x", API_KEY).await;
    assert_refused(&r, 400, Some("after_seq"), "must be a non-negative integer");
    let r = history(&server, "%00", "", API_KEY).await;
    assert_refused(&r, 400, Some("user_id"), "a user id");

    let text = server.metrics().await;
    for (status, n) in [
        ("200", 1.0),
        ("400", 5.0),
        ("401", 3.0),
        ("409", 1.0),
        ("413", 4.0),
        ("415", 2.0),
        ("422", 7.0),
    ] {
        let name = format!("agentwire_publish_requests_total{{status=\"{status}\"}}");
        assert_eq!(metric(&text, &name), Some(n), "{name}\n{text}");
    }
    assert_eq!(
        metric(&text, "agentwire_history_reads_total{status=\"403\"}"),
        Some(1.0)
    );
    assert_eq!(
        metric(&text, "agentwire_history_reads_total{status=\"400\"}"),
        Some(3.0)
    );
    assert_eq!(metric(&text, "agentwire_run_states"), Some(1.0));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rate_limit_answers_429_with_retry_after_and_publishes_nothing() {
    // One event per second, a burst of 100: the second batch of 100 would need 100 s.
    let server = TestServer::start_with(|c| {
        c.publish_rate = 1;
        c.publish_burst = 100;
        c.publish_api_keys = vec![PUBLISH_KEY.into()];
    })
    .await;
    let batch = |first: u64| {
        Value::Array(
            (first..first + 100)
                .map(|n| json!({"user_id": "alice", "type": "custom", "data": {"name": "n", "value": n}}))
                .collect(),
        )
    };
    assert_eq!(seqs(&server.publish(&batch(0)).await).len(), 100);
    let r = server.publish(&batch(100)).await;
    assert_refused(
        &r,
        429,
        None,
        "this API key may publish 1 events per second",
    );
    let wait: u64 = r
        .header("retry-after")
        .and_then(|v| v.parse().ok())
        .expect("Retry-After in seconds");
    assert!(wait >= 1, "Retry-After {wait}");
    // Each key has its own bucket.
    assert_eq!(
        seqs(&server.publish_as(PUBLISH_KEY, &batch(200)).await)[0],
        101
    );
    let h = history(&server, "alice", "?after_seq=100&limit=1", API_KEY).await;
    assert_eq!(
        h.json()["last_seq"],
        200,
        "the refused batch published nothing"
    );
    let text = server.metrics().await;
    assert_eq!(
        metric(&text, "agentwire_publish_requests_total{status=\"429\"}"),
        Some(1.0)
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_is_read_in_pages_with_its_epoch_and_gaps() {
    let server = TestServer::start_with(|c| c.history_max_events = 5).await;
    let events: Vec<Value> = (1..=8)
        .map(|n| json!({"user_id": "alice", "type": "custom", "data": {"name": "n", "value": n}}))
        .collect();
    assert_eq!(
        seqs(&server.publish(&Value::Array(events)).await),
        (1..=8).collect::<Vec<_>>()
    );
    let epoch = server
        .connect("alice")
        .await
        .established
        .expect("hello")
        .epoch;

    let page = history(&server, "alice", "?after_seq=5&limit=2", API_KEY).await;
    assert_eq!(page.status, 200, "{}", page.body);
    assert_eq!(page.header("content-type"), Some("application/json"));
    let page = page.json();
    assert_eq!(page["user_id"], "alice");
    assert_eq!(page["epoch"], epoch.as_str());
    assert_eq!(page["last_seq"], 8);
    assert_eq!(page["gap"], Value::Null);
    let got: Vec<u64> = page["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|e| e["seq"].as_u64().expect("seq"))
        .collect();
    assert_eq!(got, [6, 7]);
    // Each event is the frame a client receives.
    let frame = page["events"][0].to_string();
    match ServerFrame::decode(frame.as_bytes()).expect("a server frame") {
        ServerFrame::Event(e) => {
            assert_eq!(e.event.event_type(), EventType::Custom);
            assert_eq!(e.seq, Seq(6));
        }
        other => panic!("{other:?}"),
    }
    // From the start: history holds only the newest 5, and says so.
    let all = history(&server, "alice", "", API_KEY).await.json();
    assert_eq!(all["gap"], json!({"from_seq": 1, "to_seq": 3}));
    assert_eq!(all["events"].as_array().map(Vec::len), Some(5));
    // Past the end, and a user never published to.
    let end = history(&server, "alice", "?after_seq=8", API_KEY)
        .await
        .json();
    assert_eq!(end["events"], json!([]));
    let nobody = history(&server, "nobody", "", API_KEY).await.json();
    assert_eq!(
        (nobody["last_seq"].clone(), nobody["events"].clone()),
        (json!(0), json!([]))
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_failure_is_503_with_retry_after_and_a_retry_completes_the_batch() {
    // Every publish fails once `allowed` of them have passed.
    let allowed = Arc::new(AtomicUsize::new(0));
    let gate = allowed.clone();
    let broker = Arc::new(FaultyBroker::new(InMemoryBroker::default(), move |_| {
        let pass = gate
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        (!pass).then(|| Fault::Refuse(BrokerError::Unavailable("the test broker is down".into())))
    }));
    let manager = UnifiedWebSocketManager::new(ManagerConfig::default(), broker.clone());
    let server = TestServer::start_over(manager, |_| {}).await;
    let mut alice = server.connect("alice").await;
    let run = Value::Array(full_run("alice", "r1"));

    // Down from the start: nothing published.
    let r = server.publish(&run).await;
    assert_refused(&r, 503, Some("[0]"), "broker unavailable");
    assert_eq!(r.header("retry-after"), Some("1"));
    // Readiness is the broker's health, which this broker keeps: unchanged.
    assert_eq!(server.http("GET", "/readyz", None).await.status, 200);

    // Down after two events: the answer names where the batch stopped.
    allowed.store(2, Ordering::SeqCst);
    let r = server.publish(&run).await;
    assert_refused(&r, 503, Some("[2]"), "broker unavailable");
    assert!(
        r.json()["message"]
            .as_str()
            .is_some_and(|s| s.contains("the events before [2] were accepted"))
    );

    // Up again: the same body completes the run; the first two are answered, not repeated.
    allowed.store(usize::MAX, Ordering::SeqCst);
    assert_eq!(seqs(&server.publish(&run).await), [1, 2, 3, 4, 5]);
    for want in 1..=5 {
        assert_eq!(alice.event().await.seq.get(), want);
    }
    server.emit("alice", custom(6)).await;
    assert_eq!(
        alice.event().await.seq.get(),
        6,
        "nothing was delivered twice"
    );
    let text = server.metrics().await;
    assert_eq!(
        metric(&text, "agentwire_publish_requests_total{status=\"503\"}"),
        Some(2.0)
    );
    server.stop().await;
}

/// Every HTTP error has one body, `{"error", "message", "field"}`, whichever part of the
/// server answers: no route, a wrong method, the admin API, the `/ws` handshake.
#[tokio::test]
async fn every_http_error_has_the_one_error_body() {
    let server =
        TestServer::start_with(|c| c.publish_api_keys = vec!["publish-only-key-0001".into()]).await;
    let cases = [
        ("GET", "/no/such/route", None, 404, "not_found"),
        (
            "DELETE",
            "/v1/events",
            Some(API_KEY),
            405,
            "method_not_allowed",
        ),
        ("GET", "/healthz/extra", None, 404, "not_found"),
        (
            "GET",
            "/v1/users/alice/connections",
            None,
            401,
            "unauthorized",
        ),
        (
            "GET",
            "/v1/users/alice/connections",
            Some("publish-only-key-0001"),
            403,
            "forbidden",
        ),
        (
            "POST",
            "/v1/users/alice/disconnect",
            Some("wrong"),
            401,
            "unauthorized",
        ),
        ("GET", "/ws", None, 401, "unauthorized"),
    ];
    for (method, path, key, status, code) in cases {
        let r = server.http(method, path, key).await;
        assert_eq!(r.status, status, "{method} {path}: {}", r.body);
        let body = r.json();
        let keys: Vec<&str> = body
            .as_object()
            .map(|o| o.keys().map(String::as_str).collect())
            .unwrap_or_default();
        assert_eq!(
            keys,
            ["error", "field", "message"],
            "{method} {path}: {}",
            r.body
        );
        assert_eq!(body["error"], code, "{method} {path}");
        assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    server.stop().await;
}

// Issues 13–15: the run lifecycle lives in the broker. The publish API sends run guards,
// so its runs and those of embedded emitters are one state; a publisher's runs are bounded
// by its share (429 `too_many_runs`), and another key's runs in progress are never evicted
// for it; a body for several users is atomic per user.

/// A second full-access API key.
const OTHER_KEY: &str = "agentwire-e2e-second-api-key";

fn start(user: &str, run: &str) -> Value {
    event(user, "agent_started", run, json!({"agent_name": "e2e"}))
}

fn thinking(user: &str, run: &str) -> Value {
    event(user, "agent_thinking", run, json!({"thought": "…"}))
}

fn completed(user: &str, run: &str) -> Value {
    event(user, "agent_completed", run, json!({"result": "done"}))
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
    assert_refused_as(
        &r,
        429,
        "too_many_runs",
        Some("run_id"),
        "no room for this run",
    );
    let message = r.json()["message"].as_str().unwrap_or_default().to_owned();
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
    assert_refused(&r, 409, Some("[1].type"), "NotStarted: ");
    let message = r.json()["message"].as_str().unwrap_or_default().to_owned();
    assert!(
        message.contains("the events [0], [3] were accepted"),
        "{message}"
    );
    let last_seq = |r: HttpResponse| r.json()["last_seq"].clone();
    assert_eq!(last_seq(history(&server, "alice", "", API_KEY).await), 2);
    assert_eq!(
        last_seq(history(&server, "bob", "", API_KEY).await),
        0,
        "bob's events were all refused"
    );
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
    assert_refused(&r, 409, Some("type"), "AlreadyStarted: ");
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
