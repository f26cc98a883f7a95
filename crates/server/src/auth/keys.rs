//! API keys: full-access (`--api-keys`) and publish-only (`--publish-api-keys`), compared
//! in constant time, each with an identity for per-key rate limits and a fingerprint for
//! the broker's per-publisher run-state share.

use agentwire_manager::PublisherId;
use axum::http::HeaderMap;
use sha2::{Digest, Sha256};
use subtle::{ConditionallySelectable, ConstantTimeEq};

use super::{Auth, AuthConfigError};
use crate::http::{ApiError, BadBearer, ErrorCode, bearer};

/// What an API key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KeyScope {
    /// Everything: publish, read history, the admin endpoints (`--api-keys`).
    Full,
    /// Only `POST /v1/events` (`--publish-api-keys`).
    Publish,
}

/// A known API key: its scope, and which key it is (an index, so the key itself need not
/// be kept anywhere else, e.g. to rate-limit per key).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ApiKey {
    pub(crate) scope: KeyScope,
    pub(crate) id: usize,
}
/// Shortest API key accepted outside development mode, in characters: 16 random
/// characters from a 64-letter alphabet are 96 bits, beyond guessing online.
pub const MIN_API_KEY_CHARS: usize = 16;

impl Auth {
    /// Accepts `full` as full-access API keys and `publish` as publish-only ones (empty
    /// strings are skipped), each at least [`MIN_API_KEY_CHARS`] long.
    ///
    /// # Errors
    /// [`AuthConfigError::ShortApiKey`] naming the list and the position of the first key
    /// that is too short (never the key).
    pub fn with_api_keys(
        self,
        full: &[String],
        publish: &[String],
    ) -> Result<Auth, AuthConfigError> {
        for (setting, keys) in [
            ("AGENTWIRE_API_KEYS (--api-keys)", full),
            ("AGENTWIRE_PUBLISH_API_KEYS (--publish-api-keys)", publish),
        ] {
            let nonempty = keys.iter().filter(|k| !k.is_empty());
            if let Some((i, key)) = nonempty
                .enumerate()
                .find(|(_, k)| k.chars().count() < MIN_API_KEY_CHARS)
            {
                return Err(AuthConfigError::ShortApiKey {
                    setting,
                    position: i + 1,
                    chars: key.chars().count(),
                    min: MIN_API_KEY_CHARS,
                });
            }
        }
        Ok(self.with_api_keys_unchecked(full, publish))
    }

    /// As [`Auth::with_api_keys`] with keys of any length: development mode only.
    pub(crate) fn with_api_keys_unchecked(mut self, full: &[String], publish: &[String]) -> Auth {
        let keep = |keys: &[String]| -> Vec<Vec<u8>> {
            keys.iter()
                .filter(|k| !k.is_empty())
                .map(|k| k.as_bytes().to_vec())
                .collect()
        };
        self.api_keys = keep(full);
        self.publish_keys = keep(publish);
        // Every publish request asks for its key's fingerprint: hashed here, once per key.
        self.publishers = self
            .api_keys
            .iter()
            .chain(&self.publish_keys)
            .map(|raw| fingerprint(raw))
            .collect();
        self
    }

    /// Whether any API key (full or publish-only) is configured.
    pub fn has_api_keys(&self) -> bool {
        !self.api_keys.is_empty() || !self.publish_keys.is_empty()
    }

    /// Whether `key` is one of the full-access API keys (`--api-keys`, and the development
    /// key), compared in constant time.
    pub fn check_api_key(&self, key: &str) -> bool {
        self.api_key(key).is_some_and(|k| k.scope == KeyScope::Full)
    }

    /// Which API key `key` is, if any. Every configured key is compared, each in constant
    /// time, whichever matches: the time taken does not tell which key matched, nor how
    /// much of one.
    pub(crate) fn api_key(&self, key: &str) -> Option<ApiKey> {
        let key = key.as_bytes();
        let mut found = subtle::Choice::from(0);
        let mut index = 0u64;
        for (i, k) in self.api_keys.iter().chain(&self.publish_keys).enumerate() {
            let hit = k.ct_eq(key);
            index = u64::conditional_select(&index, &(i as u64), hit);
            found |= hit;
        }
        if !bool::from(found) {
            return None;
        }
        let id = usize::try_from(index).ok()?;
        let scope = if id < self.api_keys.len() {
            KeyScope::Full
        } else {
            KeyScope::Publish
        };
        Some(ApiKey { scope, id })
    }

