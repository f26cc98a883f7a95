//! End to end: the receipt webhook (`--receipt-webhook-url`). A run whose terminal event no
//! client acknowledged within `--receipt-webhook-after` is told to a receiver this test
//! runs on 127.0.0.1:0, once, signed with HMAC-SHA256 over `<timestamp>.<body>`; an
//! acknowledged run is never told; a 500 is retried, a 400 is not; a run that ends while
//! `--receipt-webhook-max-pending` notices are pending gets none.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use agentwire::protocol::{ClientFrame, Seq};
use agentwire_e2e::{TestServer, WAIT};
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;
use tokio::time::Instant;

const WEBHOOK_KEY: &str = "a webhook key of at least thirty-two bytes";

/// One request the receiver took.
#[derive(Debug, Clone)]
struct Received {
    timestamp: String,
    signature: String,
    body: Bytes,
}

/// A receiver answering each request with the next status of its script (200 once the
/// script is spent).
#[derive(Debug, Default)]
struct Receiver {
    script: Mutex<VecDeque<u16>>,
    got: Mutex<Vec<Received>>,
}

async fn take(State(r): State<Arc<Receiver>>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    r.got.lock().expect("lock").push(Received {
        timestamp: header("agentwire-timestamp"),
        signature: header("agentwire-signature"),
        body,
    });
    let status = r.script.lock().expect("lock").pop_front().unwrap_or(200);
    StatusCode::from_u16(status).expect("a status")
}

