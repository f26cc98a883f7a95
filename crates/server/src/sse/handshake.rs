//! The request side of `GET /v1/stream`: Origin, draining, the token (header or query),
//! the resume point (`Last-Event-ID`, else `?last_seq=&epoch=`), the manager's
//! registration, then the `200` whose body [`super::writer`] streams.

use std::sync::Arc;

use agentwire_manager::{ConnectError, ConnectOptions, Resume};
use agentwire_protocol::sse::parse_event_id;
use agentwire_protocol::{Epoch, Seq};
use axum::Extension;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::SseState;
use super::writer::stream_events;
use crate::http::door::ConnSlot;
use crate::http::{ApiError, ErrorBody, ErrorCode, resume_from_query};
use crate::ws::handshake::admit;
use crate::ws::{Format, Rejection};

/// `Last-Event-ID`, which a browser's `EventSource` sends when it reconnects.
static LAST_EVENT_ID: HeaderName = HeaderName::from_static("last-event-id");

/// The resume point of a `Last-Event-ID` header; `None` without one (or an empty one).
fn resume_from_header(headers: &HeaderMap) -> Result<Option<Resume>, ApiError> {
    let Some(value) = headers.get(&LAST_EVENT_ID) else {
        return Ok(None);
    };
    let bad = || {
        ApiError::new(
            ErrorCode::BadRequest,
            "must be `<epoch>:<seq>`, the id of an event this stream sent",
        )
        .at("Last-Event-ID")
    };
    let value = value.to_str().map_err(|_| bad())?.trim();
    if value.is_empty() {
        return Ok(None);
    }
    let (epoch, seq) = parse_event_id(value).ok_or_else(bad)?;
    let epoch = Epoch::new(epoch).map_err(|_| bad())?;
    Ok(Some(Resume::After {
        last_seq: Seq(seq),
        epoch,
    }))
}

/// The answer to a registration the manager refused.
fn connect_refusal(e: &ConnectError) -> (&'static str, ApiError) {
    match e {
        ConnectError::UserLimit { limit } => (
            "user_limit",
            ApiError::new(
                ErrorCode::TooManyConnections,
                format!(
                    "this user holds {limit} connections (--max-connections-per-user), \
                     WebSocket and event streams together"
                ),
            ),
        ),
        ConnectError::NodeFull { limit } => (
            "node_full",
            ApiError::new(
                ErrorCode::Unavailable,
                format!("this node holds {limit} connections (--max-connections); retry"),
            )
            .retry_after(1),
        ),
        _ => (
            "broker",
            ApiError::new(ErrorCode::Unavailable, "the broker is unavailable; retry")
                .retry_after(1),
        ),
    }
}

/// `GET /v1/stream`.
#[utoipa::path(get, path = "/v1/stream", tag = "connect",
    security(("jwt" = [])),
    params(
        ("token" = Option<String>, Query, description = "The client token, when no `Authorization` header carries it (a browser's `EventSource` cannot set one)"),
        ("last_seq" = Option<u64>, Query, description = "Resume after this seq (with `epoch`); `Last-Event-ID` wins when both are given"),
        ("epoch" = Option<String>, Query, description = "The epoch of the stream being resumed"),
        ("format" = Option<String>, Query, description = "`agentwire` (the default): each message's data is a frame of docs/protocol.md; `ag-ui`: each frame projected to AG-UI events, one per message, the frame's id on the last (docs/ag-ui.md)"),
        ("Last-Event-ID" = Option<String>, Header, description = "`<epoch>:<seq>`: the id of the last event received; a browser's `EventSource` sends it when it reconnects"),
    ),
    responses(
        (status = 200, description = "The user's frames as Server-Sent Events (`text/event-stream`): each frame of docs/protocol.md one `message` whose `data` is the frame's JSON and whose `id` is `<epoch>:<seq>` for events and `replay_gap`; heartbeat comments; a final `close` event (`{\"code\":…,\"reason\":…}`) when the server ends the stream"),
        (status = 400, description = "A bad resume point (`Last-Event-ID` or `?last_seq=&epoch=`) or `format`, token carriers that disagree, or a `?token=` over --jwt-max-bytes", body = ErrorBody),
        (status = 401, description = "No token, or an invalid or expired one", body = ErrorBody),
        (status = 403, description = "The Origin is not allowed (--allowed-origins)", body = ErrorBody),
        (status = 429, description = "The user holds --max-connections-per-user connections (WebSocket and event streams together) and --per-user-policy is reject; or a WebSocket of this user was closed with 1008 for its frame rate and its --client-frame-cooldown has not ended (Retry-After)", body = ErrorBody),
        (status = 431, description = "A token over --jwt-max-bytes in a header", body = ErrorBody),
        (status = 503, description = "The server is shutting down, the node holds --max-connections, the broker is unavailable, or no JWKS key set has been fetched yet", body = ErrorBody),
    ))]
