//! The HTTP side: `GET /ws` (the handshake), `POST /v1/events`, `GET /metrics`, and
//! agentwire's JSON error shape for every refusal.

use std::convert::Infallible;
use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use serde::{Deserialize, Serialize};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

use crate::hub::{Accepted, Hub, InEvent};

/// What the routes need besides the hub.
#[derive(Debug)]
pub(crate) struct Auth {
    pub(crate) jwt: jsonwebtoken::DecodingKey,
    pub(crate) validation: jsonwebtoken::Validation,
    pub(crate) api_keys: Vec<String>,
    /// Most events in one publish body.
    pub(crate) max_batch: usize,
    /// Most bytes in one publish body.
    pub(crate) max_request_bytes: usize,
}

/// Most bytes of an identifier (agentwire's `MAX_ID_BYTES`).
const MAX_ID_BYTES: usize = 256;

type Answer = Response<Full<Bytes>>;

/// agentwire's error body: `{"error", "message", "field"}`.
fn error(status: StatusCode, code: &str, message: &str) -> Answer {
    #[derive(Serialize)]
    struct Body<'a> {
        error: &'a str,
        message: &'a str,
        field: Option<&'a str>,
    }
    let body = serde_json::to_vec(&Body {
        error: code,
        message,
        field: None,
    })
    .unwrap_or_default();
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::trim)
}

/// agentwire's identifier rule: 1 to 256 bytes, no control character.
fn valid_id(s: &str) -> bool {
    !s.is_empty() && s.len() <= MAX_ID_BYTES && !s.chars().any(char::is_control)
}

/// Answers one request.
pub(crate) async fn route(
    hub: Arc<Hub>,
    auth: Arc<Auth>,
    req: Request<Incoming>,
) -> Result<Answer, Infallible> {
    let answer = match (req.method(), req.uri().path()) {
        (&Method::GET, "/ws") => handshake(hub, &auth, req),
        (&Method::POST, "/v1/events") => publish(&hub, &auth, req).await,
        (&Method::GET, "/metrics") => metrics(&hub),
        (_, "/ws" | "/v1/events" | "/metrics") => error(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "method not allowed",
        ),
        _ => error(StatusCode::NOT_FOUND, "not_found", "no such path"),
    };
    Ok(answer)
}

#[derive(Deserialize)]
struct Claims {
    sub: String,
}

fn handshake(hub: Arc<Hub>, auth: &Auth, mut req: Request<Incoming>) -> Answer {
    let h = req.headers();
    let has = |name: header::HeaderName, token: &str| {
        h.get_all(name).iter().any(|v| {
            v.to_str()
                .is_ok_and(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
        })
    };
    if !has(header::CONNECTION, "upgrade")
        || !has(header::UPGRADE, "websocket")
        || h.get(header::SEC_WEBSOCKET_VERSION)
            .is_none_or(|v| v.as_bytes() != b"13")
    {
        return error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "not a WebSocket handshake",
        );
    }
    let Some(key) = h.get(header::SEC_WEBSOCKET_KEY) else {
        return error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "header `Sec-WebSocket-Key`: missing",
        );
    };
    let accept = derive_accept_key(key.as_bytes());
    let user = match bearer(h)
        .and_then(|t| jsonwebtoken::decode::<Claims>(t, &auth.jwt, &auth.validation).ok())
    {
        Some(t) if valid_id(&t.claims.sub) => t.claims.sub,
        _ => {
            return error(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "no valid token in `Authorization: Bearer`",
            );
        }
    };
    if hub.is_full() {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "at the connection bound",
        );
    }
    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        if let Ok(upgraded) = on_upgrade.await {
            crate::wire::serve(hub, user, upgraded).await;
        }
    });
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = r.headers_mut();
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    if let Ok(v) = HeaderValue::from_str(&accept) {
        headers.insert(header::SEC_WEBSOCKET_ACCEPT, v);
    }
    r
}

async fn publish(hub: &Hub, auth: &Auth, req: Request<Incoming>) -> Answer {
    let h = req.headers();
    if !bearer(h).is_some_and(|k| auth.api_keys.iter().any(|a| a == k)) {
        return error(StatusCode::UNAUTHORIZED, "unauthorized", "unknown API key");
    }
    let json = h
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(';')
                .next()
                .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json"))
        });
    if !json {
        return error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "Content-Type must be application/json",
        );
    }
    let body = match Limited::new(req.into_body(), auth.max_request_bytes)
        .collect()
        .await
    {
        Ok(b) => b.to_bytes(),
        Err(_) => {
            return error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                "body too large, or not read whole",
            );
        }
    };
    let events = match decode(&body) {
        Ok(e) => e,
        Err(e) => return error(StatusCode::UNPROCESSABLE_ENTITY, "invalid_event", &e),
    };
    if events.is_empty() || events.len() > auth.max_batch {
        return error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            "a batch holds 1 to max_batch events",
        );
    }
    if let Some(bad) = events.iter().find(|e| {
        !valid_id(&e.user_id)
            || !e.event_id.as_deref().is_none_or(valid_id)
            || !e.thread_id.as_deref().is_none_or(valid_id)
            || !e.run_id.as_deref().is_none_or(valid_id)
    }) {
        let message = format!("an identifier breaks the rule (user {:?})", bad.user_id);
        return error(StatusCode::UNPROCESSABLE_ENTITY, "invalid_event", &message);
    }
    let accepted = hub.publish(&events);
    answer_results(&accepted)
}

/// A body is one event object or an array of them.
fn decode(body: &[u8]) -> Result<Vec<InEvent<'_>>, String> {
    let first = body.iter().find(|b| !b.is_ascii_whitespace());
    let decoded = if first == Some(&b'[') {
        serde_json::from_slice::<Vec<InEvent<'_>>>(body)
    } else {
        serde_json::from_slice::<InEvent<'_>>(body).map(|e| vec![e])
    };
    decoded.map_err(|e| e.to_string())
}

fn answer_results(accepted: &[Accepted]) -> Answer {
    #[derive(Serialize)]
    struct Results<'a> {
        results: &'a [Accepted],
    }
    let body = serde_json::to_vec(&Results { results: accepted }).unwrap_or_default();
    let mut r = Response::new(Full::new(Bytes::from(body)));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

/// The gauges the load generator reads, under agentwire's names; the hub keeps no
/// history, so those read 0.
fn metrics(hub: &Hub) -> Answer {
    let s = &hub.stats;
    let mut text = String::new();
    let mut line = |name: &str, v: u64| {
        let _ = writeln!(text, "{name} {v}");
    };
    line(
        "agentwire_connections",
        s.connections.load(Ordering::Relaxed),
    );
    line("agentwire_users", s.users.load(Ordering::Relaxed));
    line(
        "agentwire_events_delivered_total",
        s.frames_written.load(Ordering::Relaxed),
    );
    line(
        "agentwire_queued_bytes",
        s.queued_bytes.load(Ordering::Relaxed),
    );
    line(
        "agentwire_slow_consumer_closes_total",
        s.slow_consumer_closes.load(Ordering::Relaxed),
    );
    line("agentwire_history_users", 0);
    line("agentwire_history_events", 0);
    line("agentwire_history_bytes", 0);
    let mut r = Response::new(Full::new(Bytes::from(text)));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    r
}