    /// The publisher `key` is in the broker's run-state bounds (its share of runs):
    /// `key:` and the first 16 bytes of SHA-256 of the key, in hex. The same on every
    /// node configured with the key, and no way back to the key, so brokers shared by
    /// many nodes (Redis) may store it; the key itself stays in this table.
    pub(crate) fn publisher(&self, key: ApiKey) -> Option<PublisherId> {
        self.publishers.get(key.id).cloned().flatten()
    }
}

/// The publisher fingerprint of the API key `raw` (see [`Auth::publisher`]).
fn fingerprint(raw: &[u8]) -> Option<PublisherId> {
    let digest = Sha256::new()
        .chain_update(b"agentwire publisher\0")
        .chain_update(raw)
        .finalize();
    let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
    PublisherId::new(format!("key:{hex}")).ok()
}

/// Checks `Authorization: Bearer <api key>` against `auth`'s keys, and that the key's
/// scope allows `need`: the one API-key check of every route that takes one.
///
/// # Errors
/// 401 `unauthorized` without a key (or with none configured) or with an unknown one; 400
/// `bad_request` (field `Authorization`) when the header came more than once; 403
/// `forbidden` for a publish-only key where full access is needed.
pub(crate) fn authorize(
    auth: &Auth,
    headers: &HeaderMap,
    need: KeyScope,
) -> Result<ApiKey, ApiError> {
    let unauthorized = |message: &str| ApiError::new(ErrorCode::Unauthorized, message);
    if !auth.has_api_keys() {
        return Err(unauthorized(
            "no API key is configured (--api-keys, --publish-api-keys)",
        ));
    }
    let presented = match bearer(headers) {
        Ok(Some(presented)) => presented,
        Err(BadBearer::Repeated) => {
            return Err(ApiError::new(
                ErrorCode::BadRequest,
                "send one `Authorization: Bearer <api key>` header, not several",
            )
            .at("Authorization"));
        }
        Ok(None) | Err(BadBearer::NotBearer) => {
            return Err(unauthorized("send `Authorization: Bearer <api key>`"));
        }
    };
    let Some(key) = auth.api_key(presented) else {
        return Err(unauthorized("unknown API key"));
    };
    match (need, key.scope) {
        (KeyScope::Publish, _) | (KeyScope::Full, KeyScope::Full) => Ok(key),
        (KeyScope::Full, KeyScope::Publish) => Err(ApiError::new(
            ErrorCode::Forbidden,
            "this API key may only publish (--publish-api-keys)",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_keys_publisher_is_a_stable_fingerprint_not_the_key() {
        let auth = Auth::hs256_unchecked(b"s").with_api_keys_unchecked(
            &["full-key-0123456789".into()],
            &["publish-key-0123456789".into()],
        );
        let full = auth.api_key("full-key-0123456789").expect("known");
        let publish = auth.api_key("publish-key-0123456789").expect("known");
        let a = auth.publisher(full).expect("fingerprint");
        let b = auth.publisher(publish).expect("fingerprint");
        assert_ne!(a, b);
        assert!(
            a.as_str().starts_with("key:") && a.as_str().len() == 4 + 32,
            "{a}"
        );
        assert!(!a.as_str().contains("full-key"));
        // Another node with the same key computes the same fingerprint: SHA-256 of the
        // label and the key, as every implementation computes it.
        let other = Auth::hs256_unchecked(b"another secret")
            .with_api_keys_unchecked(&["full-key-0123456789".into()], &[]);
        let again = other.api_key("full-key-0123456789").expect("known");
        assert_eq!(other.publisher(again), Some(a.clone()));
        // `printf 'agentwire publisher\0full-key-0123456789' | sha256sum`, first 32 digits.
        assert_eq!(a.as_str(), "key:4eebc2c6889b59e7f029a1208353a0e5");
        // Kept per key when the keys are set: the same as hashing the key again, for
        // every key of both lists.
        assert_eq!(Some(a), fingerprint(b"full-key-0123456789"));
        assert_eq!(Some(b), fingerprint(b"publish-key-0123456789"));
        let keys: Vec<String> = (0..5).map(|i| format!("key-number-{i}-of-five")).collect();
        let many = Auth::hs256_unchecked(b"s").with_api_keys_unchecked(&keys[..2], &keys[2..]);
        for k in &keys {
            let key = many.api_key(k).expect("known");
            assert_eq!(many.publisher(key), fingerprint(k.as_bytes()), "{k}");
        }
    }

    #[test]
    fn api_keys_compare_exactly() {
        let mut auth = Auth::hs256_unchecked(b"s");
        assert!(!auth.check_api_key("k1"));
        auth.api_keys = vec![b"k1".to_vec(), b"k2".to_vec()];
        assert!(auth.check_api_key("k2"));
        assert!(!auth.check_api_key("k"));
        assert!(!auth.check_api_key("k22"));
        assert!(!auth.check_api_key(""));
    }

    #[test]
    fn api_keys_have_a_scope_and_an_identity() {
        let mut auth = Auth::hs256_unchecked(b"s");
        auth.api_keys = vec![b"full1".to_vec(), b"full2".to_vec()];
        auth.publish_keys = vec![b"pub1".to_vec()];
        let full2 = auth.api_key("full2").expect("known");
        assert_eq!(full2.scope, KeyScope::Full);
        let pub1 = auth.api_key("pub1").expect("known");
        assert_eq!(pub1.scope, KeyScope::Publish);
        let full1 = auth.api_key("full1").expect("known");
        assert!(full1.id != full2.id && full1.id != pub1.id && full2.id != pub1.id);
        assert_eq!(auth.api_key("pub"), None);
        assert!(auth.check_api_key("full1"));
        assert!(
            !auth.check_api_key("pub1"),
            "a publish-only key is not an admin key"
        );
        assert!(auth.has_api_keys());
    }

    /// Issue 14: API keys under 16 characters are refused, naming the list and the
    /// position, never the key.
    #[test]
    fn short_api_keys_are_refused_with_where_they_were_given() {
        let long = "0123456789abcdef".to_owned();
        let auth = || Auth::hs256_unchecked(b"s");
        let one = std::slice::from_ref(&long);
        assert!(auth().with_api_keys(one, one).is_ok());
        let e = auth()
            .with_api_keys(one, &[long.clone(), "pub-key-15chars".into()])
            .expect_err("short publish key");
        assert!(
            matches!(
                e,
                AuthConfigError::ShortApiKey {
                    position: 2,
                    chars: 15,
                    min: 16,
                    ..
                }
            ),
            "{e}"
        );
        let text = e.to_string();
        assert!(
            text.contains("--publish-api-keys") && text.contains("at least 16"),
            "{text}"
        );
        assert!(!text.contains("pub-key-15chars"), "{text}");
        let e = auth()
            .with_api_keys(&["k1".into()], &[])
            .expect_err("short key");
        assert!(e.to_string().contains("--api-keys"), "{e}");
        // Multi-byte characters count once each.
        assert!(auth().with_api_keys(&["é".repeat(16)], &[]).is_ok());
    }

    #[test]
    fn authorize_checks_presence_identity_and_scope() {
        use axum::http::{HeaderValue, header};
        let auth =
            Auth::hs256_unchecked(b"s").with_api_keys_unchecked(&["full".into()], &["pub".into()]);
        let with = |v: &'static str| {
            let mut h = HeaderMap::new();
            h.insert(header::AUTHORIZATION, HeaderValue::from_static(v));
            h
        };
        let code = |r: Result<ApiKey, ApiError>| r.map(|k| k.scope).map_err(|e| e.code);
        assert_eq!(
            code(authorize(&auth, &HeaderMap::new(), KeyScope::Publish)),
            Err(ErrorCode::Unauthorized)
        );
        assert_eq!(
            code(authorize(&auth, &with("Bearer nope"), KeyScope::Publish)),
            Err(ErrorCode::Unauthorized)
        );
        assert_eq!(
            code(authorize(&auth, &with("Basic full"), KeyScope::Full)),
            Err(ErrorCode::Unauthorized)
        );
        assert_eq!(
            code(authorize(&auth, &with("Bearer pub"), KeyScope::Publish)),
            Ok(KeyScope::Publish)
        );
        assert_eq!(
            code(authorize(&auth, &with("Bearer pub"), KeyScope::Full)),
            Err(ErrorCode::Forbidden)
        );
        assert_eq!(
            code(authorize(&auth, &with("Bearer full"), KeyScope::Full)),
            Ok(KeyScope::Full)
        );
        let keyless = Auth::hs256_unchecked(b"s");
        assert_eq!(
            code(authorize(&keyless, &with("Bearer full"), KeyScope::Full)),
            Err(ErrorCode::Unauthorized)
        );
    }
}
