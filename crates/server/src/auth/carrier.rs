//! The token of a `/ws` handshake: which carrier brought it (`Authorization: Bearer`, the
//! `agentwire.auth.<jwt>` subprotocol, `?token=`), the refusal of carriers that disagree,
//! and the HTTP answer to each refusal.
//!
//! Every carrier is read, every time: a request whose carriers hold different tokens is
//! refused (400) rather than resolved by an order of precedence a client cannot see.

use agentwire_protocol::AUTH_SUBPROTOCOL_PREFIX;
use axum::http::{HeaderMap, header};

use super::{Auth, AuthError, Verified};
use crate::http::{ApiError, ErrorCode, bearer_value};

/// Where a handshake's token came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Carrier {
    /// `Authorization: Bearer <jwt>`.
    Authorization,
    /// `Sec-WebSocket-Protocol: agentwire.v1, agentwire.auth.<jwt>`.
    Subprotocol,
    /// `?token=<jwt>`.
    Query,
}

impl Carrier {
    /// How messages name it.
    fn describe(self) -> &'static str {
        match self {
            Carrier::Authorization => "the `Authorization` header",
            Carrier::Subprotocol => "the `Sec-WebSocket-Protocol` header",
            Carrier::Query => "`?token=`",
        }
    }

    /// The `field` of the error body.
    fn field(self) -> &'static str {
        match self {
            Carrier::Authorization => "Authorization",
            Carrier::Subprotocol => "Sec-WebSocket-Protocol",
            Carrier::Query => "token",
        }
    }
}

/// A refused handshake token: why, and which carrier brought it (none when no token came,
/// or the carriers disagree).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Refusal {
    pub(crate) error: AuthError,
    pub(crate) carrier: Option<Carrier>,
}

impl Refusal {
    /// The name of the refusal in `agentwire_handshake_rejections_total{reason}`.
    pub(crate) fn reason(&self) -> &'static str {
        self.error.reason()
    }

    /// The answer: 401 `unauthorized` for a missing or invalid token; 400 `bad_request`
    /// for carriers that disagree and for a token over `--jwt-max-bytes` in the query
    /// string; 431 `headers_too_large` for one over it in a header; 503 `unavailable` while
    /// no JWKS key set has been fetched. `field` names the carrier.
    pub(crate) fn to_api_error(&self) -> ApiError {
        let in_header = matches!(
            self.carrier,
            Some(Carrier::Authorization | Carrier::Subprotocol)
        );
        let code = match &self.error {
            AuthError::TooLarge { .. } if in_header => ErrorCode::HeadersTooLarge,
            AuthError::TooLarge { .. } | AuthError::CarriersDisagree { .. } => {
                ErrorCode::BadRequest
            }
            AuthError::KeysUnavailable => ErrorCode::Unavailable,
            _ => ErrorCode::Unauthorized,
        };
        let mut error = ApiError::new(code, self.error.to_string());
        if let Some(carrier) = self.carrier {
            error = error.at(carrier.field());
        }
        if code == ErrorCode::Unavailable {
            error = error.retry_after(1);
        }
        error
    }
}

/// The one token of a handshake and its carrier. `query_tokens` are the values of every
/// `token` parameter of the query string.
///
/// # Errors
/// [`AuthError::Missing`] when no carrier holds a token; [`AuthError::Malformed`] for an
/// `Authorization` header that is not `Bearer <jwt>` or an empty token;
/// [`AuthError::CarriersDisagree`] when two carriers (or two instances of one) hold
/// different tokens.
pub(crate) fn handshake_token<'a>(
    headers: &'a HeaderMap,
    query_tokens: &'a [String],
) -> Result<(&'a str, Carrier), Refusal> {
    let refuse = |error, carrier| Refusal { error, carrier };
    let mut found: Option<(&str, Carrier)> = None;
    let mut offer = |token: &'a str, carrier: Carrier| -> Result<(), Refusal> {
        if token.is_empty() {
            return Err(refuse(AuthError::Malformed("empty token"), Some(carrier)));
        }
        match found {
            None => found = Some((token, carrier)),
            Some((first, _)) if first == token => {}
            Some((_, first)) => {
                return Err(refuse(
                    AuthError::CarriersDisagree {
                        first: first.describe(),
                        second: carrier.describe(),
                    },
                    None,
                ));
            }
        }
        Ok(())
    };
    for value in headers.get_all(header::AUTHORIZATION) {
        let token = bearer_value(value).map_err(|_| {
            refuse(
                AuthError::Malformed("`Authorization` must be `Bearer <jwt>`"),
                Some(Carrier::Authorization),
            )
        })?;
        offer(token, Carrier::Authorization)?;
    }
    for value in headers.get_all(header::SEC_WEBSOCKET_PROTOCOL) {
        // A header that is not text offers no protocol this server knows; the upgrade
        // itself answers for it.
        let Ok(value) = value.to_str() else { continue };
        for protocol in value.split(',').map(str::trim) {
            if let Some(token) = protocol.strip_prefix(AUTH_SUBPROTOCOL_PREFIX) {
                offer(token, Carrier::Subprotocol)?;
            }
        }
    }
    for token in query_tokens {
        offer(token, Carrier::Query)?;
    }
    found.ok_or_else(|| refuse(AuthError::Missing, None))
}

