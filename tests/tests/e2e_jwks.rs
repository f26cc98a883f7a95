//! End to end: client-token keys from a JWKS URL (issue 19 item 5) — served by an HTTP
//! server this test starts on loopback, which rotates its keys — and from ES256 and EdDSA
//! public key files.
//!
//! - a key set with an RS256 and an ES256 key verifies tokens of both; a key removed from
//!   the set is refused once the scheduled refresh (`--jwt-jwks-refresh-interval`) has
//!   run; a key added is accepted after the refresh its unknown `kid` triggers;
//! - unknown `kid`s trigger no fetch within `--jwt-jwks-min-refresh-interval`
//!   (`agentwire_jwks_refreshes_suppressed_total`);
//! - a failed refresh (a 500, a body over `--jwt-jwks-max-bytes`, more keys than
//!   `--jwt-jwks-max-keys`) keeps the last key set, is counted by outcome, and `/readyz`
//!   stays 200;
//! - before any key set was fetched `/readyz` is 503 and a token signed with a JWKS key is
//!   answered 503 `unavailable`, HS256 tokens still work, and all is well once the URL
//!   answers.
//!
//! Every wait is bounded; waits for a refresh poll until it shows (never a fixed sleep
//! asserted on).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agentwire_e2e::{TestServer, WAIT, fixture, http_request, key_file, metric};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use tokio::time::Instant;

