//! `POST /demo/token`: development tokens, minted only in development mode and only for a
//! request from this machine — a peer on the loopback interface whose `Host` (and
//! `Origin`, when sent) names a loopback host. The `Host` check is the defence against DNS
//! rebinding: a page on another site that points its own name at 127.0.0.1 reaches the
//! port from the developer's browser, but sends its own name as `Host`.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use agentwire_protocol::UserId;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde_json::{Value, json};

use super::{DEMO_TOKEN_TTL, DemoState, bad_request, body_object};
use crate::http::{ApiError, ErrorCode};

/// `POST /demo/token` `{"user_id": "alice"}`: a development token for that user.
pub(super) async fn mint_token(
    State(app): State<Arc<DemoState>>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    if !app.mint {
        return Err(ApiError::new(
            ErrorCode::Forbidden,
            "development tokens are minted only in development mode (agentwire-server \
             --dev); sign in with a token of your own",
        ));
    }
    from_this_machine(peer.map(|Extension(ConnectInfo(addr))| addr), &headers)?;
    let body = body_object(&body)?;
    let id = body
        .get("user_id")
        .and_then(Value::as_str)
        .ok_or_else(|| bad_request("a string is required").at("user_id"))?;
    let user = UserId::new(id).map_err(|e| bad_request(format!("a user id {e}")).at("user_id"))?;
    let token = app
        .auth
        .mint(&user, DEMO_TOKEN_TTL)
        .map_err(|e| ApiError::new(ErrorCode::Internal, e.to_string()))?;
    let expires_at = jsonwebtoken::get_current_timestamp() + DEMO_TOKEN_TTL.as_secs();
    Ok(Json(json!({ "token": token, "user_id": user, "expires_at": expires_at })).into_response())
}

/// Whether the request comes from this machine: a loopback peer (unknown peers are
/// refused), a loopback `Host`, and a loopback `Origin` when one is sent.
fn from_this_machine(peer: Option<SocketAddr>, headers: &HeaderMap) -> Result<(), ApiError> {
    let refuse = |what: &str| {
        Err(ApiError::new(
            ErrorCode::Forbidden,
            format!("development tokens are minted only for requests from this machine: {what}"),
        ))
    };
    if !peer.is_some_and(|p| p.ip().is_loopback()) {
        return refuse("the peer is not on the loopback interface");
    }
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    if !host.is_some_and(is_loopback_authority) {
        return refuse("`Host` must be localhost or a loopback address");
    }
    if let Some(origin) = headers.get(header::ORIGIN) {
        let authority = origin
            .to_str()
            .ok()
            .and_then(|o| o.split_once("://"))
            .map(|(_, rest)| rest.split('/').next().unwrap_or(rest));
        if !authority.is_some_and(is_loopback_authority) {
            return refuse("`Origin` must be localhost or a loopback address");
        }
    }
    Ok(())
}

/// Whether `authority` (`host[:port]`) names this machine: `localhost`, or a loopback IP
/// address (`127.0.0.1`, `[::1]`).
fn is_loopback_authority(authority: &str) -> bool {
    let host = match authority.strip_prefix('[') {
        Some(rest) => rest.split_once(']').map_or("", |(host, _port)| host),
        None => authority
            .rsplit_once(':')
            .map_or(authority, |(host, _port)| host),
    };
    host.eq_ignore_ascii_case("localhost")
        || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    fn headers(pairs: &[(header::HeaderName, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (name, value) in pairs {
            h.insert(name.clone(), HeaderValue::from_static(value));
        }
        h
    }

    #[test]
    fn loopback_authorities_are_recognised() {
        for yes in [
            "localhost",
            "LOCALHOST:8080",
            "127.0.0.1",
            "127.0.0.1:80",
            "127.9.9.9:1",
            "[::1]:8080",
            "[::1]",
        ] {
            assert!(is_loopback_authority(yes), "{yes}");
        }
        for no in [
            "evil.example",
            "evil.example:8080",
            "localhost.evil.example",
            "10.0.0.1:80",
            "[::2]:80",
            "0.0.0.0:8080",
            "",
            "[::1",
        ] {
            assert!(!is_loopback_authority(no), "{no}");
        }
    }

    /// Issue 14: development tokens only for this machine, and not through DNS rebinding.
    #[test]
    fn only_a_loopback_peer_with_a_loopback_host_and_origin_gets_a_token() {
        let local: SocketAddr = "127.0.0.1:50000".parse().expect("addr");
        let remote: SocketAddr = "192.0.2.7:50000".parse().expect("addr");
        let ok = headers(&[
            (header::HOST, "127.0.0.1:8080"),
            (header::ORIGIN, "http://localhost:8080"),
        ]);
        assert_eq!(from_this_machine(Some(local), &ok), Ok(()));
        assert_eq!(
            from_this_machine(Some(local), &headers(&[(header::HOST, "localhost:8080")])),
            Ok(())
        );
        let code = |r: Result<(), ApiError>| r.map_err(|e| e.code);
        assert_eq!(
            code(from_this_machine(Some(remote), &ok)),
            Err(ErrorCode::Forbidden)
        );
        assert_eq!(
            code(from_this_machine(None, &ok)),
            Err(ErrorCode::Forbidden)
        );
        assert_eq!(
            code(from_this_machine(Some(local), &HeaderMap::new())),
            Err(ErrorCode::Forbidden)
        );
        let rebound = headers(&[(header::HOST, "attacker.example:8080")]);
        assert_eq!(
            code(from_this_machine(Some(local), &rebound)),
            Err(ErrorCode::Forbidden)
        );
        let foreign_origin = headers(&[
            (header::HOST, "127.0.0.1:8080"),
            (header::ORIGIN, "https://attacker.example"),
        ]);
        assert_eq!(
            code(from_this_machine(Some(local), &foreign_origin)),
            Err(ErrorCode::Forbidden)
        );
        let null_origin = headers(&[(header::HOST, "127.0.0.1:8080"), (header::ORIGIN, "null")]);
        assert_eq!(
            code(from_this_machine(Some(local), &null_origin)),
            Err(ErrorCode::Forbidden)
        );
    }
}
