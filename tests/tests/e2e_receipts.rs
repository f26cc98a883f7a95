//! End to end: delivery receipts. The publish answer names where to ask; the receipts of a
//! run delivered but not acknowledged, of an acknowledged run, and of a run whose user had
//! no connection; receipts survive a reconnect; the long poll (`?wait_acked=`) returns on
//! the ack and on time-out, and its bounds hold (--receipt-max-wait, --receipt-max-waiters).

use std::time::Duration;

use agentwire::protocol::{ClientFrame, Seq};
use agentwire_e2e::{API_KEY, TestServer, WAIT};
use serde_json::{Value, json};
use tokio::time::Instant;

fn event(user: &str, ty: &str, run: &str, data: Value) -> Value {
    json!({"user_id": user, "type": ty, "thread_id": "t1", "run_id": run, "data": data})
}

/// A short run: started, completed.
fn run(user: &str, run: &str) -> Value {
    json!([
        event(user, "agent_started", run, json!({"agent_name": "e2e"})),
        event(user, "agent_completed", run, json!({"result": "done"})),
    ])
}

/// GETs `path` until `done` holds for its body (an ack or a flush may land just after
/// the client saw the frame), within the wait bound.
async fn until(server: &TestServer, path: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let r = server.http("GET", path, Some(API_KEY)).await;
        assert_eq!(r.status, 200, "{}", r.body);
        let body = r.json();
        if done(&body) {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "{path} never became what was expected: {body}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn receipts_follow_delivery_and_acks_across_a_reconnect() {
    let server = TestServer::start().await;
    let mut client = server.connect("alice").await;
    let r = server.publish(&run("alice", "r1")).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let results = r.json()["results"].clone();
    assert_eq!(results[0]["receipt"], "/v1/users/alice/runs/r1");
    assert_eq!(results[1]["receipt"], "/v1/users/alice/runs/r1");
    assert_eq!(client.event().await.seq.get(), 1);
    assert_eq!(client.event().await.seq.get(), 2);
    // Delivered, not acknowledged.
    let body = until(&server, "/v1/users/alice/runs/r1", |b| {
        b["terminal"]["delivered"] == true
    })
    .await;
    assert_eq!(body["state"], "completed");
    assert_eq!(
        (body["first_seq"].clone(), body["last_seq"].clone()),
        (json!(1), json!(2))
    );
    assert_eq!(body["terminal"]["type"], "agent_completed");
    assert_eq!(body["terminal"]["acked"], false);
    // An ack beyond what the connection was sent counts only as far as it was sent.
    client.send(&ClientFrame::Ack { seq: Seq(2) }).await;
    let body = until(&server, "/v1/users/alice/runs/r1", |b| {
        b["terminal"]["acked"] == true
    })
    .await;
    assert_eq!(body["acked_seq"], 2);
    client.send(&ClientFrame::Ack { seq: Seq(99) }).await;
    client.close().await;
    // The receipt outlives the connection; a custom event is answered with the user's.
    let r = server
        .publish(&json!({"user_id": "alice", "type": "custom", "data": {"name": "n"}}))
        .await;
    assert_eq!(
        r.json()["results"][0]["receipt"],
        "/v1/users/alice/receipts"
    );
    let body = until(&server, "/v1/users/alice/receipts", |b| b["last_seq"] == 3).await;
    assert_eq!(
        (body["delivered_seq"].clone(), body["acked_seq"].clone()),
        (json!(2), json!(2))
    );
    server.stop().await;
}

#[tokio::test]
async fn a_run_of_a_user_without_connection_was_neither_delivered_nor_acked() {
    let server = TestServer::start().await;
    assert_eq!(server.publish(&run("bob", "r1")).await.status, 200);
    let r = server
        .http("GET", "/v1/users/bob/runs/r1", Some(API_KEY))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let body = r.json();
    assert_eq!(body["terminal"]["delivered"], false);
    assert_eq!(body["terminal"]["acked"], false);
    let r = server
        .http("GET", "/v1/users/bob/runs/nope", Some(API_KEY))
        .await;
    assert_eq!(
        (r.status, r.json()["error"].clone()),
        (404, json!("not_found"))
    );
    let r = server.http("GET", "/v1/users/bob/runs/r1", None).await;
    assert_eq!(r.status, 401);
    // The long poll times out with what holds then.
    let r = server
        .http(
            "GET",
            "/v1/users/bob/runs/r1?wait_acked=300ms",
            Some(API_KEY),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["terminal"]["acked"], false);
    for bad in ["wait_acked=2h", "wait_acked=soon", "other=1"] {
        let r = server
            .http(
                "GET",
                &format!("/v1/users/bob/runs/r1?{bad}"),
                Some(API_KEY),
            )
            .await;
        assert_eq!(r.status, 400, "{bad}: {}", r.body);
    }
    server.stop().await;
}

#[tokio::test]
async fn the_long_poll_returns_on_the_ack_and_is_bounded_in_number() {
    let server = TestServer::start_with(|c| c.receipt_max_waiters = 1).await;
    let mut client = server.connect("carol").await;
    assert_eq!(server.publish(&run("carol", "r1")).await.status, 200);
    client.event().await;
    client.event().await;
    let addr = server.addr;
    let poll = tokio::spawn(async move {
        agentwire_e2e::http_request(
            addr,
            "GET",
            "/v1/users/carol/runs/r1?wait_acked=50s",
            Some(API_KEY),
        )
        .await
    });
    // The one place is taken: a second long poll is refused.
    let deadline = Instant::now() + WAIT;
    while agentwire_e2e::metric(&server.metrics().await, "agentwire_receipt_waiters") != Some(1.0) {
        assert!(!poll.is_finished(), "the long poll ended early");
        assert!(Instant::now() < deadline, "the long poll never waited");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let r = server
        .http(
            "GET",
            "/v1/users/carol/runs/r1?wait_acked=1s",
            Some(API_KEY),
        )
        .await;
    assert_eq!(
        (r.status, r.json()["error"].clone()),
        (503, json!("unavailable"))
    );
    client.send(&ClientFrame::Ack { seq: Seq(2) }).await;
    let r = tokio::time::timeout(WAIT, poll)
        .await
        .expect("the long poll answered on the ack")
        .expect("the polling task");
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["terminal"]["acked"], true);
    let m = server.metrics().await;
    assert_eq!(
        agentwire_e2e::metric(&m, "agentwire_receipt_waits_refused_total"),
        Some(1.0)
    );
    assert_eq!(
        agentwire_e2e::metric(&m, "agentwire_receipt_waiters"),
        Some(0.0)
    );
    server.stop().await;
}