async fn receiver(script: &[u16]) -> (Arc<Receiver>, SocketAddr) {
    let r = Arc::new(Receiver {
        script: Mutex::new(script.iter().copied().collect()),
        got: Mutex::default(),
    });
    let app = axum::Router::new()
        .route("/hook", axum::routing::post(take))
        .with_state(r.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the receiver");
    let addr = listener.local_addr().expect("its address");
    tokio::spawn(async move { axum::serve(listener, app).await });
    (r, addr)
}

async fn server(receiver: SocketAddr, after: Duration) -> TestServer {
    TestServer::start_with(|c| {
        c.receipt_webhook_url = Some(format!("http://{receiver}/hook"));
        c.receipt_webhook_secret = Some(WEBHOOK_KEY.into());
        c.receipt_webhook_after = after;
        c.receipt_webhook_timeout = Duration::from_secs(5);
    })
    .await
}

fn run(user: &str, run: &str) -> Value {
    let event = |ty: &str, data: Value| json!({"user_id": user, "type": ty, "thread_id": "t1", "run_id": run, "data": data});
    json!([
        event("agent_started", json!({"agent_name": "e2e"})),
        event("agent_completed", json!({"result": "done"})),
    ])
}

/// The value of the metric line that starts with `name` (labels included), 0 without one.
fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

async fn until_metric(server: &TestServer, name: &str, value: f64) -> String {
    let deadline = Instant::now() + WAIT;
    loop {
        let text = server.metrics().await;
        if metric(&text, name) >= value {
            return text;
        }
        assert!(Instant::now() < deadline, "{name} never reached {value}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Checks the signature as a receiver would: HMAC-SHA256 with the shared key over
/// `<timestamp>.<body>`, compared in constant time, and a timestamp within 5 minutes.
fn verifies(r: &Received, key: &str) -> bool {
    let Some(hex) = r.signature.strip_prefix("v1=") else {
        return false;
    };
    let Ok(ts) = r.timestamp.parse::<u64>() else {
        return false;
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_secs();
    if now.abs_diff(ts) > 300 {
        return false;
    }
    let Some(expected) = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect::<Option<Vec<u8>>>()
    else {
        return false;
    };
    let mut mac = Hmac::<Sha256>::new_from_slice(key.as_bytes()).expect("any key length");
    mac.update(r.timestamp.as_bytes());
    mac.update(b".");
    mac.update(&r.body);
    mac.verify_slice(&expected).is_ok()
}

#[tokio::test]
async fn an_unacked_run_is_told_once_signed_and_an_acked_run_never() {
    let (receiver, at) = receiver(&[]).await;
    let server = server(at, Duration::from_secs(2)).await;
    // alice acknowledges her run; bob is sent his and never acknowledges it.
    let mut alice = server.connect("alice").await;
    let mut bob = server.connect("bob").await;
    assert_eq!(server.publish(&run("alice", "seen")).await.status, 200);
    assert_eq!(alice.event().await.seq.get(), 1);
    assert_eq!(alice.event().await.seq.get(), 2);
    alice.send(&ClientFrame::Ack { seq: Seq(2) }).await;
    assert_eq!(server.publish(&run("bob", "unseen")).await.status, 200);
    assert_eq!(bob.event().await.seq.get(), 1);
    assert_eq!(bob.event().await.seq.get(), 2);

    let text = until_metric(&server, "agentwire_receipt_webhook_sent_total", 1.0).await;
    let text = if metric(&text, "agentwire_receipt_webhook_acked_total") < 1.0 {
        until_metric(&server, "agentwire_receipt_webhook_acked_total", 1.0).await
    } else {
        text
    };
    // Nothing is left to send: no second notice can come.
    assert_eq!(
        metric(&text, "agentwire_receipt_webhook_pending"),
        0.0,
        "{text}"
    );
    assert_eq!(metric(&text, "agentwire_receipt_webhook_acked_total"), 1.0);
    let got = receiver.got.lock().expect("lock").clone();
    assert_eq!(got.len(), 1, "one notice, for bob's run: {got:?}");
    let notice: Value = serde_json::from_slice(&got[0].body).expect("JSON");
    assert_eq!(notice["type"], "run_not_acked");
    assert_eq!(notice["user_id"], "bob");
    assert_eq!(notice["run_id"], "unseen");
    assert_eq!(notice["state"], "completed");
    assert_eq!(notice["terminal"]["seq"], 2);
    assert_eq!(notice["terminal"]["type"], "agent_completed");
    assert_eq!(notice["terminal"]["acked"], false);
    assert_eq!(notice["receipt"], "/v1/users/bob/runs/unseen");
    assert!(
        verifies(&got[0], WEBHOOK_KEY),
        "the signature verifies: {got:?}"
    );
    assert!(!verifies(
        &got[0],
        "another key of at least thirty-two bytes"
    ));
    let mut tampered = got[0].clone();
    tampered.body = Bytes::from([&got[0].body[..], b" "].concat());
    assert!(!verifies(&tampered, WEBHOOK_KEY), "the body is signed");
}

#[tokio::test]
async fn a_500_is_retried_and_a_400_is_not() {
    let (receiver, at) = receiver(&[500]).await;
    let server = server(at, Duration::from_millis(200)).await;
    assert_eq!(server.publish(&run("carol", "r1")).await.status, 200);
    let text = until_metric(&server, "agentwire_receipt_webhook_sent_total", 1.0).await;
    assert_eq!(
        metric(
            &text,
            "agentwire_receipt_webhook_failed_total{reason=\"status_5xx\"}"
        ),
        1.0,
        "{text}"
    );
    let got = receiver.got.lock().expect("lock").clone();
    assert_eq!(got.len(), 2, "the first attempt and its retry");
    assert_eq!(got[0].body, got[1].body, "a retry sends the same notice");
    assert!(got.iter().all(|r| verifies(r, WEBHOOK_KEY)));
    let notice: Value = serde_json::from_slice(&got[0].body).expect("JSON");
    assert_eq!(
        notice["terminal"]["delivered"], false,
        "carol had no connection"
    );

    // A 4xx other than 429 says the receiver will never take it.
    receiver.script.lock().expect("lock").push_back(400);
    assert_eq!(server.publish(&run("carol", "r2")).await.status, 200);
    let text = until_metric(
        &server,
        "agentwire_receipt_webhook_dropped_total{reason=\"refused\"}",
        1.0,
    )
    .await;
    assert_eq!(
        metric(&text, "agentwire_receipt_webhook_pending"),
        0.0,
        "{text}"
    );
    assert_eq!(receiver.got.lock().expect("lock").len(), 3, "not retried");
}

#[tokio::test]
async fn a_run_that_ends_beyond_max_pending_gets_no_notice() {
    let (receiver, at) = receiver(&[]).await;
    let server = TestServer::start_with(|c| {
        c.receipt_webhook_url = Some(format!("http://{at}/hook"));
        c.receipt_webhook_secret = Some(WEBHOOK_KEY.into());
        c.receipt_webhook_after = Duration::from_secs(5);
        c.receipt_webhook_max_pending = 1;
    })
    .await;
    // Both runs end before the first one's notice is due: the second finds no room.
    assert_eq!(server.publish(&run("dave", "first")).await.status, 200);
    assert_eq!(server.publish(&run("dave", "second")).await.status, 200);
    let text = server.metrics().await;
    assert_eq!(
        metric(
            &text,
            "agentwire_receipt_webhook_dropped_total{reason=\"full\"}"
        ),
        1.0,
        "{text}"
    );
    let text = until_metric(&server, "agentwire_receipt_webhook_sent_total", 1.0).await;
    assert_eq!(
        metric(&text, "agentwire_receipt_webhook_pending"),
        0.0,
        "{text}"
    );
    let got = receiver.got.lock().expect("lock").clone();
    assert_eq!(got.len(), 1);
    let notice: Value = serde_json::from_slice(&got[0].body).expect("JSON");
    assert_eq!(notice["run_id"], "first");
}
