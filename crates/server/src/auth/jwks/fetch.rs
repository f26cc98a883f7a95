//! One bounded fetch of a key set: a GET with a timeout over connection and body, a body
//! read up to a byte bound, then the keys — at most a bound of them — that this server can
//! verify with.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use agentwire_protocol::Limits;
use axum::http::{Request, StatusCode, Uri, header};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};
use serde_json::Value;

use super::JwksSettings;
use crate::auth::AuthConfigError;
use crate::http::client::error_chain;

/// Deepest JSON nesting read in a key set (`{"keys":[{"x5c":[…]}]}` is 3).
const MAX_DEPTH: usize = 8;

/// The keys of one fetched key set, by `kid` and without one.
#[derive(Debug, Default)]
pub(super) struct KeySet {
    pub(super) named: HashMap<String, (Algorithm, Arc<DecodingKey>)>,
    pub(super) unnamed: Vec<(Algorithm, Arc<DecodingKey>)>,
}

impl KeySet {
    pub(super) fn len(&self) -> usize {
        self.named.len() + self.unnamed.len()
    }
}

/// Why a fetch failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(super) enum FetchError {
    #[error("no answer within {0:?} (--jwt-jwks-timeout)")]
    Timeout(Duration),
    #[error("request failed: {0}")]
    Request(String),
    #[error("answered with status {0}, not 200")]
    Status(u16),
    #[error("the key set is larger than {0} bytes (--jwt-jwks-max-bytes)")]
    TooLarge(usize),
    #[error("the key set holds {found} keys, more than {limit} (--jwt-jwks-max-keys)")]
    TooManyKeys { found: usize, limit: usize },
    #[error("not a usable key set: {0}")]
    Invalid(String),
}

impl FetchError {
    /// The outcome label of `agentwire_jwks_refreshes_total`.
    pub(super) fn reason(&self) -> &'static str {
        match self {
            FetchError::Timeout(_) => "timeout",
            FetchError::Request(_) => "request",
            FetchError::Status(_) => "status",
            FetchError::TooLarge(_) => "too_large",
            FetchError::TooManyKeys { .. } => "too_many_keys",
            FetchError::Invalid(_) => "invalid",
        }
    }
}

/// The HTTP/1 client of one JWKS URL.
pub(super) struct Fetcher {
    client: Client<HttpsConnector<HttpConnector>, Empty<Bytes>>,
    uri: Uri,
}

impl std::fmt::Debug for Fetcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fetcher").finish_non_exhaustive()
    }
}

impl Fetcher {
    /// A client for `settings.url`: rustls on ring with the system's CA certificates for
    /// https.
    pub(super) fn new(settings: &JwksSettings) -> Result<Fetcher, AuthConfigError> {
        let uri = settings.checked_url()?;
        let connector = crate::http::client::connector(&uri, settings.timeout)
            .map_err(AuthConfigError::Jwks)?;
        Ok(Fetcher {
            client: Client::builder(TokioExecutor::new()).build(connector),
            uri,
        })
    }

    /// Fetches and reads the key set, within `settings`' bounds.
    pub(super) async fn fetch(&self, settings: &JwksSettings) -> Result<KeySet, FetchError> {
        let body = tokio::time::timeout(settings.timeout, self.body(settings.max_bytes))
            .await
            .map_err(|_| FetchError::Timeout(settings.timeout))??;
        parse_key_set(&body, settings.max_bytes, settings.max_keys)
    }

    async fn body(&self, max_bytes: usize) -> Result<Bytes, FetchError> {
        let request = Request::get(self.uri.clone())
            .header(header::ACCEPT, "application/jwk-set+json, application/json")
            .header(
                header::USER_AGENT,
                concat!("agentwire/", env!("CARGO_PKG_VERSION")),
            )
            .body(Empty::new())
            .map_err(|e| FetchError::Request(e.to_string()))?;
        let response = self
            .client
            .request(request)
            .await
            .map_err(|e| FetchError::Request(error_chain(&e)))?;
        if response.status() != StatusCode::OK {
            return Err(FetchError::Status(response.status().as_u16()));
        }
        let declared = response
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > max_bytes as u64) {
            return Err(FetchError::TooLarge(max_bytes));
        }
        let collected = Limited::new(response.into_body(), max_bytes)
            .collect()
            .await
            .map_err(|e| {
                if e.is::<http_body_util::LengthLimitError>() {
                    FetchError::TooLarge(max_bytes)
                } else {
                    FetchError::Request(error_chain(e.as_ref()))
                }
            })?;
        Ok(collected.to_bytes())
    }
}