pub(crate) async fn stream_handler(
    State(app): State<Arc<SseState>>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
    slot: Option<Extension<ConnSlot>>,
) -> Response {
    let refuse = |why: &'static str, error: ApiError| {
        app.metrics.rejected(why);
        error.into_response()
    };
    let shared = &app.conn;
    let (verified, query) = match admit(shared, &headers, raw.as_deref()).await {
        Ok(admitted) => admitted,
        Err((why, error)) => return refuse(why.as_str(), error),
    };
    // The browser's own reconnect sends `Last-Event-ID` on the first URL, whose
    // `?last_seq=` is older: the header wins.
    let resume = match resume_from_header(&headers) {
        Ok(Some(r)) => Some(r),
        Ok(None) => match resume_from_query(&query) {
            Ok(r) => r,
            Err((field, reason)) => {
                return refuse(
                    Rejection::BadRequest.as_str(),
                    ApiError::new(ErrorCode::BadRequest, reason).at(field),
                );
            }
        },
        Err(e) => return refuse(Rejection::BadRequest.as_str(), e),
    };
    let format = match Format::from_query(query.format.as_deref()) {
        Ok(f) => f,
        Err(e) => return refuse(Rejection::BadRequest.as_str(), e),
    };
    let options = ConnectOptions {
        resume: resume.unwrap_or_default(),
    };
    let conn = match Box::pin(shared.manager.connect_user(verified.user.clone(), options)).await {
        Ok(c) => c,
        Err(e) => {
            tracing::debug!(user = %verified.user, error = %e, "event stream refused");
            let (why, error) = connect_refusal(&e);
            return refuse(why, error);
        }
    };
    tracing::debug!(user = %verified.user, connection = %conn.id(), "event stream connected");
    app.metrics.opened();
    let slot = slot.map(|Extension(s)| s);
    if let Some(slot) = &slot {
        // From now on the connection serves this stream: no HTTP timeout, no eviction.
        slot.upgraded();
    }
    let body = stream_events(app.clone(), conn, verified.expires_at, slot, format);
    let mut response = (
        StatusCode::OK,
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/event-stream"),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
            // nginx buffers a proxied answer unless told not to.
            (
                HeaderName::from_static("x-accel-buffering"),
                HeaderValue::from_static("no"),
            ),
            // The stream is the connection's last answer: its slot is never idle again.
            (header::CONNECTION, HeaderValue::from_static("close")),
        ],
        body,
    )
        .into_response();
    // A page on another origin reads the stream only with CORS (an `EventSource` is a
    // CORS request); the token is in the URL, never a cookie.
    shared
        .ws
        .allowed_origins
        .cors(&headers, response.headers_mut());
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_event_id_is_a_resume_point() {
        let mut h = HeaderMap::new();
        assert_eq!(resume_from_header(&h), Ok(None));
        h.insert(&LAST_EVENT_ID, HeaderValue::from_static("e_1:5"));
        assert!(matches!(
            resume_from_header(&h),
            Ok(Some(Resume::After {
                last_seq: Seq(5),
                ..
            }))
        ));
        h.insert(&LAST_EVENT_ID, HeaderValue::from_static(""));
        assert_eq!(resume_from_header(&h), Ok(None));
        h.insert(&LAST_EVENT_ID, HeaderValue::from_static("5"));
        assert_eq!(
            resume_from_header(&h).map_err(|e| e.field),
            Err(Some("Last-Event-ID".to_owned()))
        );
    }
}
