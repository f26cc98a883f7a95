//! The bad-input matrix of authentication (issue 14): every way a handshake carrier, a
//! token, an API key or a `refresh_token` frame can be wrong, each case asserting the
//! status (or the `error` frame), the error body — `error`, `field`, what the message says
//! and that it never repeats the token — and the refusal counted by its reason. Throughout,
//! another user stays connected and receives every event of theirs, in order, and nothing
//! else: one client's bad input never reaches another's stream.

use agentwire::protocol::{ClientFrame, ErrorCode, ServerFrame};
use agentwire_e2e::{
    API_KEY, Client, SECRET, TestServer, base64url, http_request, http_send, metric, user,
};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::client::Request;
use tokio_tungstenite::tungstenite::http::HeaderValue;

/// The token size bound of the matrix's server (`--jwt-max-bytes`).
const MAX_TOKEN: usize = 1024;
const PUBLISH_KEY: &str = "matrix-publish-only-key";

fn now() -> u64 {
    jsonwebtoken::get_current_timestamp()
}

fn hs256(claims: &serde_json::Value) -> String {
    hs256_with(&EncodingKey::from_secret(SECRET.as_bytes()), claims)
}

fn hs256_with(key: &EncodingKey, claims: &serde_json::Value) -> String {
    jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, key).expect("encode")
}

fn claims(sub: &str) -> serde_json::Value {
    serde_json::json!({ "sub": sub, "exp": now() + 600 })
}

/// An HS256 token over a payload written by hand (e.g. with a key given twice).
fn hs256_raw(payload: &str) -> String {
    let message = format!(
        "{}.{}",
        base64url(br#"{"alg":"HS256","typ":"JWT"}"#),
        base64url(payload.as_bytes())
    );
    let signature = jsonwebtoken::crypto::sign(
        message.as_bytes(),
        &EncodingKey::from_secret(SECRET.as_bytes()),
        Algorithm::HS256,
    )
    .expect("sign");
    format!("{message}.{signature}")
}

/// A valid token for `sub` padded past [`MAX_TOKEN`].
fn oversized(sub: &str) -> String {
    let mut c = claims(sub);
    c["pad"] = serde_json::json!("x".repeat(MAX_TOKEN));
    hs256(&c)
}

/// What a refused handshake must answer.
struct Expect {
    status: u16,
    error: &'static str,
    field: Option<&'static str>,
    says: &'static str,
    reason: &'static str,
}

/// The handshake is refused as `expect` says, and the body never contains `secret`.
async fn assert_refused(
    server: &TestServer,
    what: &str,
    req: Request,
    secret: &str,
    expect: &Expect,
) {
    let (status, body) = server.refused(req).await;
    assert_eq!(status, expect.status, "{what}: {body}");
    let json: serde_json::Value =
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("{what}: not JSON ({e}): {body}"));
    assert_eq!(json["error"], expect.error, "{what}: {body}");
    assert_eq!(
        json["field"],
        expect
            .field
            .map_or(serde_json::Value::Null, |f| serde_json::json!(f)),
        "{what}: {body}"
    );
    let message = json["message"].as_str().unwrap_or_default();
    assert!(
        message.contains(expect.says),
        "{what}: `{}` missing: {body}",
        expect.says
    );
    if secret.len() > 8 {
        assert!(
            !body.contains(secret),
            "{what}: the token is echoed: {body}"
        );
    }
}

fn bare(server: &TestServer, query: &str) -> Request {
    server.ws_url(query).into_client_request().expect("request")
}

fn with_header(mut req: Request, name: &'static str, value: &str) -> Request {
    req.headers_mut()
        .append(name, HeaderValue::from_str(value).expect("header value"));
    req
}

fn subprotocol(token: &str) -> String {
    format!("agentwire.v1, agentwire.auth.{token}")
}

