//! [`RedisTls`]: what a `rediss://` connection trusts, and what it presents for mutual TLS.
//!
//! A `rediss://` address always verifies the server's certificate and name; nothing here
//! turns that off. Without a [`RedisTls`], the system's CA certificates are trusted (a
//! managed Redis with a public certificate needs nothing more); with a CA of its own, only
//! that CA is (a self-signed or private-CA Redis). TLS runs on rustls with the ring
//! provider, the one the server's own HTTPS clients use.

use std::path::Path;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::error::ConfigError;

/// TLS settings for `rediss://` addresses: a CA to trust instead of the system's, and a
/// client certificate for a Redis that asks for one (`tls-auth-clients yes`). Each PEM is
/// checked when it is given, so a bad file is refused at start-up, not at the first
/// connection.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct RedisTls {
    root_ca: Option<Vec<u8>>,
    client: Option<(Vec<u8>, Vec<u8>)>,
}

impl std::fmt::Debug for RedisTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The key is a secret, and the certificates say nothing a log needs.
        f.debug_struct("RedisTls")
            .field("root_ca", &self.root_ca.is_some())
            .field("client_certificate", &self.client.is_some())
            .finish()
    }
}

fn tls_error(what: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Tls {
        what: what.to_owned(),
        reason: reason.into(),
    }
}

/// The certificates of `pem`: at least one, every one well formed.
fn certificates(what: &str, pem: &[u8]) -> Result<usize, ConfigError> {
    let mut n = 0;
    for cert in CertificateDer::pem_slice_iter(pem) {
        cert.map_err(|e| tls_error(what, format!("not a PEM certificate: {e}")))?;
        n += 1;
    }
    if n == 0 {
        return Err(tls_error(what, "holds no PEM certificate"));
    }
    Ok(n)
}

fn read(what: &str, path: &Path) -> Result<Vec<u8>, ConfigError> {
    std::fs::read(path).map_err(|e| tls_error(what, format!("{}: {e}", path.display())))
}

impl RedisTls {
    /// No CA of its own (the system's are trusted) and no client certificate.
    pub fn new() -> Self {
        RedisTls::default()
    }

    /// Trusts the CA certificates of `pem` (one or more), and only them.
    ///
    /// # Errors
    /// [`ConfigError::Tls`] when `pem` holds no certificate or a malformed one.
    pub fn with_root_ca_pem(mut self, pem: impl Into<Vec<u8>>) -> Result<Self, ConfigError> {
        let pem = pem.into();
        certificates("the Redis CA certificate", &pem)?;
        self.root_ca = Some(pem);
        Ok(self)
    }

    /// Presents the certificate chain `cert_pem` with its private key `key_pem` (PKCS#8,
    /// PKCS#1 or SEC1) to a Redis that asks for a client certificate.
    ///
    /// # Errors
    /// [`ConfigError::Tls`] when either holds nothing usable.
    pub fn with_client_identity_pem(
        mut self,
        cert_pem: impl Into<Vec<u8>>,
        key_pem: impl Into<Vec<u8>>,
    ) -> Result<Self, ConfigError> {
        let (cert_pem, key_pem) = (cert_pem.into(), key_pem.into());
        certificates("the Redis client certificate", &cert_pem)?;
        PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
            tls_error(
                "the Redis client key",
                format!("not a PEM private key: {e}"),
            )
        })?;
        self.client = Some((cert_pem, key_pem));
        Ok(self)
    }

    /// The settings from files: a CA (`ca`), and a client certificate with its key (`cert`
    /// and `key`, both or neither).
    ///
    /// # Errors
    /// [`ConfigError::Tls`] naming the file that cannot be read or used, or a certificate
    /// given without its key (or the other way round).
    pub fn from_files(
        ca: Option<&Path>,
        cert: Option<&Path>,
        key: Option<&Path>,
    ) -> Result<Self, ConfigError> {
        let mut tls = RedisTls::new();
        if let Some(ca) = ca {
            tls = tls.with_root_ca_pem(read("the Redis CA certificate", ca)?)?;
        }
        match (cert, key) {
            (Some(cert), Some(key)) => {
                tls = tls.with_client_identity_pem(
                    read("the Redis client certificate", cert)?,
                    read("the Redis client key", key)?,
                )?;
            }
            (None, None) => {}
            (Some(_), None) => {
                return Err(tls_error(
                    "the Redis client certificate",
                    "given without its key",
                ));
            }
            (None, Some(_)) => {
                return Err(tls_error(
                    "the Redis client key",
                    "given without its certificate",
                ));
            }
        }
        Ok(tls)
    }

    /// Whether it sets anything (a CA or a client certificate).
    pub fn is_set(&self) -> bool {
        self.root_ca.is_some() || self.client.is_some()
    }

    /// What the `redis` client takes.
    pub(crate) fn certificates(&self) -> redis::TlsCertificates {
        redis::TlsCertificates {
            client_tls: self
                .client
                .as_ref()
                .map(|(cert, key)| redis::ClientTlsConfig {
                    client_cert: cert.clone(),
                    client_key: key.clone(),
                }),
            root_cert: self.root_ca.clone(),
        }
    }
}

