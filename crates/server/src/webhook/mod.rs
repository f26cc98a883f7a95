//! The receipt webhook (`--receipt-webhook-url`): when a run's terminal event was not
//! acknowledged by any of the user's clients within `--receipt-webhook-after`, the server
//! POSTs a signed JSON notice to the configured URL, so a publisher can fall back (an
//! e-mail, a push notification) without polling receipts itself.
//!
//! - Which node sends: the manager tells this node of each run end the broker accepted
//!   from it for the first time ([`agentwire_manager::RunEnded`]); the broker accepts one
//!   terminal event per run, a stalled run's included (its watchdog claim wins on one node
//!   only), so one node sends each run's notice, with no claim of its own.
//! - At most once per run: a node that stops before a notice is due or sent does not send
//!   it; a notice is retried (`--receipt-webhook-retries`, backoff from
//!   [`RETRY_BASE`] doubling up to [`RETRY_MAX`]) after a timeout
//!   (`--receipt-webhook-timeout`), a connection error, 5xx or 429, and given up after a
//!   4xx other than 429.
//! - Bounded: at most `--receipt-webhook-max-pending` notices wait or are being sent at
//!   once; a run that ends beyond it gets none (counted as dropped, reason `full`).
//! - Signed (`sign`): HMAC-SHA256 over `<timestamp>.<body>`; see docs/protocol.md.
//!
//! `settings` (the checked configuration) is always built, so a build without the
//! `webhook` feature refuses a configured URL clearly; the sending (`notices`, `send`,
//! `sign`) needs the feature.

use std::path::Path;
use std::time::Duration;

use axum::http::Uri;

use crate::auth::MIN_SECRET_BYTES;
use crate::http::client::{outbound_url, redact};

#[cfg(feature = "webhook")]
mod notices;
#[cfg(feature = "webhook")]
mod send;
#[cfg(feature = "webhook")]
mod sign;

#[cfg(feature = "webhook")]
pub(crate) use notices::ReceiptWebhook;

/// Without the `webhook` feature no webhook is ever built ([`WebhookConfig::check`]
/// refuses a URL).
#[cfg(not(feature = "webhook"))]
#[derive(Debug)]
pub(crate) enum ReceiptWebhook {}

#[cfg(not(feature = "webhook"))]
impl ReceiptWebhook {
    pub(crate) fn new(_: WebhookSettings) -> Result<ReceiptWebhook, WebhookConfigError> {
        Err(WebhookConfigError::NotBuilt)
    }

    pub(crate) fn attach(
        self,
        _: &agentwire_manager::UnifiedWebSocketManager,
        _: &mut prometheus_client::registry::Registry,
    ) {
        match self {}
    }
}

/// The first retry's delay; each further retry waits twice as long, up to [`RETRY_MAX`].
pub const RETRY_BASE: Duration = Duration::from_millis(500);
/// The longest delay between two attempts of one notice.
pub const RETRY_MAX: Duration = Duration::from_secs(30);

/// Why the receipt webhook's configuration was refused at start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WebhookConfigError {
    /// The URL is not one the server may call.
    #[error("--receipt-webhook-url {url}: {why}")]
    Url {
        /// The URL, without credentials.
        url: String,
        /// What is wrong with it.
        why: String,
    },
    /// A URL without a key to sign with.
    #[error(
        "--receipt-webhook-url needs --receipt-webhook-secret or --receipt-webhook-secret-file: \
         every notice is signed"
    )]
    NoSecret,
    /// Both a key and a key file.
    #[error("give --receipt-webhook-secret or --receipt-webhook-secret-file, not both")]
    TwoSecrets,
    /// A key without a URL, which would do nothing.
    #[error(
        "--receipt-webhook-secret or --receipt-webhook-secret-file without \
         --receipt-webhook-url: set the URL, or drop the key"
    )]
    NoUrl,
    /// A key shorter than [`MIN_SECRET_BYTES`] outside development mode.
    #[error(
        "the receipt webhook's key is {bytes} bytes; at least {min} are needed (e.g. `openssl \
         rand -hex 32`)"
    )]
    ShortSecret {
        /// Its length.
        bytes: usize,
        /// The least accepted.
        min: usize,
    },
    /// The key file could not be read.
    #[error("--receipt-webhook-secret-file {path}: {source}")]
    SecretFile {
        /// The file.
        path: String,
        /// Why it could not be read.
        source: std::io::Error,
    },
    /// `--receipt-webhook-after` is zero.
    #[error("--receipt-webhook-after must be more than zero: clients need time to acknowledge")]
    ZeroAfter,
    /// The webhook could not be started (its HTTP client, or no runtime to run on).
    #[error("the receipt webhook cannot start: {0}")]
    Start(String),
    /// A build without the `webhook` feature.
    #[error("--receipt-webhook-url needs the `webhook` feature, which this build does not have")]
    NotBuilt,
}

