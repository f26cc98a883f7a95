//! Bad input, surface 3 of 5: the publish API, `POST /v1/events` (issue 14). Every case is
//! a request that must be refused whole: it asserts the status and the JSON error body
//! (the field named where there is one), that nothing of the body was published — the
//! node accepted no event and the target user's stream did not move — and that another
//! user's stream goes on. (The one case where part of a body is published, a broker
//! failure between users, is `e2e_publish.rs`'s.)

use agentwire_e2e::{
    API_KEY, Bystander, HttpResponse, TestServer, accepted_events, assert_error_body, http_send,
    raw_http,
};

const PUBLISH_KEY: &str = "agentwire-e2e-publish-only-key";

/// One refused publish.
struct Case {
    name: &'static str,
    headers: Vec<(&'static str, String)>,
    body: Vec<u8>,
    status: u16,
    error: &'static str,
    field: Option<&'static str>,
}

fn json_headers(key: &str) -> Vec<(&'static str, String)> {
    vec![
        ("Authorization", format!("Bearer {key}")),
        ("Content-Type", "application/json".into()),
    ]
}

fn case(
    name: &'static str,
    body: impl Into<Vec<u8>>,
    status: u16,
    error: &'static str,
    field: Option<&'static str>,
) -> Case {
    Case {
        name,
        headers: json_headers(API_KEY),
        body: body.into(),
        status,
        error,
        field,
    }
}

const OK: &str = r#"{"user_id":"alice","type":"custom","data":{"name":"n","value":1}}"#;

/// Rows about the credential a publish carries. The key checks themselves (lengths, the
/// credentials file) live in `crates/server/src/auth`; their rows belong here, beside
/// these.
fn credential_rows() -> Vec<Case> {
    vec![
        Case {
            headers: vec![("Content-Type", "application/json".into())],
            ..case("no key", OK, 401, "unauthorized", None)
        },
        Case {
            headers: json_headers("not-a-key"),
            ..case("an unknown key", OK, 401, "unauthorized", None)
        },
        Case {
            headers: vec![
                ("Authorization", format!("Basic {API_KEY}")),
                ("Content-Type", "application/json".into()),
            ],
            ..case("another scheme", OK, 401, "unauthorized", None)
        },
    ]
}

fn rows() -> Vec<Case> {
    let deep = format!("{}{}", "[".repeat(70), "]".repeat(70));
    let big = format!(
        r#"{{"user_id":"alice","type":"custom","data":{{"name":"n","value":"{}"}}}}"#,
        "x".repeat(2000)
    );
    let over_body = format!("[{}]", vec![OK; 200].join(","));
    let mut rows = vec![
        Case {
            headers: vec![("Authorization", format!("Bearer {API_KEY}"))],
            ..case("no content type", OK, 415, "unsupported_media_type", None)
        },
        Case {
            headers: vec![
                ("Authorization", format!("Bearer {API_KEY}")),
                ("Content-Type", "text/plain".into()),
            ],
            ..case(
                "another content type",
                OK,
                415,
                "unsupported_media_type",
                None,
            )
        },
        case("not JSON", r#"{"user_id":"#, 400, "bad_request", None),
        case(
            "not UTF-8",
            b"{\"user_id\":\"\xff\"}".to_vec(),
            400,
            "bad_request",
            None,
        ),
        case("neither object nor array", "42", 400, "bad_request", None),
        case("an empty batch", "[]", 400, "bad_request", None),
        case("nested too deep", deep, 400, "bad_request", None),
        case(
            "a body over --max-request-bytes",
            over_body,
            413,
            "payload_too_large",
            None,
        ),
        case(
            "a batch over --max-batch",
            format!("[{OK},{OK},{OK},{OK}]"),
            413,
            "payload_too_large",
            None,
        ),
        case(
            "an event over --max-event-bytes",
            big.clone(),
            413,
            "payload_too_large",
            None,
        ),
        case(
            "the same, inside a batch",
            format!("[{OK},{big}]"),
            413,
            "payload_too_large",
            Some("[1]"),
        ),
        case(
            "no type",
            r#"{"user_id":"alice","data":{}}"#,
            422,
            "invalid_event",
            Some("type"),
        ),
        case(
            "an unknown type",
            r#"{"user_id":"alice","type":"nap","data":{}}"#,
            422,
            "invalid_event",
            Some("type"),
        ),
        case(
            "an unknown field",
            r#"{"user_id":"alice","type":"custom","data":{"name":"n"},"extra":1}"#,
            422,
            "invalid_event",
            Some("extra"),
        ),
        case(
            "an empty user id",
            r#"{"user_id":"","type":"custom","data":{"name":"n"}}"#,
            422,
            "invalid_event",
            Some("user_id"),
        ),
        case(
            "a user id with a control character",
            r#"{"user_id":"al\u0000ice","type":"custom","data":{"name":"n"}}"#,
            422,
            "invalid_event",
            Some("user_id"),
        ),
        case(
            "user_id named twice (to publish to the victim)",
            r#"{"user_id":"alice","user_id":"victim","type":"custom","data":{"name":"n"}}"#,
            422,
            "invalid_event",
            Some("user_id"),
        ),
        case(
            "a key named twice inside data",
            r#"{"user_id":"alice","type":"custom","data":{"name":"n","name":"m"}}"#,
            422,
            "invalid_event",
            Some("data.name"),
        ),
        case(
            "a run event without run_id",
            r#"{"user_id":"alice","type":"agent_started","data":{}}"#,
            422,
            "invalid_event",
            Some("run_id"),
        ),
        case(
            "an ill-typed field",
            r#"{"user_id":"alice","type":"agent_thinking","run_id":"r1","data":{"thought":5}}"#,
            422,
            "invalid_event",
            Some("data.thought"),
        ),
        case(
            "a bad item after good ones: nothing of the batch",
            format!(r#"[{OK},{OK},{{"user_id":"alice","type":"nap"}}]"#),
            422,
            "invalid_event",
            Some("[2].type"),
        ),
        case(
            "a bad item among good ones",
            format!(r#"[{OK},{{"user_id":"alice","type":"nap"}}]"#),
            422,
            "invalid_event",
            Some("[1].type"),
        ),
        case(
            "an event that breaks its run",
            r#"{"user_id":"alice","type":"tool_completed","run_id":"r9","data":{"tool_call_id":"tc1","tool_name":"t","result":null,"is_error":false,"duration_ms":1}}"#,
            409,
            "run_violation",
            Some("type"),
        ),
        case(
            "an event_id reused for a different event",
            r#"{"user_id":"alice","type":"custom","event_id":"e-once","data":{"name":"other"}}"#,
            409,
            "event_id_conflict",
            Some("event_id"),
        ),
        case(
            "a body of more events than --publish-burst",
            format!("[{OK},{OK},{OK}]"),
            429,
            "rate_limited",
            None,
        ),
    ];
    rows.extend(credential_rows());
    rows
}

async fn last_seq_of(server: &TestServer, user: &str) -> u64 {
    let r = server
        .http(
            "GET",
            &format!("/v1/users/{user}/events?limit=0"),
            Some(API_KEY),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    r.json()["last_seq"].as_u64().expect("last_seq")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_publishes_publish_nothing_and_touch_no_one_else() {
    let server = TestServer::start_with(|c| {
        c.max_event_bytes = 1024;
        c.max_request_bytes = 8 * 1024;
        c.max_batch = 3;
        c.publish_burst = 2;
        c.publish_rate = 1_000;
        c.publish_api_keys = vec![PUBLISH_KEY.into()];
    })
    .await;
    let mut bystander = Bystander::connect(&server, "bystander").await;
    // What a conflict needs: an event_id accepted before.
    let first = http_send(
        server.addr,
        "POST",
        "/v1/events",
        &[
            ("Authorization", &format!("Bearer {API_KEY}")),
            ("Content-Type", "application/json"),
        ],
        br#"{"user_id":"alice","type":"custom","event_id":"e-once","data":{"name":"first"}}"#,
    )
    .await;
    assert_eq!(first.status, 200, "{}", first.body);
    let mut alice_seq = last_seq_of(&server, "alice").await;
    assert_eq!(alice_seq, 1);

    for c in rows() {
        // The bucket refills between cases (2 events at 1,000/s): only the over-burst row
        // can be refused for the rate.
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        let before = accepted_events(&server);
        let headers: Vec<(&str, &str)> = c.headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
        let r = http_send(server.addr, "POST", "/v1/events", &headers, &c.body).await;
        assert_error_body(&r, c.status, c.error, c.field, c.name);
        if c.status == 401 {
            assert_eq!(r.header("www-authenticate"), Some("Bearer"), "{}", c.name);
        }
        if c.status == 429 {
            assert_eq!(
                r.header("retry-after"),
                None,
                "{}: waiting cannot help",
                c.name
            );
        }
        assert_eq!(last_seq_of(&server, "alice").await, alice_seq, "{}", c.name);
        assert_eq!(last_seq_of(&server, "victim").await, 0, "{}", c.name);
        bystander.untouched_since(&server, before, c.name).await;
    }

    // A malformed request hyper refuses before any route: a bad Content-Length.
    let before = accepted_events(&server);
    let r = raw_http(
        server.addr,
        format!(
            "POST /v1/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {API_KEY}\r\n\
             Content-Type: application/json\r\nContent-Length: 1x\r\n\r\n{OK}"
        )
        .as_bytes(),
    )
    .await;
    assert_error_body(&r, 400, "bad_request", None, "a bad Content-Length");
    bystander
        .untouched_since(&server, before, "a bad Content-Length")
        .await;

    // The API still publishes.
    let ok = publish_ok(&server).await;
    assert_eq!(ok.status, 200, "{}", ok.body);
    alice_seq += 1;
    assert_eq!(last_seq_of(&server, "alice").await, alice_seq);
    server.stop().await;
}

async fn publish_ok(server: &TestServer) -> HttpResponse {
    http_send(
        server.addr,
        "POST",
        "/v1/events",
        &[
            ("Authorization", &format!("Bearer {API_KEY}")),
            ("Content-Type", "application/json"),
        ],
        OK.as_bytes(),
    )
    .await
}
