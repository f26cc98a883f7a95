//! Keys fetched from a JWKS URL (`--jwt-jwks-url`, RFC 7517): the settings, always; the
//! cache, its refreshes and their metrics (`cache`) and the bounded fetch (`fetch`) with the
//! `jwks` feature.
//!
//! The key set is fetched at start, again every `refresh_interval`, and again when a token
//! names a `kid` the set does not hold — at most once per `min_refresh_interval`, however
//! many such tokens come. A fetch that fails (timeout, status, a body too large, too many
//! keys, not a key set) keeps the last good set, is logged and counted, and is retried
//! after `min_refresh_interval`. Only RS256 (RSA), ES256 (EC P-256) and EdDSA (Ed25519)
//! signing keys are kept; symmetric (`oct`) keys and encryption keys are skipped, so a
//! key set cannot make the server accept HS256 tokens.

use std::time::Duration;

use axum::http::Uri;

use super::AuthConfigError;

#[cfg(feature = "jwks")]
mod cache;
#[cfg(feature = "jwks")]
mod fetch;

#[cfg(feature = "jwks")]
pub(crate) use cache::{Jwks, Trigger};

/// Default [`JwksSettings::refresh_interval`]: 5 minutes.
pub const DEFAULT_JWKS_REFRESH_INTERVAL: Duration = Duration::from_secs(300);
/// Default [`JwksSettings::min_refresh_interval`]: 30 seconds.
pub const DEFAULT_JWKS_MIN_REFRESH_INTERVAL: Duration = Duration::from_secs(30);
/// Default [`JwksSettings::timeout`]: 5 seconds.
pub const DEFAULT_JWKS_TIMEOUT: Duration = Duration::from_secs(5);
/// Default [`JwksSettings::max_bytes`]: 64 KiB (identity providers' key sets are a few KiB).
pub const DEFAULT_JWKS_MAX_BYTES: usize = 64 * 1024;
/// Default [`JwksSettings::max_keys`]: 32.
pub const DEFAULT_JWKS_MAX_KEYS: usize = 32;

/// Where client-token keys are fetched from and the bounds of each fetch.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct JwksSettings {
    /// The JWKS URL: `https://…`, or `http://` on a loopback host only (a key set fetched
    /// in the clear from elsewhere could be replaced on the way).
    pub url: String,
    /// How often the key set is fetched again (`--jwt-jwks-refresh-interval`): a key
    /// removed from the set is refused at most this long after its removal.
    pub refresh_interval: Duration,
    /// The shortest time between two fetches (`--jwt-jwks-min-refresh-interval`): a token
    /// with an unknown `kid` triggers a fetch at most this often, and a failed fetch is
    /// retried after it.
    pub min_refresh_interval: Duration,
    /// Longest one fetch may take, connection and body included (`--jwt-jwks-timeout`).
    pub timeout: Duration,
    /// Largest key set document read, in bytes (`--jwt-jwks-max-bytes`).
    pub max_bytes: usize,
    /// Most keys one key set may hold (`--jwt-jwks-max-keys`); a larger set is refused.
    pub max_keys: usize,
}

impl JwksSettings {
    /// The settings for `url`, every bound at its default.
    pub fn new(url: impl Into<String>) -> JwksSettings {
        JwksSettings {
            url: url.into(),
            refresh_interval: DEFAULT_JWKS_REFRESH_INTERVAL,
            min_refresh_interval: DEFAULT_JWKS_MIN_REFRESH_INTERVAL,
            timeout: DEFAULT_JWKS_TIMEOUT,
            max_bytes: DEFAULT_JWKS_MAX_BYTES,
            max_keys: DEFAULT_JWKS_MAX_KEYS,
        }
    }

    /// The URL, checked: `https`, or `http` on a loopback host; a host; no fragment.
    pub(super) fn checked_url(&self) -> Result<Uri, AuthConfigError> {
        crate::http::client::outbound_url(&self.url, "https://idp.example/.well-known/jwks.json")
            .map_err(|why| AuthConfigError::Jwks(format!("{}: {why}", redact(&self.url))))
    }

    /// The URL as logs and errors show it: without user information or query.
    pub(super) fn display_url(&self) -> String {
        redact(&self.url)
    }
}

impl std::fmt::Debug for JwksSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwksSettings")
            .field("url", &self.display_url())
            .field("refresh_interval", &self.refresh_interval)
            .field("min_refresh_interval", &self.min_refresh_interval)
            .field("timeout", &self.timeout)
            .field("max_bytes", &self.max_bytes)
            .field("max_keys", &self.max_keys)
            .finish()
    }
}

use crate::http::client::redact;

#[cfg(test)]
mod tests {
    use super::*;

    /// The rule itself is tested with `outbound_url`; here, what the JWKS settings add: a
    /// refusal is an `AuthConfigError` naming the flag, and neither it nor `Debug`
    /// shows credentials.
    #[test]
    fn refusals_name_the_flag_and_hide_credentials() {
        let check = |url: &str| JwksSettings::new(url).checked_url().map(|_| ());
        assert!(check("https://idp.example/.well-known/jwks.json").is_ok());
        let e = check("http://user:pw@idp.example/j").expect_err("http");
        assert!(e.to_string().starts_with("--jwt-jwks-url"), "{e}");
        assert!(!e.to_string().contains("pw"), "{e}");
        let e = check("").expect_err("empty");
        assert!(e.to_string().starts_with("--jwt-jwks-url"), "{e}");
        let shown = JwksSettings::new("https://u:pw@h/j?key=s");
        assert_eq!(shown.display_url(), "https://h/j");
        assert!(!format!("{shown:?}").contains("pw"));
    }
}