/// Authenticates a `/ws` handshake: finds its one token ([`handshake_token`]) and verifies
/// it, fetching the JWKS key set first when the token names a key not in it
/// ([`Auth::authenticate`]).
///
/// # Errors
/// A [`Refusal`]; [`Refusal::to_api_error`] is the answer.
pub(crate) async fn authenticate_handshake(
    auth: &Auth,
    headers: &HeaderMap,
    query_tokens: &[String],
) -> Result<Verified, Refusal> {
    let (token, carrier) = handshake_token(headers, query_tokens)?;
    auth.authenticate(token).await.map_err(|error| Refusal {
        error,
        carrier: Some(carrier),
    })
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    fn headers(pairs: &[(header::HeaderName, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (name, value) in pairs {
            h.append(name.clone(), HeaderValue::from_static(value));
        }
        h
    }

    fn token_of(h: &HeaderMap, q: &[&str]) -> Result<(String, Carrier), AuthError> {
        let q: Vec<String> = q.iter().map(|s| (*s).to_owned()).collect();
        handshake_token(h, &q)
            .map(|(t, c)| (t.to_owned(), c))
            .map_err(|r| r.error)
    }

    #[test]
    fn tokens_come_from_header_subprotocol_or_query() {
        let none = HeaderMap::new();
        assert_eq!(token_of(&none, &["q"]), Ok(("q".into(), Carrier::Query)));
        let sub = headers(&[(
            header::SEC_WEBSOCKET_PROTOCOL,
            "agentwire.v1, agentwire.auth.s",
        )]);
        assert_eq!(token_of(&sub, &[]), Ok(("s".into(), Carrier::Subprotocol)));
        let auth = headers(&[(header::AUTHORIZATION, "Bearer b")]);
        assert_eq!(
            token_of(&auth, &[]),
            Ok(("b".into(), Carrier::Authorization))
        );
        assert_eq!(token_of(&none, &[]), Err(AuthError::Missing));
        let basic = headers(&[(header::AUTHORIZATION, "Basic b")]);
        assert!(matches!(
            token_of(&basic, &[]),
            Err(AuthError::Malformed(_))
        ));
        assert!(matches!(
            token_of(&none, &[""]),
            Err(AuthError::Malformed(_))
        ));
        let empty_sub = headers(&[(
            header::SEC_WEBSOCKET_PROTOCOL,
            "agentwire.v1, agentwire.auth.",
        )]);
        assert!(matches!(
            token_of(&empty_sub, &[]),
            Err(AuthError::Malformed(_))
        ));
    }

    /// Issue 14: carriers that disagree are refused; the same token in two is one token.
    #[test]
    fn carriers_that_disagree_are_refused() {
        let both = headers(&[
            (header::AUTHORIZATION, "Bearer a"),
            (
                header::SEC_WEBSOCKET_PROTOCOL,
                "agentwire.v1, agentwire.auth.b",
            ),
        ]);
        assert_eq!(
            token_of(&both, &[]),
            Err(AuthError::CarriersDisagree {
                first: "the `Authorization` header",
                second: "the `Sec-WebSocket-Protocol` header"
            })
        );
        let same = headers(&[
            (header::AUTHORIZATION, "Bearer a"),
            (
                header::SEC_WEBSOCKET_PROTOCOL,
                "agentwire.v1, agentwire.auth.a",
            ),
        ]);
        assert_eq!(
            token_of(&same, &["a"]),
            Ok(("a".into(), Carrier::Authorization))
        );
        let header_and_query = headers(&[(header::AUTHORIZATION, "Bearer a")]);
        assert!(matches!(
            token_of(&header_and_query, &["b"]),
            Err(AuthError::CarriersDisagree {
                second: "`?token=`",
                ..
            })
        ));
        assert!(matches!(
            token_of(&HeaderMap::new(), &["a", "b"]),
            Err(AuthError::CarriersDisagree { .. })
        ));
        let two_headers = headers(&[
            (header::AUTHORIZATION, "Bearer a"),
            (header::AUTHORIZATION, "Bearer b"),
        ]);
        assert!(matches!(
            token_of(&two_headers, &[]),
            Err(AuthError::CarriersDisagree { .. })
        ));
        let two_protocols = headers(&[(
            header::SEC_WEBSOCKET_PROTOCOL,
            "agentwire.auth.a, agentwire.v1, agentwire.auth.b",
        )]);
        assert!(matches!(
            token_of(&two_protocols, &[]),
            Err(AuthError::CarriersDisagree { .. })
        ));
    }

    #[test]
    fn each_refusal_has_its_status_and_names_its_carrier() {
        let too_large = |carrier| Refusal {
            error: AuthError::TooLarge {
                bytes: 9000,
                limit: 8192,
            },
            carrier: Some(carrier),
        };
        let header = too_large(Carrier::Authorization).to_api_error();
        assert_eq!(header.code, ErrorCode::HeadersTooLarge);
        assert_eq!(header.field.as_deref(), Some("Authorization"));
        assert_eq!(
            too_large(Carrier::Subprotocol).to_api_error().code,
            ErrorCode::HeadersTooLarge
        );
        let query = too_large(Carrier::Query).to_api_error();
        assert_eq!(query.code, ErrorCode::BadRequest);
        assert_eq!(query.field.as_deref(), Some("token"));
        let disagree = Refusal {
            error: AuthError::CarriersDisagree {
                first: "a",
                second: "b",
            },
            carrier: None,
        }
        .to_api_error();
        assert_eq!(
            (disagree.code, disagree.field),
            (ErrorCode::BadRequest, None)
        );
        let unavailable = Refusal {
            error: AuthError::KeysUnavailable,
            carrier: Some(Carrier::Query),
        }
        .to_api_error();
        assert_eq!(unavailable.code, ErrorCode::Unavailable);
        assert_eq!(unavailable.retry_after, Some(1));
        let expired = Refusal {
            error: AuthError::Expired,
            carrier: Some(Carrier::Subprotocol),
        };
        assert_eq!(expired.to_api_error().code, ErrorCode::Unauthorized);
        assert_eq!(expired.reason(), "token_expired");
    }
}
