//! One notice's delivery: POST the body, signed afresh at each attempt, under the
//! per-request timeout; retried with backoff after a timeout, a connection error, 5xx or
//! 429, given up after any other 4xx or when the retries are spent.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::http::{Request, header};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use super::sign::{SIGNATURE_HEADER, SigningKey, TIMESTAMP_HEADER, signature};
use super::{WebhookSettings, retry_delay};
use crate::http::client::{connector, error_chain};

/// The most of a receiver's answer read (and dropped); a longer one closes the connection.
const MAX_ANSWER_BYTES: usize = 16 * 1024;

/// How one attempt failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Failure {
    /// No answer within the per-request timeout.
    Timeout,
    /// The connection failed or broke.
    Request(String),
    /// The receiver answered with this status.
    Status(u16),
}

impl Failure {
    /// The `reason` label of `agentwire_receipt_webhook_failed_total`.
    pub(super) fn reason(&self) -> &'static str {
        match self {
            Failure::Timeout => "timeout",
            Failure::Request(_) => "request",
            Failure::Status(s) if *s >= 500 => "status_5xx",
            Failure::Status(429) => "status_429",
            Failure::Status(_) => "status_4xx",
        }
    }

    /// Whether sending again may succeed.
    pub(super) fn is_retryable(&self) -> bool {
        match self {
            Failure::Timeout | Failure::Request(_) => true,
            Failure::Status(s) => *s >= 500 || *s == 429,
        }
    }
}

/// How a notice ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Outcome {
    /// The receiver answered 2xx.
    Sent,
    /// The receiver refused it (a 4xx other than 429): not retried.
    Refused,
    /// Every attempt failed.
    RetriesSpent,
}

/// The webhook's HTTP/1 client.
pub(super) struct Sender {
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    key: SigningKey,
    settings: WebhookSettings,
}

impl std::fmt::Debug for Sender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sender")
            .field("url", &self.settings.display_url)
            .finish_non_exhaustive()
    }
}

impl Sender {
    /// A client for `settings.url`.
    pub(super) fn new(settings: WebhookSettings) -> Result<Sender, String> {
        let connector = connector(&settings.url, settings.timeout)?;
        let key = SigningKey::new(&settings.secret).ok_or("HMAC refused the key")?;
        Ok(Sender {
            client: Client::builder(TokioExecutor::new()).build(connector),
            key,
            settings,
        })
    }

    /// Sends `body` until it is taken, refused, or the retries are spent; `failed` is told
    /// of each failed attempt.
    pub(super) async fn deliver(&self, body: Bytes, mut failed: impl FnMut(&Failure)) -> Outcome {
        let mut attempt = 0;
        loop {
            let failure = match self.attempt(body.clone()).await {
                Ok(()) => return Outcome::Sent,
                Err(f) => f,
            };
            failed(&failure);
            if !failure.is_retryable() {
                tracing::warn!(url = %self.settings.display_url, reason = failure.reason(), "the receipt webhook refused a notice; not retried");
                return Outcome::Refused;
            }
            if attempt >= self.settings.retries {
                tracing::warn!(url = %self.settings.display_url, reason = failure.reason(), attempts = attempt + 1, "a receipt webhook notice was given up");
                return Outcome::RetriesSpent;
            }
            tokio::time::sleep(jitter(retry_delay(attempt))).await;
            attempt += 1;
        }
    }

    async fn attempt(&self, body: Bytes) -> Result<(), Failure> {
        let timestamp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let request = Request::post(self.settings.url.clone())
            .header(header::CONTENT_TYPE, "application/json")
            .header(
                header::USER_AGENT,
                concat!("agentwire/", env!("CARGO_PKG_VERSION")),
            )
            .header(TIMESTAMP_HEADER, timestamp)
            .header(SIGNATURE_HEADER, signature(&self.key, timestamp, &body))
            .body(Full::new(body))
            .map_err(|e| Failure::Request(e.to_string()))?;
        let exchange = async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|e| Failure::Request(error_chain(&e)))?;
            let status = response.status();
            // Read (and drop) a short answer so the connection can serve the next notice.
            let _ = Limited::new(response.into_body(), MAX_ANSWER_BYTES)
                .collect()
                .await;
            if status.is_success() {
                Ok(())
            } else {
                Err(Failure::Status(status.as_u16()))
            }
        };
        tokio::time::timeout(self.settings.timeout, exchange)
            .await
            .map_err(|_| Failure::Timeout)?
    }
}

/// `d` plus up to a quarter more, so that notices failed together are not retried together.
fn jitter(d: Duration) -> Duration {
    d + d.mul_f64(rand::random::<f64>() * 0.25)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_5xx_and_429_are_retried_other_4xx_are_not() {
        assert!(Failure::Timeout.is_retryable());
        assert!(Failure::Request("reset".into()).is_retryable());
        assert!(Failure::Status(500).is_retryable());
        assert!(Failure::Status(503).is_retryable());
        assert!(Failure::Status(429).is_retryable());
        assert!(!Failure::Status(400).is_retryable());
        assert!(!Failure::Status(404).is_retryable());
        assert!(!Failure::Status(410).is_retryable());
    }
}