/// The usable keys of a key set document (duplicate JSON keys refused, as everywhere).
/// Keys this server cannot verify with are skipped; a set with none it can is refused.
pub(super) fn parse_key_set(
    bytes: &[u8],
    max_bytes: usize,
    max_keys: usize,
) -> Result<KeySet, FetchError> {
    let limits = Limits {
        max_bytes,
        max_depth: MAX_DEPTH,
    };
    let value = agentwire_protocol::parse_value(bytes, limits).map_err(|e| {
        if e.is_too_large() {
            FetchError::TooLarge(max_bytes)
        } else {
            FetchError::Invalid(e.to_string())
        }
    })?;
    let keys = value
        .get("keys")
        .and_then(Value::as_array)
        .ok_or_else(|| FetchError::Invalid("no `keys` array".into()))?;
    if keys.len() > max_keys {
        return Err(FetchError::TooManyKeys {
            found: keys.len(),
            limit: max_keys,
        });
    }
    let mut set = KeySet::default();
    let mut skipped = Vec::new();
    for (i, key) in keys.iter().enumerate() {
        let jwk = match serde_json::from_value::<Jwk>(key.clone()) {
            Ok(jwk) => jwk,
            Err(_) => {
                skipped.push(format!("[{i}]: not a JWK of a known key type"));
                continue;
            }
        };
        match usable(&jwk) {
            Ok((alg, decoding)) => {
                let entry = (alg, Arc::new(decoding));
                match jwk.common.key_id {
                    Some(kid) if set.named.contains_key(&kid) => {
                        skipped.push(format!("[{i}]: a second key with `kid` {kid:?}"));
                    }
                    Some(kid) => {
                        set.named.insert(kid, entry);
                    }
                    None => set.unnamed.push(entry),
                }
            }
            Err(why) => skipped.push(format!("[{i}]: {why}")),
        }
    }
    if !skipped.is_empty() {
        tracing::debug!(skipped = %skipped.join("; "), "JWKS keys skipped");
    }
    if set.len() == 0 {
        return Err(FetchError::Invalid(format!(
            "no RS256, ES256 or EdDSA signing key ({} skipped)",
            skipped.len()
        )));
    }
    Ok(set)
}

/// The algorithm a key verifies and its decoding key, when it is a signing key of RS256,
/// ES256 (P-256) or EdDSA (Ed25519).
fn usable(jwk: &Jwk) -> Result<(Algorithm, DecodingKey), &'static str> {
    if jwk.common.public_key_use == Some(PublicKeyUse::Encryption) {
        return Err("an encryption key (`use`: `enc`)");
    }
    let declared = jwk.common.key_algorithm;
    let alg = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) if matches!(declared, None | Some(KeyAlgorithm::RS256)) => {
            Algorithm::RS256
        }
        AlgorithmParameters::EllipticCurve(p)
            if p.curve == EllipticCurve::P256
                && matches!(declared, None | Some(KeyAlgorithm::ES256)) =>
        {
            Algorithm::ES256
        }
        AlgorithmParameters::OctetKeyPair(p)
            if p.curve == EllipticCurve::Ed25519
                && matches!(declared, None | Some(KeyAlgorithm::EdDSA)) =>
        {
            Algorithm::EdDSA
        }
        AlgorithmParameters::OctetKey(_) => return Err("a symmetric key (`kty`: `oct`)"),
        _ => return Err("not an RS256, ES256 (P-256) or EdDSA (Ed25519) key"),
    };
    let key = DecodingKey::from_jwk(jwk).map_err(|_| "its key parameters are not valid")?;
    Ok((alg, key))
}

#[cfg(test)]
mod tests {
    use super::*;

    const RSA: &str =
        r#"{"kty":"RSA","kid":"r","use":"sig","alg":"RS256","n":"uOVXL8k1kFfz9Q3f","e":"AQAB"}"#;
    const ED: &str =
        r#"{"kty":"OKP","crv":"Ed25519","x":"E7h4zbvqoyPWLjeCc_3NW7-Xm7dqpxYTwZPAPxUl61o"}"#;

    fn set(keys: &[&str]) -> Vec<u8> {
        format!(r#"{{"keys":[{}]}}"#, keys.join(",")).into_bytes()
    }

    #[test]
    fn signing_keys_are_kept_and_others_skipped() {
        let oct = r#"{"kty":"oct","kid":"h","k":"c2VjcmV0"}"#;
        let enc = r#"{"kty":"RSA","kid":"e","use":"enc","n":"AQAB","e":"AQAB"}"#;
        let p384 = r#"{"kty":"EC","kid":"p","crv":"P-384","x":"AA","y":"AA"}"#;
        let unknown = r#"{"kty":"XYZ","kid":"u"}"#;
        let rs512 = r#"{"kty":"RSA","kid":"r5","alg":"RS512","n":"AQAB","e":"AQAB"}"#;
        let keys = parse_key_set(&set(&[RSA, ED, oct, enc, p384, unknown, rs512]), 65_536, 32)
            .expect("a set");
        assert_eq!(keys.named.len(), 1);
        assert_eq!(keys.named["r"].0, Algorithm::RS256);
        assert_eq!(keys.unnamed.len(), 1);
        assert_eq!(keys.unnamed[0].0, Algorithm::EdDSA);
    }

    #[test]
    fn bounds_and_bad_documents_are_refused() {
        assert_eq!(
            parse_key_set(&set(&[ED, ED, ED]), 65_536, 2).map(|s| s.len()),
            Err(FetchError::TooManyKeys { found: 3, limit: 2 })
        );
        assert_eq!(
            parse_key_set(&set(&[RSA]), 50, 32).map(|s| s.len()),
            Err(FetchError::TooLarge(50))
        );
        for (doc, what) in [
            (&b"not json"[..], "not JSON"),
            (br#"{"keys":{}}"#, "keys not an array"),
            (br#"{"keys":[]}"#, "no key"),
            (
                br#"{"keys":[{"kty":"oct","k":"AA"}]}"#,
                "only a symmetric key",
            ),
            (br#"{"keys":[],"keys":[]}"#, "a duplicate JSON key"),
        ] {
            let got = parse_key_set(doc, 65_536, 32).map(|s| s.len());
            assert!(
                matches!(got, Err(FetchError::Invalid(_))),
                "{what}: {got:?}"
            );
        }
        let second = RSA.replace(r#""alg":"RS256""#, r#""alg":"RS256","x5t":"y""#);
        let keys = parse_key_set(&set(&[RSA, &second]), 65_536, 32).expect("a set");
        assert_eq!(keys.len(), 1, "a repeated kid keeps the first key");
    }
}