/// Makes ring rustls's provider for this process, once, unless one was chosen already:
/// the `redis` client builds its TLS settings with the process's provider.
pub(crate) fn install_crypto_provider() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // An error means a provider was installed first; that one is used.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pem_pair() -> (String, String) {
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
            .expect("params")
            .self_signed(&key)
            .expect("cert");
        (cert.pem(), key.serialize_pem())
    }

    #[test]
    fn certificates_and_keys_are_checked_when_given() {
        let (cert, key) = pem_pair();
        assert!(RedisTls::new().with_root_ca_pem(cert.clone()).is_ok());
        assert!(
            RedisTls::new()
                .with_client_identity_pem(cert.clone(), key.clone())
                .is_ok()
        );
        for bad in [
            "",
            "not a pem",
            "-----BEGIN CERTIFICATE-----\n%%%\n-----END CERTIFICATE-----\n",
        ] {
            let e = RedisTls::new().with_root_ca_pem(bad).expect_err(bad);
            assert!(matches!(e, ConfigError::Tls { .. }), "{e}");
        }
        let e = RedisTls::new()
            .with_client_identity_pem(cert.clone(), "no key here")
            .expect_err("no key");
        assert!(e.to_string().contains("client key"), "{e}");
        let e = RedisTls::new()
            .with_client_identity_pem(key, cert)
            .expect_err("swapped");
        assert!(e.to_string().contains("client certificate"), "{e}");
    }

    #[test]
    fn files_are_read_and_a_certificate_needs_its_key() {
        let (cert, key) = pem_pair();
        let dir = std::env::temp_dir().join(format!("agentwire-tls-{}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir).expect("dir");
        let (cert_file, key_file) = (dir.join("c.pem"), dir.join("k.pem"));
        std::fs::write(&cert_file, cert).expect("write");
        std::fs::write(&key_file, key).expect("write");
        let tls = RedisTls::from_files(Some(&cert_file), Some(&cert_file), Some(&key_file))
            .expect("all three");
        assert!(tls.is_set());
        let certs = tls.certificates();
        assert!(certs.root_cert.is_some() && certs.client_tls.is_some());
        assert!(
            !RedisTls::from_files(None, None, None)
                .expect("none")
                .is_set()
        );
        let e = RedisTls::from_files(None, Some(&cert_file), None).expect_err("no key");
        assert!(e.to_string().contains("without its key"), "{e}");
        let e = RedisTls::from_files(None, None, Some(&key_file)).expect_err("no cert");
        assert!(e.to_string().contains("without its certificate"), "{e}");
        let missing = dir.join("missing.pem");
        let e = RedisTls::from_files(Some(&missing), None, None).expect_err("missing");
        assert!(e.to_string().contains("missing.pem"), "{e}");
        let debug = format!("{tls:?}");
        assert!(!debug.contains("PRIVATE KEY"), "{debug}");
        std::fs::remove_dir_all(&dir).expect("clean up");
    }
}
