//! End to end: `/openapi.json` describes the routes a real server serves — every documented
//! operation is routed (not 404/405), and its paths answer no undocumented method. (The
//! other direction, every routed operation documented, is checked against the route table
//! in `agentwire-server`'s unit tests.)

use agentwire_e2e::{TestServer, http_send};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_documented_operation_is_served() {
    let server = TestServer::start().await;
    let doc = server.http("GET", "/openapi.json", None).await;
    assert_eq!(doc.status, 200, "{}", doc.body);
    assert_eq!(doc.header("content-type"), Some("application/json"));
    let doc = doc.json();
    let paths = doc["paths"].as_object().expect("paths");
    assert!(paths.contains_key("/v1/events"), "{paths:?}");
    assert!(paths.contains_key("/v1/users/{user_id}/events"));
    let mut operations = 0;
    for (path, item) in paths {
        let concrete = path.replace("{user_id}", "probe-user");
        let documented: Vec<String> = item
            .as_object()
            .expect("path item")
            .keys()
            .filter(|k| {
                [
                    "get", "post", "put", "delete", "patch", "head", "options", "trace",
                ]
                .contains(&k.as_str())
            })
            .map(|k| k.to_ascii_uppercase())
            .collect();
        assert!(!documented.is_empty(), "{path} documents no operation");
        for method in &documented {
            operations += 1;
            // No credentials: a served route answers 401, 400, 200…, never 404 or 405.
            let r = http_send(server.addr, method, &concrete, &[], b"").await;
            assert!(
                r.status != 404 && r.status != 405,
                "{method} {path} is documented but answers {}: {}",
                r.status,
                r.body
            );
        }
        for method in ["PUT", "DELETE", "PATCH"] {
            if documented.iter().any(|m| m == method) {
                continue;
            }
            let r = http_send(server.addr, method, &concrete, &[], b"").await;
            assert_eq!(
                r.status, 405,
                "{method} {path} is not documented but answers {}",
                r.status
            );
        }
    }
    assert!(operations >= 9, "{operations} operations documented");
    // Each 4xx/5xx of the publish API is documented with the error body.
    let responses = &doc["paths"]["/v1/events"]["post"]["responses"];
    for status in ["400", "401", "409", "413", "415", "422", "429", "503"] {
        assert!(
            responses[status]["content"]["application/json"]["schema"]["$ref"]
                .as_str()
                .is_some_and(|r| r.ends_with("/ErrorBody")),
            "{status}: {}",
            responses[status]
        );
    }
    server.stop().await;
}
