//! Bad input, surface 4 of 5: the history read and the admin API (issue 14). Every case is
//! a request that must be refused: it asserts the status and the JSON error body (the
//! field named where there is one), that nothing was published and no connection was
//! closed, and that another user's stream goes on.

use agentwire_e2e::{API_KEY, Bystander, TestServer, accepted_events, assert_error_body, user};

const PUBLISH_KEY: &str = "agentwire-e2e-publish-only-key";

/// One refused request.
struct Case {
    name: String,
    method: &'static str,
    path: String,
    key: Option<&'static str>,
    status: u16,
    error: &'static str,
    field: Option<&'static str>,
}

fn case(
    name: impl Into<String>,
    method: &'static str,
    path: impl Into<String>,
    key: Option<&'static str>,
    status: u16,
    error: &'static str,
    field: Option<&'static str>,
) -> Case {
    Case {
        name: name.into(),
        method,
        path: path.into(),
        key,
        status,
        error,
        field,
    }
}

/// Rows about the key a request carries. The key checks themselves live in
/// `crates/server/src/auth`; their rows belong here, beside these.
fn credential_rows() -> Vec<Case> {
    let mut rows = Vec::new();
    for (what, method, path) in [
        ("history", "GET", "/v1/users/alice/events"),
        ("connections", "GET", "/v1/users/alice/connections"),
        ("disconnect", "POST", "/v1/users/alice/disconnect"),
    ] {
        rows.push(case(
            format!("{what}: no key"),
            method,
            path,
            None,
            401,
            "unauthorized",
            None,
        ));
        rows.push(case(
            format!("{what}: an unknown key"),
            method,
            path,
            Some("not-a-key"),
            401,
            "unauthorized",
            None,
        ));
        rows.push(case(
            format!("{what}: a publish-only key"),
            method,
            path,
            Some(PUBLISH_KEY),
            403,
            "forbidden",
            None,
        ));
    }
    rows
}

fn rows() -> Vec<Case> {
    let key = Some(API_KEY);
    let mut rows = vec![
        case(
            "history: a user id with a control character",
            "GET",
            "/v1/users/al%00ice/events",
            key,
            400,
            "bad_request",
            Some("user_id"),
        ),
        case(
            "history: a user id that is not UTF-8",
            "GET",
            "/v1/users/%FF%FE/events",
            key,
            400,
            "bad_request",
            None,
        ),
        case(
            "history: a user id over 256 bytes",
            "GET",
            format!("/v1/users/{}/events", "u".repeat(300)),
            key,
            400,
            "bad_request",
            Some("user_id"),
        ),
        case(
            "history: a negative after_seq",
            "GET",
            "/v1/users/alice/events?after_seq=-1",
            key,
            400,
            "bad_request",
            Some("after_seq"),
        ),
        case(
            "history: a limit that is not a number",
            "GET",
            "/v1/users/alice/events?limit=all",
            key,
            400,
            "bad_request",
            Some("limit"),
        ),
        case(
            "history: a limit over --history-read-max",
            "GET",
            "/v1/users/alice/events?limit=1000000",
            key,
            400,
            "bad_request",
            Some("limit"),
        ),
        case(
            "history: an unknown parameter",
            "GET",
            "/v1/users/alice/events?from=3",
            key,
            400,
            "bad_request",
            Some("from"),
        ),
        case(
            "history: a malformed query string",
            "GET",
            "/v1/users/alice/events?after_seq=%zz",
            key,
            400,
            "bad_request",
            Some("after_seq"),
        ),
        case(
            "history: another method",
            "DELETE",
            "/v1/users/alice/events",
            key,
            405,
            "method_not_allowed",
            None,
        ),
        case(
            "connections: a user id with a control character",
            "GET",
            "/v1/users/%01/connections",
            key,
            400,
            "bad_request",
            Some("user_id"),
        ),
        case(
            "disconnect: a user id that is not UTF-8",
            "POST",
            "/v1/users/%C3%28/disconnect",
            key,
            400,
            "bad_request",
            None,
        ),
        case(
            "disconnect: GET",
            "GET",
            "/v1/users/alice/disconnect",
            key,
            405,
            "method_not_allowed",
            None,
        ),
        case(
            "a path under /v1 no route serves",
            "GET",
            "/v1/users/alice",
            key,
            404,
            "not_found",
            None,
        ),
        case(
            "a traversal",
            "GET",
            "/v1/users/../../etc/passwd/events",
            key,
            404,
            "not_found",
            None,
        ),
    ];
    rows.extend(credential_rows());
    rows
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_reads_and_admin_calls_touch_no_one() {
    let server = TestServer::start_with(|c| c.publish_api_keys = vec![PUBLISH_KEY.into()]).await;
    let mut bystander = Bystander::connect(&server, "bystander").await;
    let alice = server.connect("alice").await;
    for c in rows() {
        let before = accepted_events(&server);
        let r = server.http(c.method, &c.path, c.key).await;
        assert_error_body(&r, c.status, c.error, c.field, &c.name);
        assert_eq!(
            server.manager().connections_of(&user("alice")).len(),
            1,
            "{}: no connection closed",
            c.name
        );
        bystander.untouched_since(&server, before, &c.name).await;
    }
    alice.close().await;
    server.stop().await;
}
