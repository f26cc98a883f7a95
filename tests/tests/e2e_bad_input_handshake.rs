//! Bad input, surface 1 of 5: the `/ws` handshake (issue 14). Every case is a handshake
//! that must be refused before the upgrade: it asserts the status, the JSON error body
//! (and RFC 6455's `Sec-WebSocket-Version: 13` where the version is wrong), that no
//! connection was registered for the user, that nothing was published, and that another
//! user's stream goes on.

use std::net::SocketAddr;

use agentwire_e2e::{
    Bystander, HttpResponse, TestServer, accepted_events, assert_error_body, raw_http, user,
};

const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

/// A handshake request for `/ws`, valid until a case changes it.
#[derive(Debug, Clone)]
struct Handshake {
    method: &'static str,
    target: String,
    version: &'static str,
    headers: Vec<(String, String)>,
}

impl Handshake {
    fn new(addr: SocketAddr, token: &str) -> Handshake {
        Handshake {
            method: "GET",
            target: "/ws".into(),
            version: "HTTP/1.1",
            headers: vec![
                ("Host".into(), addr.to_string()),
                ("Connection".into(), "Upgrade".into()),
                ("Upgrade".into(), "websocket".into()),
                ("Sec-WebSocket-Version".into(), "13".into()),
                ("Sec-WebSocket-Key".into(), KEY.into()),
                ("Authorization".into(), format!("Bearer {token}")),
            ],
        }
    }

    fn method(mut self, m: &'static str) -> Self {
        self.method = m;
        self
    }

    fn target(mut self, t: impl Into<String>) -> Self {
        self.target = t.into();
        self
    }

    fn version(mut self, v: &'static str) -> Self {
        self.version = v;
        self
    }

    fn without(mut self, name: &str) -> Self {
        self.headers.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
        self
    }

    fn set(self, name: &str, value: impl Into<String>) -> Self {
        self.without(name).add(name, value)
    }