/// The receipt webhook's checked settings.
#[derive(Debug, Clone)]
#[cfg_attr(not(feature = "webhook"), allow(dead_code))]
pub(crate) struct WebhookSettings {
    pub(crate) url: Uri,
    /// The URL as logs show it.
    pub(crate) display_url: String,
    pub(crate) secret: Vec<u8>,
    pub(crate) after: Duration,
    pub(crate) timeout: Duration,
    pub(crate) retries: u32,
    pub(crate) max_pending: usize,
}

/// The webhook's configuration as the server's configuration gives it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct WebhookConfig<'a> {
    pub(crate) url: Option<&'a str>,
    pub(crate) secret: Option<&'a str>,
    pub(crate) secret_file: Option<&'a Path>,
    pub(crate) after: Duration,
    pub(crate) timeout: Duration,
    pub(crate) retries: u32,
    pub(crate) max_pending: usize,
    pub(crate) dev_mode: bool,
}

impl WebhookConfig<'_> {
    /// The checked settings; `None` when no URL is set (the webhook is off).
    pub(crate) fn check(self) -> Result<Option<WebhookSettings>, WebhookConfigError> {
        let Some(url) = self.url else {
            return match (self.secret, self.secret_file) {
                (None, None) => Ok(None),
                _ => Err(WebhookConfigError::NoUrl),
            };
        };
        let uri = outbound_url(url, "https://hooks.example/agentwire").map_err(|why| {
            WebhookConfigError::Url {
                url: redact(url),
                why,
            }
        })?;
        if cfg!(not(feature = "webhook")) {
            return Err(WebhookConfigError::NotBuilt);
        }
        let secret = match (self.secret, self.secret_file) {
            (Some(_), Some(_)) => return Err(WebhookConfigError::TwoSecrets),
            (None, None) => return Err(WebhookConfigError::NoSecret),
            (Some(s), None) => s.as_bytes().to_vec(),
            (None, Some(path)) => {
                let mut bytes =
                    std::fs::read(path).map_err(|source| WebhookConfigError::SecretFile {
                        path: path.display().to_string(),
                        source,
                    })?;
                if bytes.last() == Some(&b'\n') {
                    bytes.pop();
                    if bytes.last() == Some(&b'\r') {
                        bytes.pop();
                    }
                }
                bytes
            }
        };
        let min = if self.dev_mode { 1 } else { MIN_SECRET_BYTES };
        if secret.len() < min {
            return Err(WebhookConfigError::ShortSecret {
                bytes: secret.len(),
                min,
            });
        }
        if self.after.is_zero() {
            return Err(WebhookConfigError::ZeroAfter);
        }
        Ok(Some(WebhookSettings {
            display_url: redact(url),
            url: uri,
            secret,
            after: self.after,
            timeout: self.timeout.max(Duration::from_millis(1)),
            retries: self.retries,
            max_pending: self.max_pending.max(1),
        }))
    }
}

/// The delay before retry `n` (0 for the first retry): [`RETRY_BASE`] doubled `n` times,
/// at most [`RETRY_MAX`].
#[cfg_attr(not(feature = "webhook"), allow(dead_code))]
pub(crate) fn retry_delay(n: u32) -> Duration {
    RETRY_BASE
        .checked_mul(1u32 << n.min(16))
        .unwrap_or(RETRY_MAX)
        .min(RETRY_MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(url: Option<&str>, secret: Option<&str>) -> WebhookConfig<'static> {
        // Leak for the 'static borrow; a test's strings only.
        let url = url.map(|u| &*Box::leak(u.to_owned().into_boxed_str()));
        let secret = secret.map(|s| &*Box::leak(s.to_owned().into_boxed_str()));
        WebhookConfig {
            url,
            secret,
            secret_file: None,
            after: Duration::from_secs(30),
            timeout: Duration::from_secs(5),
            retries: 5,
            max_pending: 10,
            dev_mode: false,
        }
    }

    const KEY: &str = "a webhook key of thirty-two bytes!";

    #[test]
    fn no_url_is_off_and_bad_settings_say_what_is_wrong() {
        assert!(config(None, None).check().expect("off").is_none());
        let err = |c: WebhookConfig<'_>| c.check().expect_err("refused").to_string();
        assert!(err(config(None, Some(KEY))).contains("without --receipt-webhook-url"));
        assert!(err(config(Some("https://h/x"), None)).contains("needs --receipt-webhook-secret"));
        let short = err(config(Some("https://h/x"), Some("short")));
        assert!(short.contains("5 bytes") && short.contains("32"), "{short}");
        let clear = err(config(Some("http://hooks.example/x"), Some(KEY)));
        assert!(clear.contains("loopback"), "{clear}");
        let mut zero = config(Some("https://h/x"), Some(KEY));
        zero.after = Duration::ZERO;
        assert!(err(zero).contains("--receipt-webhook-after"));
        let mut dev = config(Some("http://127.0.0.1:9/x"), Some("short"));
        dev.dev_mode = true;
        assert!(dev.check().expect("dev mode takes a short key").is_some());
    }

    #[test]
    fn retries_back_off_up_to_the_maximum() {
        assert_eq!(retry_delay(0), RETRY_BASE);
        assert_eq!(retry_delay(1), RETRY_BASE * 2);
        assert_eq!(retry_delay(40), RETRY_MAX);
    }
}
