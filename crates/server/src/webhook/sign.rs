//! The signature of a webhook notice: HMAC-SHA256, keyed with the webhook's secret, over
//! `<timestamp>.<body>` — the Unix time in seconds the attempt was made, a dot, and the
//! exact bytes of the request body — written as `v1=<64 lowercase hex digits>`. The
//! timestamp inside the signed text lets a receiver refuse a replayed request.

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The header holding the attempt's Unix time in seconds.
pub(crate) const TIMESTAMP_HEADER: &str = "agentwire-timestamp";
/// The header holding the signature, `v1=<hex>`.
pub(crate) const SIGNATURE_HEADER: &str = "agentwire-signature";

/// The webhook's key, ready to sign.
#[derive(Clone)]
pub(crate) struct SigningKey(Hmac<Sha256>);

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SigningKey(..)")
    }
}

impl SigningKey {
    /// The key `secret`; `None` only if HMAC refused its length (it takes any).
    pub(crate) fn new(secret: &[u8]) -> Option<SigningKey> {
        Hmac::<Sha256>::new_from_slice(secret).ok().map(SigningKey)
    }
}

/// `v1=<hex>` of `body` sent at `timestamp` (Unix seconds), keyed with `key`.
pub(crate) fn signature(key: &SigningKey, timestamp: u64, body: &[u8]) -> String {
    let mut mac = key.0.clone();
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    let digest = mac.finalize().into_bytes();
    let mut out = String::with_capacity(3 + 64);
    out.push_str("v1=");
    for b in digest {
        out.push(char::from(HEX[usize::from(b >> 4)]));
        out.push(char::from(HEX[usize::from(b & 0xf)]));
    }
    out
}

const HEX: &[u8; 16] = b"0123456789abcdef";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_is_hmac_sha256_of_timestamp_dot_body() {
        let key = |s: &[u8]| SigningKey::new(s).expect("any key length");
        let a = signature(&key(b"k"), 1, b"{}");
        let b = signature(&key(b"k"), 1, b"{}");
        let c = signature(&key(b"k"), 2, b"{}");
        let d = signature(&key(b"other"), 1, b"{}");
        assert_eq!(a, b);
        assert_ne!(a, c, "the timestamp is signed");
        assert_ne!(a, d, "the key matters");
        assert!(a.starts_with("v1=") && a.len() == 67, "{a}");
        let mut mac = Hmac::<Sha256>::new_from_slice(b"k").expect("any key length");
        mac.update(b"1.{}");
        let hex: String = mac
            .finalize()
            .into_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(a, format!("v1={hex}"));
    }
}