    fn add(mut self, name: &str, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    fn bytes(&self) -> Vec<u8> {
        let mut out = format!("{} {} {}\r\n", self.method, self.target, self.version);
        for (n, v) in &self.headers {
            out.push_str(&format!("{n}: {v}\r\n"));
        }
        out.push_str("\r\n");
        out.into_bytes()
    }
}

/// One refused handshake: how to make it, and the answer it gets.
struct Case {
    name: &'static str,
    request: Handshake,
    status: u16,
    error: &'static str,
    field: Option<&'static str>,
}

fn case(
    name: &'static str,
    request: Handshake,
    status: u16,
    error: &'static str,
    field: Option<&'static str>,
) -> Case {
    Case {
        name,
        request,
        status,
        error,
        field,
    }
}

/// Rows about the credential a handshake carries: one per kind of refusal. Every token
/// check (carriers, shapes, claims, sizes) has its rows in `e2e_auth_matrix.rs`.
fn credential_rows(base: &Handshake) -> Vec<Case> {
    vec![
        case(
            "no token at all",
            base.clone().without("Authorization"),
            401,
            "unauthorized",
            None,
        ),
        case(
            "a bearer that is not a JWT",
            base.clone().set("Authorization", "Bearer not-a-jwt"),
            401,
            "unauthorized",
            Some("Authorization"),
        ),
        case(
            "another scheme",
            base.clone().set("Authorization", "Basic YWxpY2U6c2VjcmV0"),
            401,
            "unauthorized",
            Some("Authorization"),
        ),
        case(
            "a token signed with another secret",
            base.clone().without("Authorization").target(format!(
                "/ws?token={}",
                agentwire::server::mint_hs256(
                    b"a-different-secret-of-thirty-two-bytes",
                    &user("mallory"),
                    std::time::Duration::from_secs(60),
                    None,
                    None,
                )
                .expect("mint")
            )),
            401,
            "unauthorized",
            Some("token"),
        ),
    ]
}

fn rows(base: &Handshake) -> Vec<Case> {
    let mut rows = vec![
        case(
            "not GET",
            base.clone().method("POST"),
            405,
            "method_not_allowed",
            None,
        ),
        case(
            "HTTP/1.0",
            base.clone().version("HTTP/1.0"),
            400,
            "bad_request",
            None,
        ),
        case(
            "no Host",
            base.clone().without("Host"),
            400,
            "bad_request",
            None,
        ),
        case(
            "Connection without upgrade",
            base.clone().set("Connection", "keep-alive"),
            400,
            "bad_request",
            None,
        ),
        case(
            "Upgrade is not websocket",
            base.clone().set("Upgrade", "h2c"),
            400,
            "bad_request",
            None,
        ),
        case(
            "an old version",
            base.clone().set("Sec-WebSocket-Version", "8"),
            400,
            "bad_request",
            None,
        ),
        case(
            "no version",
            base.clone().without("Sec-WebSocket-Version"),
            400,
            "bad_request",
            None,
        ),
        case(
            "the version twice",
            base.clone().add("Sec-WebSocket-Version", "13"),
            400,
            "bad_request",
            None,
        ),
        case(
            "no key",
            base.clone().without("Sec-WebSocket-Key"),
            400,
            "bad_request",
            None,
        ),
        case(
            "a key that is not 16 bytes of base64",
            base.clone().set("Sec-WebSocket-Key", "c2hvcnQ="),
            400,
            "bad_request",
            None,
        ),
        case(
            "a key with characters base64 has not",
            base.clone()
                .set("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25j!Q=="),
            400,
            "bad_request",
            None,
        ),
        case(
            "the key twice",
            base.clone().add("Sec-WebSocket-Key", KEY),
            400,
            "bad_request",
            None,
        ),
        case(
            "last_seq without epoch",
            base.clone().target("/ws?last_seq=3"),
            400,
            "bad_request",
            Some("epoch"),
        ),
        case(
            "epoch without last_seq",
            base.clone().target("/ws?epoch=e_1"),
            400,
            "bad_request",
            Some("last_seq"),
        ),
        case(
            "a negative last_seq",
            base.clone().target("/ws?last_seq=-1&epoch=e_1"),
            400,
            "bad_request",
            Some("last_seq"),
        ),
        case(
            "an epoch breaking the identifier rule",
            base.clone().target("/ws?last_seq=1&epoch=%00"),
            400,
            "bad_request",
            Some("epoch"),
        ),
        case(
            "an Origin not allowed",
            base.clone().set("Origin", "https://evil.example"),
            403,
            "forbidden",
            None,
        ),
        case(
            "a target over --max-uri-bytes",
            base.clone()
                .target(format!("/ws?pad={}", "p".repeat(13 * 1024))),
            414,
            "uri_too_long",
            None,
        ),
        case(
            "a head over --max-header-bytes",
            base.clone().add("X-Padding", "h".repeat(17 * 1024)),
            431,
            "headers_too_large",
            None,
        ),
    ];
    rows.extend(credential_rows(base));
    rows
}

fn version_header(r: &HttpResponse) -> Option<&str> {
    r.header("sec-websocket-version")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_handshakes_get_their_status_and_body_and_touch_no_one_else() {
    let server = TestServer::start_with(|c| {
        c.allowed_origins = vec!["https://app.example".into()];
    })
    .await;
    let mut bystander = Bystander::connect(&server, "bystander").await;
    let base = Handshake::new(server.addr, &server.token("alice"));
    // The base itself is a valid handshake.
    let ok = raw_http(server.addr, &base.bytes()).await;
    assert_eq!(ok.status, 101, "{}", ok.body);
    server
        .wait_until(
            "the valid handshake's connection ends",
            agentwire_e2e::WAIT,
            |s| s.manager().connections_of(&user("alice")).is_empty(),
        )
        .await;

    for c in rows(&base) {
        let before = accepted_events(&server);
        let r = raw_http(server.addr, &c.request.bytes()).await;
        assert_error_body(&r, c.status, c.error, c.field, c.name);
        let wrong_version = c.name.contains("version");
        assert_eq!(
            version_header(&r),
            wrong_version.then_some("13"),
            "{}: RFC 6455 §4.2.2 names the version the server speaks",
            c.name
        );
        assert!(
            server.manager().connections_of(&user("alice")).is_empty(),
            "{}: no connection registered",
            c.name
        );
        bystander.untouched_since(&server, before, c.name).await;
    }
    let metrics = server.metrics().await;
    assert!(
        agentwire_e2e::metric(
            &metrics,
            "agentwire_handshake_rejections_total{reason=\"bad_request\"}"
        )
        .is_some_and(|n| n >= 14.0),
        "{metrics}"
    );
    server.stop().await;
}
