//! What every HTTP handler shares, below all of them: the one error answer, the bearer
//! credential of a request, and the flag that says the server is draining.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::http::{HeaderMap, HeaderValue, header};

mod error;

pub(crate) use error::{ApiError, ErrorBody, ErrorCode, method_not_allowed, not_found};

/// An `Authorization` header that is not `Bearer <credential>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct NotBearer;

/// The credential of `Authorization: Bearer <credential>` (the scheme in any case):
/// `Ok(None)` without the header, [`NotBearer`] when the header has another form or an
/// empty credential. The one parser of the header, for API keys and client tokens alike.
pub(crate) fn bearer(headers: &HeaderMap) -> Result<Option<&str>, NotBearer> {
    headers
        .get(header::AUTHORIZATION)
        .map(bearer_value)
        .transpose()
}

/// The credential of one `Authorization` header value, `Bearer <credential>`.
pub(crate) fn bearer_value(value: &HeaderValue) -> Result<&str, NotBearer> {
    let value = value.to_str().map_err(|_| NotBearer)?;
    let (scheme, credential) = value.split_once(' ').ok_or(NotBearer)?;
    let credential = credential.trim();
    if !scheme.eq_ignore_ascii_case("bearer") || credential.is_empty() {
        return Err(NotBearer);
    }
    Ok(credential)
}

/// Whether the server is shutting down: set once by the drain, read by `/readyz` and the
/// `/ws` handshake. Clones share the flag.
#[derive(Debug, Clone, Default)]
pub(crate) struct Draining(Arc<AtomicBool>);

impl Draining {
    pub(crate) fn is_set(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }

    pub(crate) fn set(&self) {
        self.0.store(true, Ordering::Release);
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
            ("Basic k1", Err(NotBearer)),
            ("Bearer ", Err(NotBearer)),
            ("Bearer", Err(NotBearer)),
        ] {
            h.insert(header::AUTHORIZATION, HeaderValue::from_static(value));
            assert_eq!(bearer(&h), expected, "{value}");
        }
    }
}
