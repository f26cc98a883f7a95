//! The HTTP side of `GET /ws`: Origin, draining, the token (header, subprotocol or query),
//! the resume point, then the upgrade that hands the socket to [`super::session`].

use std::net::SocketAddr;
use std::sync::Arc;

use agentwire_manager::Resume;
use agentwire_protocol::{Epoch, SUBPROTOCOL, Seq};
use axum::Extension;
use axum::extract::{ConnectInfo, RawQuery, State};
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use super::WsState;
use super::metrics::Rejection;
use super::session::serve_socket;
use super::wire::{UpgradeRejection, WsUpgrade};
use crate::auth::authenticate_handshake;
use crate::http::{ApiError, ErrorBody, ErrorCode};

/// The query string of `/ws`: `token` (every one given: two that differ are refused),
/// `last_seq`, `epoch`. Other parameters are ignored.
#[derive(Default)]
struct WsQuery {
    tokens: Vec<String>,
    last_seq: Option<String>,
    epoch: Option<String>,
}

fn parse_query(raw: Option<&str>) -> WsQuery {
    let mut q = WsQuery::default();
    // `application/x-www-form-urlencoded`: `+` is a space, `%XX` a byte; a malformed escape
    // is kept as it is written, and bytes that are not UTF-8 become U+FFFD.
    for (k, v) in form_urlencoded::parse(raw.unwrap_or("").as_bytes()) {
        let slot = match k.as_ref() {
            "token" => {
                q.tokens.push(v.into_owned());
                continue;
            }
            "last_seq" => &mut q.last_seq,
            "epoch" => &mut q.epoch,
            _ => continue,
        };
        *slot = Some(v.into_owned());
    }
    q
}

fn resume_from_query(q: &WsQuery) -> Result<Option<Resume>, (&'static str, String)> {
    match (&q.last_seq, &q.epoch) {
        (None, None) => Ok(None),
        (Some(_), None) => Err(("epoch", "is required with `last_seq`".into())),
        (None, Some(_)) => Err(("last_seq", "is required with `epoch`".into())),
        (Some(seq), Some(epoch)) => {
            let last_seq = seq
                .parse::<u64>()
                .map_err(|_| ("last_seq", "must be a non-negative integer".to_owned()))?;
            let epoch = Epoch::new(epoch).map_err(|e| ("epoch", format!("an epoch {e}")))?;
            Ok(Some(Resume::After {
                last_seq: Seq(last_seq),
                epoch,
            }))
        }
    }
}

/// `GET /ws`.
#[utoipa::path(get, path = "/ws", tag = "connect",
    security(("jwt" = [])),
    params(
        ("token" = Option<String>, Query, description = "The client token, when no header or subprotocol carries it"),
        ("last_seq" = Option<u64>, Query, description = "Resume after this seq (with `epoch`)"),
        ("epoch" = Option<String>, Query, description = "The epoch of the stream being resumed"),
    ),
    responses(
        (status = 101, description = "Upgraded to WebSocket (subprotocol agentwire.v1); frames as in docs/protocol.md"),
        (status = 400, description = "Not a WebSocket handshake, a bad resume point, token carriers that disagree, or a `?token=` over --jwt-max-bytes", body = ErrorBody),
        (status = 401, description = "No token, or an invalid or expired one", body = ErrorBody),
        (status = 403, description = "The Origin is not allowed (--allowed-origins)", body = ErrorBody),
        (status = 431, description = "A token over --jwt-max-bytes in a header", body = ErrorBody),
        (status = 503, description = "The server is shutting down, or no JWKS key set has been fetched yet", body = ErrorBody),
    ))]
