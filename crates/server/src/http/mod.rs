//! What every HTTP handler shares, below all of them: the one error answer, the bearer
//! credential of a request, the flag that says the server is draining, the one body
//! reader (`body`), the rules and connector of the server's outbound calls (`client`), the front door every connection passes (`door`, `io`), the query string
//! of a connection handshake (`query`) and the timers of a long-lived connection (`timer`).

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};

use axum::http::{HeaderMap, HeaderValue, header};

pub(crate) mod body;
pub(crate) mod client;
pub(crate) mod door;
mod error;
pub(crate) mod io;
mod origins;
mod query;
pub(crate) mod timer;

pub(crate) use error::{
    ApiError, ErrorBody, ErrorCode, json_errors, method_not_allowed, not_found, raw_answer,
};

pub(crate) use origins::AllowedOrigins;
pub(crate) use query::{HandshakeQuery, parse_handshake_query, resume_from_query};

/// Why a request's `Authorization` is not one bearer credential.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BadBearer {
    /// The header is not `Bearer <credential>` (another scheme, an empty credential).
    NotBearer,
    /// The header came more than once: which one counts is not the server's guess.
    Repeated,
}

/// The credential of `Authorization: Bearer <credential>` (the scheme in any case):
/// `Ok(None)` without the header, [`BadBearer::NotBearer`] when the header has another
/// form or an empty credential, [`BadBearer::Repeated`] when it came more than once (even
/// with the same value). The one parser of the header, for API keys and client tokens
/// alike.
pub(crate) fn bearer(headers: &HeaderMap) -> Result<Option<&str>, BadBearer> {
    let mut values = headers.get_all(header::AUTHORIZATION).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(BadBearer::Repeated);
    }
    bearer_value(value).map(Some)
}

/// The credential of one `Authorization` header value, `Bearer <credential>`.
pub(crate) fn bearer_value(value: &HeaderValue) -> Result<&str, BadBearer> {
    let value = value.to_str().map_err(|_| BadBearer::NotBearer)?;
    let (scheme, credential) = value.split_once(' ').ok_or(BadBearer::NotBearer)?;
    let credential = credential.trim();
    if !scheme.eq_ignore_ascii_case("bearer") || credential.is_empty() {
        return Err(BadBearer::NotBearer);
    }
    Ok(credential)
}

/// How far a graceful shutdown has come; clones share it. It only moves forward: serving →
/// draining (`/readyz` answers 503 so that load balancers stop sending, everything else is
/// served as before, for `--drain-delay`) → closing (the listener is closed, `/ws` refuses,
/// every connection is being closed).
#[derive(Debug, Clone, Default)]
pub(crate) struct Draining(Arc<AtomicU8>);

// 0: serving.
const DRAINING: u8 = 1;
const CLOSING: u8 = 2;

impl Draining {
    /// Whether the server is shutting down (`/readyz` answers 503).
    pub(crate) fn is_set(&self) -> bool {
        self.0.load(Ordering::Acquire) >= DRAINING
    }

    /// Whether the server is closing its connections (`/ws` refuses new ones).
    pub(crate) fn is_closing(&self) -> bool {
        self.0.load(Ordering::Acquire) >= CLOSING
    }

    /// Starts the drain.
    pub(crate) fn set(&self) {
        self.0.fetch_max(DRAINING, Ordering::AcqRel);
    }

    /// Ends the drain: connections are being closed.
    pub(crate) fn set_closing(&self) {
        self.0.fetch_max(CLOSING, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    #[test]
    fn bearer_credentials_are_read_in_one_way() {
        let mut h = HeaderMap::new();
        assert_eq!(bearer(&h), Ok(None));
        for (value, expected) in [
            ("Bearer k1", Ok(Some("k1"))),
            ("bearer  k2 ", Ok(Some("k2"))),
            ("Basic k1", Err(BadBearer::NotBearer)),
            ("Bearer ", Err(BadBearer::NotBearer)),
            ("Bearer", Err(BadBearer::NotBearer)),
        ] {
            h.insert(header::AUTHORIZATION, HeaderValue::from_static(value));
            assert_eq!(bearer(&h), expected, "{value}");
        }
        // A second header, even with the same credential, is refused, not ignored.
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer k1"));
        h.append(header::AUTHORIZATION, HeaderValue::from_static("Bearer k1"));
        assert_eq!(bearer(&h), Err(BadBearer::Repeated));
    }
}
