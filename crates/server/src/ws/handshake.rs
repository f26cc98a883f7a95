//! The HTTP side of `GET /ws`: Origin, draining, the token (header, subprotocol or query),
//! the resume point, then the upgrade that hands the socket to [`super::session`].

use std::net::SocketAddr;
use std::sync::Arc;

use agentwire_protocol::{AGUI_SUBPROTOCOL, SUBPROTOCOL};
use axum::Extension;
use axum::extract::{ConnectInfo, RawQuery, State};
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use super::WsState;
use super::cooldown::retry_after_secs;
use super::format::Format;
use super::metrics::Rejection;
use super::session::serve_socket;
use super::wire::{UpgradeRejection, WsUpgrade};
use crate::auth::{Verified, authenticate_handshake};
use crate::http::{
    ApiError, ErrorBody, ErrorCode, HandshakeQuery, parse_handshake_query, resume_from_query,
};

/// What `/ws` and `/v1/stream` check first, in this order: the Origin, draining, the
/// token, the user's cool-down after a frame flood. The verified token and the decoded query, or why the request is refused and the
/// answer.
pub(crate) async fn admit(
    app: &WsState,
    headers: &HeaderMap,
    raw_query: Option<&str>,
) -> Result<(Verified, HandshakeQuery), (Rejection, ApiError)> {
    if let Some(origin) = headers.get(header::ORIGIN)
        && !app.ws.allowed_origins.allows(origin)
    {
        return Err((
            Rejection::ForbiddenOrigin,
            ApiError::new(
                ErrorCode::Forbidden,
                "origin not allowed (--allowed-origins)",
            ),
        ));
    }
    if app.is_shutting_down() {
        return Err((
            Rejection::ShuttingDown,
            ApiError::new(
                ErrorCode::ShuttingDown,
                "the server is shutting down; connect again",
            )
            .retry_after(1),
        ));
    }
    let query = parse_handshake_query(raw_query);
    let verified = match authenticate_handshake(&app.auth, headers, &query.tokens).await {
        Ok(verified) => verified,
        Err(refusal) => {
            tracing::debug!(reason = %refusal.error, "handshake unauthorized");
            return Err((Rejection::Token(refusal.reason()), refusal.to_api_error()));
        }
    };
    // Before the upgrade, the manager and any replay: a flooder coming straight back costs
    // this look-up.
    if let Some(left) = app.cooldowns.remaining(&verified.user) {
        return Err((
            Rejection::CoolingDown,
            ApiError::new(
                ErrorCode::RateLimited,
                "this user's connection was closed for sending frames faster than \
                 --client-frame-rate; it is refused until its cool-down ends \
                 (--client-frame-cooldown, see Retry-After)",
            )
            .retry_after(retry_after_secs(left)),
        ));
    }
    Ok((verified, query))
}

/// `GET /ws`.
#[utoipa::path(get, path = "/ws", tag = "connect",
    security(("jwt" = [])),
    params(
        ("token" = Option<String>, Query, description = "The client token, when no header or subprotocol carries it"),
        ("last_seq" = Option<u64>, Query, description = "Resume after this seq (with `epoch`)"),
        ("epoch" = Option<String>, Query, description = "The epoch of the stream being resumed"),
        ("format" = Option<String>, Query, description = "`agentwire` (the default): the frames of docs/protocol.md; `ag-ui`: each frame projected to AG-UI events, one per text frame (docs/ag-ui.md)"),
    ),
    responses(
        (status = 101, description = "Upgraded to WebSocket (subprotocol agentwire.v1); frames as in docs/protocol.md. A client offering the subprotocol agentwire.ag-ui.v1 gets it, and AG-UI events (docs/ag-ui.md)"),
        (status = 400, description = "Not a WebSocket handshake, a bad resume point or `format`, token carriers that disagree, or a `?token=` over --jwt-max-bytes", body = ErrorBody),
        (status = 401, description = "No token, or an invalid or expired one", body = ErrorBody),
        (status = 403, description = "The Origin is not allowed (--allowed-origins)", body = ErrorBody),
        (status = 429, description = "`rate_limited`: a connection of this user was closed with 1008 for sending frames faster than --client-frame-rate, and its cool-down (--client-frame-cooldown) has not ended; Retry-After says when it does", body = ErrorBody),
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
        let peer = peer.map(tracing::field::display);
        if why == Rejection::CoolingDown {
            // A flooder retrying in a loop: its cool-down was logged once when it began.
            tracing::debug!(peer, reason = why.as_str(), "ws handshake refused");
        } else {
            tracing::info!(peer, reason = why.as_str(), "ws handshake refused");
        }
        error.into_response()
    };
    let (verified, query) = match admit(&app, &headers, raw.as_deref()).await {
        Ok(admitted) => admitted,
        Err((why, error)) => return refuse(why, error),
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
    let format = match Format::from_query(query.format.as_deref()) {
        Ok(f) => f,
        Err(e) => return refuse(Rejection::BadRequest, e),
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
    // The AG-UI subprotocol asks for AG-UI as `?format=ag-ui` does, and is answered.
    let (format, protocol) = if upgrade.offers(AGUI_SUBPROTOCOL) {
        (Format::AgUi, AGUI_SUBPROTOCOL)
    } else {
        (format, SUBPROTOCOL)
    };
    upgrade.accept(protocol, config, move |stream, sink| {
        serve_socket(app, stream, sink, verified, resume, format)
    })
}