pub(crate) async fn ws_handler(
    State(app): State<Arc<WsState>>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
    upgrade: Result<WsUpgrade, UpgradeRejection>,
) -> Response {
    let peer = peer.map(|Extension(ConnectInfo(addr))| addr);
    // Logged with the reason and the peer, never the token (nor the query string that may
    // carry it).
    let refuse = |why: Rejection, error: ApiError| {
        app.metrics.rejected(why);
        tracing::info!(
            peer = peer.map(tracing::field::display),
            reason = why.as_str(),
            "ws handshake refused"
        );
        error.into_response()
    };
    if let Some(origin) = headers.get(header::ORIGIN)
        && !app.ws.allowed_origins.allows(origin)
    {
        return refuse(
            Rejection::ForbiddenOrigin,
            ApiError::new(
                ErrorCode::Forbidden,
                "origin not allowed (--allowed-origins)",
            ),
        );
    }
    if app.is_shutting_down() {
        return refuse(
            Rejection::ShuttingDown,
            ApiError::new(
                ErrorCode::ShuttingDown,
                "the server is shutting down; connect again",
            )
            .retry_after(1),
        );
    }
    let query = parse_query(raw.as_deref());
    let verified = match authenticate_handshake(&app.auth, &headers, &query.tokens).await {
        Ok(v) => v,
        Err(refusal) => {
            tracing::debug!(reason = %refusal.error, "ws handshake unauthorized");
            return refuse(Rejection::Token(refusal.reason()), refusal.to_api_error());
        }
    };
    let resume = match resume_from_query(&query) {
        Ok(r) => r,
        Err((field, reason)) => {
            return refuse(
                Rejection::BadRequest,
                ApiError::new(ErrorCode::BadRequest, reason).at(field),
            );
        }
    };
    let upgrade = match upgrade {
        Ok(u) => u,
        Err(rejection) => {
            // Its own answer: a bad version carries the version the server speaks.
            app.metrics.rejected(Rejection::BadRequest);
            tracing::info!(
                peer = peer.map(tracing::field::display),
                reason = Rejection::BadRequest.as_str(),
                "ws handshake refused"
            );
            return rejection.into_response();
        }
    };
    let s = &app.ws;
    // Reading only: the server writes its frames itself (crate::wire).
    let config = WebSocketConfig::default()
        .read_buffer_size(s.read_buffer_size)
        .max_message_size(Some(s.max_message_size))
        .max_frame_size(Some(s.max_frame_size));
    upgrade.accept(SUBPROTOCOL, config, move |stream, sink| {
        serve_socket(app, stream, sink, verified, resume)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_pairs_are_decoded() {
        let q = parse_query(Some("token=a%2Eb.c&last_seq=5&epoch=e_1&x=y+z&token=d"));
        assert_eq!(q.tokens, ["a.b.c", "d"]);
        assert_eq!(q.last_seq.as_deref(), Some("5"));
        assert_eq!(q.epoch.as_deref(), Some("e_1"));
        let token = |raw| parse_query(Some(raw)).tokens.pop();
        assert_eq!(token("token=%zz%4").as_deref(), Some("%zz%4"));
        assert_eq!(token("token=a%20b+c").as_deref(), Some("a b c"));
        assert_eq!(token("token=a%2").as_deref(), Some("a%2"));
        assert_eq!(
            token("token=%41%42").as_deref(),
            Some("AB"),
            "an escape at the very end"
        );
    }

    #[test]
    fn resume_needs_both_fields_and_a_number() {
        let q = |s| parse_query(Some(s));
        assert_eq!(resume_from_query(&q("")), Ok(None));
        assert!(matches!(
            resume_from_query(&q("last_seq=4&epoch=e_1")),
            Ok(Some(Resume::After {
                last_seq: Seq(4),
                ..
            }))
        ));
        assert_eq!(
            resume_from_query(&q("last_seq=4")).map_err(|e| e.0),
            Err("epoch")
        );
        assert_eq!(
            resume_from_query(&q("epoch=e")).map_err(|e| e.0),
            Err("last_seq")
        );
        assert_eq!(
            resume_from_query(&q("last_seq=-1&epoch=e")).map_err(|e| e.0),
            Err("last_seq")
        );
    }
}
