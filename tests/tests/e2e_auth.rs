//! End to end: authentication at the handshake (every token carrier, every kind of bad
//! token → 401), the Origin allow-list, and token expiry while connected (4002) with
//! `refresh_token` preventing it.

use std::time::Duration;

use agentwire::protocol::{ClientFrame, ErrorCode, ServerFrame};
use agentwire_e2e::{Received, SECRET, TestServer, WAIT, base64url, fixture, key_file};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

fn now() -> u64 {
    jsonwebtoken::get_current_timestamp()
}

fn sign(alg: Algorithm, key: &EncodingKey, claims: &serde_json::Value) -> String {
    jsonwebtoken::encode(&Header::new(alg), claims, key).expect("encode")
}

fn rs256_key() -> EncodingKey {
    let pem = std::fs::read(fixture("rs256-test-private.pem")).expect("fixture");
    EncodingKey::from_rsa_pem(&pem).expect("RSA private key")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_bad_wrong_algorithm_and_expired_tokens_get_401() {
    let server = TestServer::start().await;
    let hs = EncodingKey::from_secret(SECRET.as_bytes());
    let good_claims = serde_json::json!({ "sub": "alice", "exp": now() + 600 });

    let no_token = server.ws_url("").into_client_request().expect("request");
    let (status, body) = server.refused(no_token).await;
    assert_eq!(status, 401);
    let body: serde_json::Value = serde_json::from_str(&body).expect("JSON body");
    assert_eq!(body["error"], "unauthorized");
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.contains("no token")),
        "{body}"
    );

    let cases = [
        (
            "badly signed",
            sign(
                Algorithm::HS256,
                &EncodingKey::from_secret(b"not the secret"),
                &good_claims,
            ),
            "signature",
        ),
        (
            "wrong algorithm (HS512)",
            sign(Algorithm::HS512, &hs, &good_claims),
            "algorithm",
        ),
        (
            "RS256 without a configured public key",
            sign(Algorithm::RS256, &rs256_key(), &good_claims),
            "algorithm",
        ),
        (
            "expired",
            sign(
                Algorithm::HS256,
                &hs,
                &serde_json::json!({ "sub": "alice", "exp": now() - 3600 }),
            ),
            "expired",
        ),
        (
            "without exp",
            sign(
                Algorithm::HS256,
                &hs,
                &serde_json::json!({ "sub": "alice" }),
            ),
            "exp",
        ),
        (
            "with an invalid sub",
            sign(
                Algorithm::HS256,
                &hs,
                &serde_json::json!({ "sub": "", "exp": now() + 600 }),
            ),
            "sub",
        ),
        ("garbage", "not.a.jwt".to_owned(), "malformed"),
    ];
    for (what, token, says) in cases {
        let (status, body) = server.refused(server.request(&token, "")).await;
        assert_eq!(status, 401, "{what}");
        assert!(body.contains(says), "{what}: {body}");
        assert!(
            !body.contains(&token),
            "{what}: the token must not be echoed"
        );
    }
    // `alg: none` — an unsigned token.
    let unsigned = format!(
        "{}.{}.",
        base64url(br#"{"alg":"none","typ":"JWT"}"#),
        base64url(good_claims.to_string().as_bytes())
    );
    let (status, _) = server.refused(server.request(&unsigned, "")).await;
    assert_eq!(status, 401, "alg none");
    assert_eq!(server.manager().connection_count(), 0);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_token_carrier_is_accepted() {
    let server = TestServer::start().await;

    // Authorization: Bearer
    let mut c = server
        .try_connect(server.request(&server.token("alice"), ""))
        .await
        .expect("bearer");
    assert_eq!(c.read_established().await.user_id.as_str(), "alice");

    // The subprotocol a browser can send, answered with `agentwire.v1`.
    let mut req = server.ws_url("").into_client_request().expect("request");
    let offer = format!("agentwire.v1, agentwire.auth.{}", server.token("bob"));
    req.headers_mut().insert(
        "sec-websocket-protocol",
        HeaderValue::from_str(&offer).expect("header"),
    );
    let mut c2 = server.try_connect(req).await.expect("subprotocol");
    assert_eq!(c2.protocol.as_deref(), Some("agentwire.v1"));
    assert_eq!(c2.read_established().await.user_id.as_str(), "bob");

    // ?token=
    let req = server
        .ws_url(&format!("?token={}", server.token("carol")))
        .into_client_request()
        .expect("request");
    let mut c3 = server.try_connect(req).await.expect("query token");
    assert_eq!(c3.read_established().await.user_id.as_str(), "carol");

    assert_eq!(server.manager().connection_count(), 3);
    c.close().await;
    c2.close().await;
    c3.close().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rs256_tokens_verify_with_the_configured_public_key() {
    let server = TestServer::start_with(|c| {
        c.jwt_public_key = Some(key_file("rs256-test-public.pem"));
    })
    .await;
    let token = sign(
        Algorithm::RS256,
        &rs256_key(),
        &serde_json::json!({ "sub": "auth0|42", "exp": now() + 600 }),
    );
    let mut c = server
        .try_connect(server.request(&token, ""))
        .await
        .expect("RS256");
    assert_eq!(c.read_established().await.user_id.as_str(), "auth0|42");
    // HS256 with the secret still works beside it.
    let mut d = server.connect("dave").await;
    d.send(&ClientFrame::Ping).await;
    assert_eq!(d.frame().await, ServerFrame::Pong);
    c.close().await;
    d.close().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issuer_and_audience_are_enforced_when_configured() {
    let server = TestServer::start_with(|c| {
        c.jwt_issuer = Some("https://idp.example".into());
        c.jwt_audience = Some("agentwire".into());
    })
    .await;
    let hs = EncodingKey::from_secret(SECRET.as_bytes());
    let good = sign(
        Algorithm::HS256,
        &hs,
        &serde_json::json!({ "sub": "u", "exp": now() + 600, "iss": "https://idp.example", "aud": "agentwire" }),
    );
    let mut c = server
        .try_connect(server.request(&good, ""))
        .await
        .expect("good claims");
    c.read_established().await;
    for claims in [
        serde_json::json!({ "sub": "u", "exp": now() + 600, "aud": "agentwire" }),
        serde_json::json!({ "sub": "u", "exp": now() + 600, "iss": "https://evil", "aud": "agentwire" }),
        serde_json::json!({ "sub": "u", "exp": now() + 600, "iss": "https://idp.example", "aud": "other" }),
    ] {
        let token = sign(Algorithm::HS256, &hs, &claims);
        let (status, _) = server.refused(server.request(&token, "")).await;
        assert_eq!(status, 401, "{claims}");
    }
    c.close().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_origin_allow_list_refuses_other_origins_with_403() {
    let server = TestServer::start_with(|c| {
        c.allowed_origins = vec!["https://app.example".into()];
    })
    .await;
    let with_origin = |origin: &str| {
        let mut req = server.request(&server.token("alice"), "");
        req.headers_mut()
            .insert("origin", HeaderValue::from_str(origin).expect("header"));
        req
    };
    let (status, body) = server.refused(with_origin("https://evil.example")).await;
    assert_eq!(status, 403, "{body}");
    let mut ok = server
        .try_connect(with_origin("https://app.example"))
        .await
        .expect("allowed origin");
    ok.read_established().await;
    // Non-browser clients send no Origin.
    let mut bare = server.connect("bob").await;
    bare.send(&ClientFrame::Ping).await;
    assert_eq!(bare.frame().await, ServerFrame::Pong);
    ok.close().await;
    bare.close().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_expiry_while_connected_closes_4002_unless_refreshed() {
    let server = TestServer::start().await;
    // Expires within 1–2 s (exp has whole seconds).
    let mut expiring = server
        .try_connect(server.request(&server.token_ttl("alice", 2), ""))
        .await
        .expect("connects");
    expiring.read_established().await;
    let mut refreshed = server
        .try_connect(server.request(&server.token_ttl("bob", 2), ""))
        .await
        .expect("connects");
    refreshed.read_established().await;
    refreshed
        .send(&ClientFrame::RefreshToken {
            token: server.token_ttl("bob", 3600),
        })
        .await;
    // A token of another user is refused and changes nothing.
    refreshed
        .send(&ClientFrame::RefreshToken {
            token: server.token_ttl("mallory", 3600),
        })
        .await;
    match refreshed.frame().await {
        ServerFrame::Error(e) => {
            assert_eq!(e.code, ErrorCode::InvalidToken);
            assert!(e.message.contains("another user"), "{}", e.message);
        }
        other => panic!("expected an error frame, got {other:?}"),
    }

    assert_eq!(expiring.closed().await, Some(4002));

    // Well past bob's first expiry, bob is still served.
    assert_eq!(refreshed.recv_within(Duration::from_secs(2)).await, None);
    refreshed.send(&ClientFrame::Ping).await;
    assert_eq!(refreshed.recv().await, Received::Frame(ServerFrame::Pong));
    server
        .wait_until("alice's connection is removed", WAIT, |s| {
            s.manager()
                .connections_of(&agentwire_e2e::user("alice"))
                .is_empty()
        })
        .await;
    refreshed.close().await;
    server.stop().await;
}

/// Issue 14: the library never makes a secret up: without a secret or public key it does
/// not start, and says what to set.
#[tokio::test]
async fn a_server_without_credentials_does_not_start() {
    let mut config = agentwire_e2e::test_config();
    config.jwt_secret = None;
    config.dev_mode = true;
    let e = agentwire::server::Server::bind(config)
        .await
        .expect_err("no credentials");
    assert!(
        matches!(
            e,
            agentwire::server::ServerError::Auth(agentwire::server::AuthConfigError::NoCredentials)
        ),
        "{e}"
    );
    assert!(e.to_string().contains("AGENTWIRE_JWT_SECRET"), "{e}");
}