/// The victim: connected before the matrix, it must see exactly its own events.
async fn victim_sees_only_its_events(server: &TestServer, victim: &mut Client, expected: &[u64]) {
    for n in expected {
        let e = victim.event().await;
        assert_eq!(
            agentwire_e2e::custom_value(&e),
            Some(*n),
            "victim's events in order"
        );
    }
    victim.send(&ClientFrame::Ping).await;
    assert_eq!(victim.frame().await, ServerFrame::Pong, "and nothing else");
    assert_eq!(
        server.manager().connections_of(&user("victim")).len(),
        1,
        "the victim's connection is untouched"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshake_carriers_and_token_shapes() {
    let server = TestServer::start_with(|c| {
        c.jwt_max_bytes = MAX_TOKEN;
        c.jwt_leeway = std::time::Duration::from_secs(30);
    })
    .await;
    let mut victim = server.connect("victim").await;
    server.emit("victim", agentwire_e2e::custom(1)).await;

    let alice = server.token("alice");
    let bob = server.token("bob");
    let unauthorized = |field, says, reason| Expect {
        status: 401,
        error: "unauthorized",
        field,
        says,
        reason,
    };

    // Carriers.
    let carriers: Vec<(&str, Request, Expect)> = vec![
        (
            "no token",
            bare(&server, ""),
            unauthorized(None, "no token", "token_missing"),
        ),
        (
            "Authorization: Basic",
            with_header(
                bare(&server, ""),
                "authorization",
                &format!("Basic {alice}"),
            ),
            unauthorized(Some("Authorization"), "Bearer <jwt>", "token_malformed"),
        ),
        (
            "Authorization: Bearer with nothing after it",
            with_header(bare(&server, ""), "authorization", "Bearer"),
            unauthorized(Some("Authorization"), "Bearer <jwt>", "token_malformed"),
        ),
        (
            "an empty ?token=",
            bare(&server, "?token="),
            unauthorized(Some("token"), "empty token", "token_malformed"),
        ),
        (
            "an empty subprotocol token",
            with_header(
                bare(&server, ""),
                "sec-websocket-protocol",
                "agentwire.v1, agentwire.auth.",
            ),
            unauthorized(
                Some("Sec-WebSocket-Protocol"),
                "empty token",
                "token_malformed",
            ),
        ),
        (
            "Authorization and the subprotocol disagree",
            with_header(
                server.request(&alice, ""),
                "sec-websocket-protocol",
                &subprotocol(&bob),
            ),
            disagree_again(),
        ),
        (
            "Authorization and ?token= disagree",
            server.request(&alice, &format!("?token={bob}")),
            Expect {
                says: "`?token=`",
                ..disagree_again()
            },
        ),
        (
            "two ?token= disagree",
            bare(&server, &format!("?token={alice}&token={bob}")),
            disagree_again(),
        ),
        (
            "two Authorization headers disagree",
            with_header(
                server.request(&alice, ""),
                "authorization",
                &format!("Bearer {bob}"),
            ),
            disagree_again(),
        ),
        (
            "the subprotocol and ?token= disagree",
            with_header(
                bare(&server, &format!("?token={bob}")),
                "sec-websocket-protocol",
                &subprotocol(&alice),
            ),
            disagree_again(),
        ),
    ];
    let mut expected_reasons: Vec<&str> = Vec::new();
    for (what, req, expect) in carriers {
        assert_refused(&server, what, req, &alice, &expect).await;
        expected_reasons.push(expect.reason);
    }

    // Token shapes and claims, each in the Authorization header.
    let hs = EncodingKey::from_secret(SECRET.as_bytes());
    let unsigned = format!(
        "{}.{}.",
        base64url(br#"{"alg":"none","typ":"JWT"}"#),
        base64url(claims("alice").to_string().as_bytes())
    );
    let shapes: Vec<(&str, String, Expect)> = vec![
        (
            "one part",
            "notajwt".into(),
            unauthorized(Some("Authorization"), "malformed token", "token_malformed"),
        ),
        (
            "three parts of garbage",
            "a.b.c".into(),
            unauthorized(Some("Authorization"), "malformed token", "token_malformed"),
        ),
        (
            "alg none",
            unsigned,
            unauthorized(Some("Authorization"), "`alg`", "token_malformed"),
        ),
        (
            "HS512",
            jsonwebtoken::encode(&Header::new(Algorithm::HS512), &claims("alice"), &hs)
                .expect("encode"),
            unauthorized(
                Some("Authorization"),
                "HS512 is not accepted",
                "token_algorithm",
            ),
        ),
        (
            "another secret",
            hs256_with(
                &EncodingKey::from_secret(b"another secret of thirty-two bytes!"),
                &claims("alice"),
            ),
            unauthorized(Some("Authorization"), "signature", "token_signature"),
        ),
        (
            "expired beyond the leeway",
            hs256(&serde_json::json!({"sub": "alice", "exp": now() - 3600})),
            unauthorized(Some("Authorization"), "expired", "token_expired"),
        ),
        (
            "nbf an hour ahead",
            hs256(&serde_json::json!({"sub": "alice", "exp": now() + 7200, "nbf": now() + 3600})),
            unauthorized(
                Some("Authorization"),
                "not valid yet",
                "token_not_yet_valid",
            ),
        ),
        (
            "iat an hour ahead",
            hs256(&serde_json::json!({"sub": "alice", "exp": now() + 7200, "iat": now() + 3600})),
            unauthorized(
                Some("Authorization"),
                "issued in the future",
                "token_issued_in_future",
            ),
        ),
        (
            "no exp",
            hs256(&serde_json::json!({"sub": "alice"})),
            unauthorized(Some("Authorization"), "`exp`", "token_claims"),
        ),
        (
            "no sub",
            hs256(&serde_json::json!({"exp": now() + 600})),
            unauthorized(Some("Authorization"), "`sub`", "token_claims"),
        ),
        (
            "exp as a string",
            hs256(&serde_json::json!({"sub": "alice", "exp": "tomorrow"})),
            unauthorized(Some("Authorization"), "`exp`", "token_claims"),
        ),
        (
            "sub not a string",
            hs256(&serde_json::json!({"sub": 42, "exp": now() + 600})),
            unauthorized(Some("Authorization"), "`sub`", "token_claims"),
        ),
        (
            "sub with a control character",
            hs256(&claims("ali\u{7}ce")),
            unauthorized(
                Some("Authorization"),
                "not a valid user id",
                "token_subject",
            ),
        ),
        (
            "sub given twice (alice, then victim)",
            hs256_raw(&format!(
                r#"{{"sub":"alice","sub":"victim","exp":{}}}"#,
                now() + 600
            )),
            unauthorized(Some("Authorization"), "each given once", "token_claims"),
        ),
    ];
    for (what, token, expect) in shapes {
        assert_refused(&server, what, server.request(&token, ""), &token, &expect).await;
        expected_reasons.push(expect.reason);
    }

    // Sizes: 431 in a header, 400 in the query string.
    let big = oversized("alice");
    let too_large = |status, error, field| Expect {
        status,
        error,
        field: Some(field),
        says: "--jwt-max-bytes",
        reason: "token_too_large",
    };
    let sizes = [
        (
            "in Authorization",
            server.request(&big, ""),
            too_large(431, "headers_too_large", "Authorization"),
        ),
        (
            "in the subprotocol",
            with_header(
                bare(&server, ""),
                "sec-websocket-protocol",
                &subprotocol(&big),
            ),
            too_large(431, "headers_too_large", "Sec-WebSocket-Protocol"),
        ),
        (
            "in ?token=",
            bare(&server, &format!("?token={big}")),
            too_large(400, "bad_request", "token"),
        ),
    ];
    for (what, req, expect) in sizes {
        assert_refused(&server, what, req, &big, &expect).await;
        expected_reasons.push(expect.reason);
    }

    // The same token in two carriers is one token: accepted.
    let mut same = server
        .try_connect(server.request(&alice, &format!("?token={alice}")))
        .await
        .expect("one token in two carriers");
    assert_eq!(same.read_established().await.user_id.as_str(), "alice");
    same.close().await;

    // Every refusal was counted under its reason.
    let text = server.metrics().await;
    let mut by_reason = std::collections::BTreeMap::<&str, f64>::new();
    for reason in &expected_reasons {
        *by_reason.entry(reason).or_default() += 1.0;
    }
    for (reason, n) in by_reason {
        let name = format!("agentwire_handshake_rejections_total{{reason=\"{reason}\"}}");
        assert_eq!(metric(&text, &name), Some(n), "{name}\n{text}");
    }

    server.emit("victim", agentwire_e2e::custom(2)).await;
    victim_sees_only_its_events(&server, &mut victim, &[1, 2]).await;
    victim.close().await;
    server.stop().await;
}

fn disagree_again() -> Expect {
    Expect {
        status: 400,
        error: "bad_request",
        field: None,
        says: "send one token, in one carrier",
        reason: "token_carriers_disagree",
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_keys_on_the_publish_and_admin_api() {
    let server = TestServer::start_with(|c| c.publish_api_keys = vec![PUBLISH_KEY.into()]).await;
    let mut victim = server.connect("victim").await;
    let event = serde_json::json!({
        "user_id": "victim", "type": "custom", "data": {"name": "n", "value": 1}
    });
    let body = event.to_string();
    let publish = |auth: Option<String>| {
        let body = body.clone();
        let addr = server.addr;
        async move {
            let mut headers = vec![("Content-Type", "application/json".to_owned())];
            if let Some(a) = auth {
                headers.push(("Authorization", a));
            }
            let headers: Vec<(&str, &str)> =
                headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
            http_send(addr, "POST", "/v1/events", &headers, body.as_bytes()).await
        }
    };
    let cases: Vec<(&str, Option<String>, u16, &str, &str)> = vec![
        (
            "no Authorization",
            None,
            401,
            "unauthorized",
            "Bearer <api key>",
        ),
        (
            "an unknown key",
            Some("Bearer an-unknown-key-of-length".into()),
            401,
            "unauthorized",
            "unknown API key",
        ),
        (
            "a short key",
            Some("Bearer k".into()),
            401,
            "unauthorized",
            "unknown API key",
        ),
        (
            "Basic instead of Bearer",
            Some(format!("Basic {API_KEY}")),
            401,
            "unauthorized",
            "Bearer <api key>",
        ),
        (
            "a client token as an API key",
            Some(format!("Bearer {}", server.token("victim"))),
            401,
            "unauthorized",
            "unknown API key",
        ),
        (
            "a key with a suffix",
            Some(format!("Bearer {API_KEY}x")),
            401,
            "unauthorized",
            "unknown API key",
        ),
    ];
    for (what, auth, status, error, says) in cases {
        let r = publish(auth.clone()).await;
        assert_eq!(r.status, status, "{what}: {}", r.body);
        let json = r.json();
        assert_eq!(json["error"], error, "{what}");
        assert_eq!(json["field"], serde_json::Value::Null, "{what}");
        assert!(
            json["message"].as_str().is_some_and(|m| m.contains(says)),
            "{what}: {json}"
        );
        assert_eq!(r.header("www-authenticate"), Some("Bearer"), "{what}");
        if let Some(a) = auth {
            let secret = a.split_once(' ').map_or("", |(_, k)| k);
            assert!(
                secret.len() < 8 || !r.body.contains(secret),
                "{what}: the key is echoed"
            );
        }
    }
    // Several Authorization headers: which one counts is not guessed — even when the
    // first holds a good key, or both hold the same one.
    for (what, first, second) in [
        (
            "a good key, then an unknown one",
            API_KEY,
            "an-unknown-key-of-length",
        ),
        (
            "an unknown key, then a good one",
            "an-unknown-key-of-length",
            API_KEY,
        ),
        ("the same good key twice", API_KEY, API_KEY),
    ] {
        let (first, second) = (format!("Bearer {first}"), format!("Bearer {second}"));
        let headers = [
            ("Content-Type", "application/json"),
            ("Authorization", first.as_str()),
            ("Authorization", second.as_str()),
        ];
        for (method, path, body) in [
            ("POST", "/v1/events", body.as_bytes()),
            ("GET", "/v1/users/victim/connections", &b""[..]),
        ] {
            let r = http_send(server.addr, method, path, &headers, body).await;
            assert_eq!(r.status, 400, "{what}, {path}: {}", r.body);
            let json = r.json();
            assert_eq!(json["error"], "bad_request", "{what}, {path}");
            assert_eq!(json["field"], "Authorization", "{what}, {path}");
            assert!(
                json["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("one `Authorization")),
                "{what}, {path}: {json}"
            );
            assert!(
                !r.body.contains(API_KEY),
                "{what}, {path}: the key is echoed"
            );
        }
    }
    // A publish-only key may not read another user's history or list connections.
    for path in ["/v1/users/victim/events", "/v1/users/victim/connections"] {
        let r = http_request(server.addr, "GET", path, Some(PUBLISH_KEY)).await;
        assert_eq!(r.status, 403, "{path}: {}", r.body);
        assert_eq!(r.json()["error"], "forbidden", "{path}");
    }
    // An API key is not a client token.
    let (status, body) = server.refused(server.request(API_KEY, "")).await;
    assert_eq!(status, 401, "{body}");
    assert!(!body.contains(API_KEY), "{body}");

    // Nothing was published by the refused requests; a good one reaches the victim alone.
    let r = publish(Some(format!("Bearer {PUBLISH_KEY}"))).await;
    assert_eq!(r.status, 200, "{}", r.body);
    victim_sees_only_its_events(&server, &mut victim, &[1]).await;
    victim.close().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_token_frames() {
    let server = TestServer::start_with(|c| c.jwt_max_bytes = MAX_TOKEN).await;
    let mut victim = server.connect("victim").await;
    let mut bob = server.connect("bob").await;
    let cases: Vec<(&str, String, ErrorCode, &str, &str)> = vec![
        (
            "garbage",
            r#"{"type":"refresh_token","token":"garbage"}"#.into(),
            ErrorCode::InvalidToken,
            "malformed token",
            "token_malformed",
        ),
        (
            "expired",
            ClientFrame::RefreshToken {
                token: hs256(&serde_json::json!({"sub": "bob", "exp": now() - 3600})),
            }
            .to_json(),
            ErrorCode::InvalidToken,
            "expired",
            "token_expired",
        ),
        (
            "nbf ahead",
            ClientFrame::RefreshToken {
                token: hs256(
                    &serde_json::json!({"sub": "bob", "exp": now() + 7200, "nbf": now() + 3600}),
                ),
            }
            .to_json(),
            ErrorCode::InvalidToken,
            "not valid yet",
            "token_not_yet_valid",
        ),
        (
            "iat ahead",
            ClientFrame::RefreshToken {
                token: hs256(
                    &serde_json::json!({"sub": "bob", "exp": now() + 7200, "iat": now() + 3600}),
                ),
            }
            .to_json(),
            ErrorCode::InvalidToken,
            "issued in the future",
            "token_issued_in_future",
        ),
        (
            "another user's token",
            ClientFrame::RefreshToken {
                token: server.token("victim"),
            }
            .to_json(),
            ErrorCode::InvalidToken,
            "another user",
            "token_other_user",
        ),
        (
            "over --jwt-max-bytes",
            ClientFrame::RefreshToken {
                token: oversized("bob"),
            }
            .to_json(),
            ErrorCode::InvalidToken,
            "--jwt-max-bytes",
            "token_too_large",
        ),
        (
            "no token field",
            r#"{"type":"refresh_token"}"#.into(),
            ErrorCode::BadRequest,
            "token",
            "",
        ),
        (
            "a number as the token",
            r#"{"type":"refresh_token","token":5}"#.into(),
            ErrorCode::BadRequest,
            "token",
            "",
        ),
    ];
    for (what, frame, code, says, _) in &cases {
        bob.send_text(frame).await;
        match bob.frame().await {
            ServerFrame::Error(e) => {
                assert_eq!(e.code, *code, "{what}: {}", e.message);
                assert!(e.message.contains(says), "{what}: {}", e.message);
                assert!(
                    !e.message.contains("eyJ"),
                    "{what}: a token is echoed: {}",
                    e.message
                );
            }
            other => panic!("{what}: expected an error frame, got {other:?}"),
        }
        // Still connected, still bob.
        bob.send(&ClientFrame::Ping).await;
        assert_eq!(bob.frame().await, ServerFrame::Pong, "{what}");
    }
    let text = server.metrics().await;
    for (what, _, _, _, reason) in &cases {
        if reason.is_empty() {
            continue;
        }
        let name = format!("agentwire_token_refresh_refusals_total{{reason=\"{reason}\"}}");
        assert_eq!(metric(&text, &name), Some(1.0), "{what}: {name}\n{text}");
    }
    assert_eq!(
        metric(&text, "agentwire_token_refreshes_total"),
        Some(0.0),
        "{text}"
    );
    // A good refresh still works after all of that.
    bob.send(&ClientFrame::RefreshToken {
        token: server.token("bob"),
    })
    .await;
    bob.send(&ClientFrame::Ping).await;
    assert_eq!(bob.frame().await, ServerFrame::Pong);

    server.emit("victim", agentwire_e2e::custom(1)).await;
    victim_sees_only_its_events(&server, &mut victim, &[1]).await;
    bob.send(&ClientFrame::Ping).await;
    assert_eq!(
        bob.frame().await,
        ServerFrame::Pong,
        "bob saw none of the victim's events"
    );
    bob.close().await;
    victim.close().await;
    server.stop().await;
}