/// What the key-set server answers, and how often it was asked.
#[derive(Debug)]
struct KeyServer {
    addr: SocketAddr,
    answer: Arc<Mutex<(u16, String)>>,
    hits: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl KeyServer {
    async fn start(keys: &[(&str, &str)]) -> KeyServer {
        let answer = Arc::new(Mutex::new((200, key_set(keys))));
        let hits = Arc::new(AtomicUsize::new(0));
        let (a, h) = (answer.clone(), hits.clone());
        let app = axum::Router::new().route(
            "/.well-known/jwks.json",
            axum::routing::get(move || {
                let (a, h) = (a.clone(), h.clone());
                async move {
                    h.fetch_add(1, Ordering::SeqCst);
                    let (status, body) = a.lock().expect("answer").clone();
                    (
                        axum::http::StatusCode::from_u16(status).expect("status"),
                        [("content-type", "application/json")],
                        body,
                    )
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        KeyServer {
            addr,
            answer,
            hits,
            task,
        }
    }

    fn url(&self) -> String {
        format!("http://{}/.well-known/jwks.json", self.addr)
    }

    fn serve(&self, status: u16, body: String) {
        *self.answer.lock().expect("answer") = (status, body);
    }

    fn serve_keys(&self, keys: &[(&str, &str)]) {
        self.serve(200, key_set(keys));
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

impl Drop for KeyServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A key set of the test's public keys: `(kid, algorithm)` pairs.
fn key_set(keys: &[(&str, &str)]) -> String {
    let all: serde_json::Value = serde_json::from_slice(
        &std::fs::read(fixture("test-public-keys.jwk.json")).expect("fixture"),
    )
    .expect("JSON");
    let keys: Vec<serde_json::Value> = keys
        .iter()
        .map(|(kid, alg)| {
            let mut jwk = all[*alg].clone();
            jwk["kid"] = serde_json::json!(kid);
            jwk
        })
        .collect();
    serde_json::json!({ "keys": keys }).to_string()
}

fn signing_key(alg: Algorithm) -> EncodingKey {
    let (name, parse): (&str, fn(&[u8]) -> _) = match alg {
        Algorithm::RS256 => ("rs256-test-private.pem", EncodingKey::from_rsa_pem),
        Algorithm::ES256 => ("es256-test-private.pem", EncodingKey::from_ec_pem),
        Algorithm::EdDSA => ("eddsa-test-private.pem", EncodingKey::from_ed_pem),
        other => panic!("no test key for {other:?}"),
    };
    parse(&std::fs::read(fixture(name)).expect("fixture")).expect("private key")
}

/// A token for `user` signed with the test key of `alg`, its header naming `kid`.
fn token(alg: Algorithm, kid: Option<&str>, user: &str) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    let claims = serde_json::json!({
        "sub": user,
        "exp": jsonwebtoken::get_current_timestamp() + 600,
    });
    jsonwebtoken::encode(&header, &claims, &signing_key(alg)).expect("sign")
}

/// Whether a handshake with `token` is accepted; `Err((status, body))` when refused.
async fn handshake(server: &TestServer, token: &str) -> Result<String, (u16, String)> {
    match server.try_connect(server.request(token, "")).await {
        Ok(mut client) => {
            let user = client.read_established().await.user_id.to_string();
            client.close().await;
            Ok(user)
        }
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            let body = resp
                .body()
                .as_ref()
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .unwrap_or_default();
            Err((resp.status().as_u16(), body))
        }
        Err(e) => panic!("handshake failed without an HTTP answer: {e}"),
    }
}

/// Polls `check` until it holds, for at most [`WAIT`].
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + WAIT;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn metrics(server: &TestServer) -> String {
    http_request(server.addr, "GET", "/metrics", None)
        .await
        .body
}

fn count(text: &str, name: &str) -> f64 {
    metric(text, name).unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotated_keys_are_picked_up_on_schedule_and_for_an_unknown_kid() {
    let keys = KeyServer::start(&[("k-rsa", "RS256"), ("k-ec", "ES256")]).await;
    let url = keys.url();
    let server = TestServer::start_with(|c| {
        c.jwt_jwks_url = Some(url);
        c.jwt_jwks_refresh_interval = Duration::from_secs(1);
        c.jwt_jwks_min_refresh_interval = Duration::from_millis(200);
    })
    .await;
    assert_eq!(keys.hits(), 1, "the key set is fetched once at start");
    let text = metrics(&server).await;
    assert_eq!(
        count(
            &text,
            "agentwire_jwks_refreshes_total{trigger=\"start\",outcome=\"ok\"}"
        ),
        1.0,
        "{text}"
    );
    assert_eq!(count(&text, "agentwire_jwks_keys"), 2.0, "{text}");

    let rsa = token(Algorithm::RS256, Some("k-rsa"), "auth0|alice");
    let ec = token(Algorithm::ES256, Some("k-ec"), "bob@example.com");
    assert_eq!(handshake(&server, &rsa).await, Ok("auth0|alice".into()));
    assert_eq!(handshake(&server, &ec).await, Ok("bob@example.com".into()));
    // HS256 with the secret still works beside the key set.
    let mut hs = server.connect("carol").await;

    // Rotation, part one: k-rsa leaves the set. Nothing asks for a refresh; the schedule
    // (1 s here) removes it.
    keys.serve_keys(&[("k-ec", "ES256")]);
    eventually("the removed key is refused", || async {
        matches!(handshake(&server, &rsa).await, Err((401, _)))
    })
    .await;
    let (status, body) = handshake(&server, &rsa).await.expect_err("refused");
    assert_eq!(status, 401);
    let body: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(body["error"], "unauthorized");
    assert_eq!(body["field"], "Authorization");
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.contains("\"k-rsa\"") && m.contains("--jwt-jwks-url")),
        "{body}"
    );
    assert_eq!(handshake(&server, &ec).await, Ok("bob@example.com".into()));
    let text = metrics(&server).await;
    assert!(
        count(
            &text,
            "agentwire_jwks_refreshes_total{trigger=\"schedule\",outcome=\"ok\"}"
        ) >= 1.0,
        "{text}"
    );

    // Rotation, part two: k-ed joins. A token naming it triggers a refresh and is
    // accepted once the set holds it.
    keys.serve_keys(&[("k-ec", "ES256"), ("k-ed", "EdDSA")]);
    let ed = token(Algorithm::EdDSA, Some("k-ed"), "dave");
    eventually("the added key is accepted", || async {
        handshake(&server, &ed).await.is_ok()
    })
    .await;
    assert_eq!(handshake(&server, &ed).await, Ok("dave".into()));

    // A token without `kid` verifies with the one key of its algorithm.
    let no_kid = token(Algorithm::EdDSA, None, "erin");
    assert_eq!(handshake(&server, &no_kid).await, Ok("erin".into()));
    // A `kid` of another algorithm's key is refused.
    let mismatched = token(Algorithm::ES256, Some("k-ed"), "frank");
    let (status, body) = handshake(&server, &mismatched).await.expect_err("refused");
    assert_eq!(status, 401);
    assert!(body.contains("does not match key"), "{body}");

    hs.send(&agentwire::protocol::ClientFrame::Ping).await;
    assert_eq!(hs.frame().await, agentwire::protocol::ServerFrame::Pong);
    hs.close().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_kids_trigger_at_most_one_fetch_per_min_refresh_interval() {
    let keys = KeyServer::start(&[("k-rsa", "RS256")]).await;
    let url = keys.url();
    // Both intervals far longer than the test: every fetch after the first is one an
    // unknown `kid` asked for.
    let server = TestServer::start_with(|c| {
        c.jwt_jwks_url = Some(url);
        c.jwt_jwks_refresh_interval = Duration::from_secs(3600);
        c.jwt_jwks_min_refresh_interval = Duration::from_secs(3600);
    })
    .await;
    assert_eq!(keys.hits(), 1);
    for i in 0..20 {
        let forged = token(Algorithm::RS256, Some(&format!("unknown-{i}")), "mallory");
        let (status, body) = handshake(&server, &forged).await.expect_err("refused");
        assert_eq!(status, 401, "{body}");
        assert!(body.contains("is not in the key set"), "{body}");
    }
    assert_eq!(keys.hits(), 1, "no fetch within the minimum interval");
    let text = metrics(&server).await;
    assert_eq!(
        count(&text, "agentwire_jwks_refreshes_suppressed_total"),
        20.0,
        "{text}"
    );
    assert_eq!(
        count(
            &text,
            "agentwire_handshake_rejections_total{reason=\"token_unknown_key\"}"
        ),
        20.0,
        "{text}"
    );
    // The known key still works.
    let good = token(Algorithm::RS256, Some("k-rsa"), "alice");
    assert_eq!(handshake(&server, &good).await, Ok("alice".into()));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_refresh_keeps_the_last_key_set() {
    let keys = KeyServer::start(&[("k-ec", "ES256")]).await;
    let url = keys.url();
    let server = TestServer::start_with(|c| {
        c.jwt_jwks_url = Some(url);
        c.jwt_jwks_refresh_interval = Duration::from_millis(200);
        c.jwt_jwks_min_refresh_interval = Duration::from_millis(200);
        c.jwt_jwks_max_bytes = 4096;
        c.jwt_jwks_max_keys = 2;
    })
    .await;
    let good = token(Algorithm::ES256, Some("k-ec"), "alice");
    assert_eq!(handshake(&server, &good).await, Ok("alice".into()));

    let padding = "x".repeat(8192);
    let failures = [
        (500, "{}".to_owned(), "status"),
        (
            200,
            format!(r#"{{"keys":[],"pad":"{padding}"}}"#),
            "too_large",
        ),
        (
            200,
            key_set(&[("a", "ES256"), ("b", "ES256"), ("c", "ES256")]),
            "too_many_keys",
        ),
        (
            200,
            r#"{"keys":[{"kty":"oct","k":"c2VjcmV0"}]}"#.into(),
            "invalid",
        ),
    ];
    for (status, body, outcome) in failures {
        keys.serve(status, body);
        let name =
            format!("agentwire_jwks_refreshes_total{{trigger=\"schedule\",outcome=\"{outcome}\"}}");
        eventually(&format!("a refresh fails with {outcome}"), || async {
            count(&metrics(&server).await, &name) >= 1.0
        })
        .await;
        assert_eq!(
            handshake(&server, &good).await,
            Ok("alice".into()),
            "the last key set still verifies after {outcome}"
        );
        let ready = http_request(server.addr, "GET", "/readyz", None).await;
        assert_eq!(ready.status, 200, "{outcome}: {}", ready.body);
    }
    let text = metrics(&server).await;
    assert_eq!(count(&text, "agentwire_jwks_keys"), 1.0, "{text}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_first_key_set_readyz_and_jwks_tokens_answer_503_until_one_arrives() {
    let keys = KeyServer::start(&[]).await;
    keys.serve(503, "down".into());
    let url = keys.url();
    let server = TestServer::start_with(|c| {
        c.jwt_jwks_url = Some(url);
        c.jwt_jwks_min_refresh_interval = Duration::from_millis(200);
    })
    .await;
    let ready = http_request(server.addr, "GET", "/readyz", None).await;
    assert_eq!(ready.status, 503, "{}", ready.body);
    let reason = ready.json()["reason"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        reason.contains("no JWKS key set") && reason.contains("503"),
        "{reason}"
    );

    let rsa = token(Algorithm::RS256, Some("k-rsa"), "alice");
    let (status, body) = handshake(&server, &rsa).await.expect_err("no keys yet");
    assert_eq!(status, 503, "{body}");
    let body: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(body["error"], "unavailable");
    // Tokens signed with the secret do not depend on the key set.
    let mut hs = server.connect("bob").await;

    keys.serve_keys(&[("k-rsa", "RS256")]);
    eventually("the server is ready", || async {
        http_request(server.addr, "GET", "/readyz", None)
            .await
            .status
            == 200
    })
    .await;
    assert_eq!(handshake(&server, &rsa).await, Ok("alice".into()));
    hs.send(&agentwire::protocol::ClientFrame::Ping).await;
    assert_eq!(hs.frame().await, agentwire::protocol::ServerFrame::Pong);
    hs.close().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn es256_and_eddsa_public_key_files_verify_their_tokens() {
    for (alg, file) in [
        (Algorithm::ES256, "es256-test-public.pem"),
        (Algorithm::EdDSA, "eddsa-test-public.pem"),
    ] {
        let server = TestServer::start_with(|c| c.jwt_public_key = Some(key_file(file))).await;
        let good = token(alg, None, "auth0|42");
        assert_eq!(
            handshake(&server, &good).await,
            Ok("auth0|42".into()),
            "{alg:?}"
        );
        // The other public-key algorithms are refused, saying what is accepted.
        let other = if alg == Algorithm::ES256 {
            Algorithm::EdDSA
        } else {
            Algorithm::ES256
        };
        let (status, body) = handshake(&server, &token(other, None, "u"))
            .await
            .expect_err("another algorithm");
        assert_eq!(status, 401, "{body}");
        assert!(
            body.contains(&format!("{alg:?} (--jwt-public-key)")),
            "{alg:?}: {body}"
        );
        server.stop().await;
    }
}
