//! Client tokens: HS256 (and optionally RS256) verification, minting, and the settings of
//! a verifier.
//!
//! Tokens and secrets never reach a log line or an error message: `Debug` is redacted, and
//! errors say what was wrong, never what was sent.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use agentwire_protocol::{IdError, UserId};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

/// Why a token was refused. The message never contains the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    /// No token was sent.
    #[error(
        "no token: send `Authorization: Bearer <jwt>`, the `agentwire.auth.<jwt>` subprotocol, or `?token=`"
    )]
    Missing,
    /// The token is not a JWT.
    #[error("malformed token")]
    Malformed,
    /// The signature does not verify.
    #[error("bad token signature")]
    BadSignature,
    /// The token is signed with an algorithm this server does not accept.
    #[error("token algorithm {0} is not accepted")]
    Algorithm(String),
    /// `exp` has passed.
    #[error("token expired")]
    Expired,
    /// A claim is missing or wrong (`exp`, `sub`, `iss`, `aud`).
    #[error("token claims: {0}")]
    Claims(String),
    /// `sub` is not a valid user id.
    #[error("token `sub` is not a valid user id: {0}")]
    Subject(IdError),
    /// A token could not be signed (no HS256 secret configured).
    #[error("cannot sign tokens: {0}")]
    Signing(String),
}

/// Why the authentication settings could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuthConfigError {
    /// The RS256 public key file could not be read.
    #[error("cannot read JWT public key {path}: {source}")]
    ReadKey {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The RS256 public key is not an RSA public key in PEM.
    #[error("JWT public key {path} is not an RSA public key in PEM: {reason}")]
    BadKey {
        /// The file.
        path: PathBuf,
        /// What the parser said.
        reason: String,
    },
    /// Neither an HS256 secret nor an RS256 public key is configured: no client token
    /// could ever be verified.
    #[error(
        "no credentials to verify client tokens: set AGENTWIRE_JWT_SECRET (--jwt-secret) or \
         AGENTWIRE_JWT_PUBLIC_KEY (--jwt-public-key); for development on this machine, start \
         agentwire-server with --dev"
    )]
    NoCredentials,
    /// The HS256 secret is empty.
    #[error("the JWT secret must not be empty")]
    EmptySecret,
}

/// A token that verified: whose it is and until when it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// The user (`sub`).
    pub user: UserId,
    /// `exp`, in seconds since the Unix epoch.
    pub expires_at: u64,
}

#[derive(Deserialize)]
struct VerifyClaims {
    sub: String,
    exp: u64,
}

#[derive(Serialize)]
struct MintClaims<'a> {
    sub: &'a str,
    exp: u64,
    iat: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    iss: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    aud: Option<&'a str>,
}

/// Verifies client tokens and API keys.
pub struct Auth {
    pub(super) hs: Option<(DecodingKey, EncodingKey)>,
    pub(super) rs: Option<DecodingKey>,
    pub(super) issuer: Option<String>,
    pub(super) audience: Option<String>,
    pub(super) leeway: Duration,
    pub(super) api_keys: Vec<Vec<u8>>,
    pub(super) publish_keys: Vec<Vec<u8>>,
}

impl fmt::Debug for Auth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Auth")
            .field("hs256", &self.hs.is_some())
            .field("rs256", &self.rs.is_some())
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("leeway", &self.leeway)
            .field("api_keys", &self.api_keys.len())
            .field("publish_api_keys", &self.publish_keys.len())
            .finish()
    }
}
impl Auth {
    pub(crate) fn empty() -> Auth {
        Auth {
            hs: None,
            rs: None,
            issuer: None,
            audience: None,
            leeway: Duration::ZERO,
            api_keys: Vec::new(),
            publish_keys: Vec::new(),
        }
    }

    /// A verifier for HS256 tokens signed with `secret`, no `iss`/`aud` checks, no
    /// leeway and no API key.
    ///
    /// # Errors
    /// [`AuthConfigError::EmptySecret`].
    pub fn hs256(secret: &[u8]) -> Result<Auth, AuthConfigError> {
        if secret.is_empty() {
            return Err(AuthConfigError::EmptySecret);
        }
        let mut auth = Auth::empty();
        auth.hs = Some((
            DecodingKey::from_secret(secret),
            EncodingKey::from_secret(secret),
        ));
        Ok(auth)
    }

    /// The clock skew tolerated on `exp`.
    pub fn leeway(&self) -> Duration {
        self.leeway
    }

    /// Verifies a client token: signature, algorithm, `exp` (required), `sub` (a valid
    /// user id), and `iss`/`aud` when configured.
    ///
    /// # Errors
    /// [`AuthError`] saying what was wrong.
    pub fn verify(&self, token: &str) -> Result<Verified, AuthError> {
        let header = jsonwebtoken::decode_header(token).map_err(|e| map_error(&e))?;
        let key = match header.alg {
            Algorithm::HS256 => self.hs.as_ref().map(|(d, _)| d),
            Algorithm::RS256 => self.rs.as_ref(),
            _ => None,
        }
        .ok_or_else(|| AuthError::Algorithm(format!("{:?}", header.alg)))?;
        let mut validation = Validation::new(header.alg);
        validation.leeway = self.leeway.as_secs();
        validation.set_required_spec_claims(&["exp", "sub"]);
        match &self.issuer {
            Some(iss) => {
                validation.set_issuer(&[iss]);
                validation.required_spec_claims.insert("iss".into());
            }
            None => validation.iss = None,
        }
        match &self.audience {
            Some(aud) => {
                validation.set_audience(&[aud]);
                validation.required_spec_claims.insert("aud".into());
            }
            None => validation.validate_aud = false,
        }
        let data = jsonwebtoken::decode::<VerifyClaims>(token, key, &validation)
            .map_err(|e| map_error(&e))?;
        let user = UserId::new(&data.claims.sub).map_err(AuthError::Subject)?;
        Ok(Verified {
            user,
            expires_at: data.claims.exp,
        })
    }

    /// Signs an HS256 token for `user`, valid for `ttl`, with this verifier's `iss`/`aud`.
    ///
    /// # Errors
    /// [`AuthError::Signing`] when no HS256 secret is configured.
    pub fn mint(&self, user: &UserId, ttl: Duration) -> Result<String, AuthError> {
        let Some((_, key)) = &self.hs else {
            return Err(AuthError::Signing("no HS256 secret configured".into()));
        };
        mint_with(
            key,
            user,
            ttl,
            self.issuer.as_deref(),
            self.audience.as_deref(),
        )
    }

    /// Also accepts RS256 tokens signed by the private half of the RSA public key in the
    /// PEM file at `path`.
    ///
    /// # Errors
    /// [`AuthConfigError::ReadKey`] or [`AuthConfigError::BadKey`].
    pub fn with_rs256_pem_file(mut self, path: &Path) -> Result<Auth, AuthConfigError> {
        let pem = std::fs::read(path).map_err(|source| AuthConfigError::ReadKey {
            path: path.to_owned(),
            source,
        })?;
        let key = DecodingKey::from_rsa_pem(&pem).map_err(|e| AuthConfigError::BadKey {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
        self.rs = Some(key);
        Ok(self)
    }

    /// Requires `iss` to be `issuer` (and puts it in minted tokens).
    #[must_use]
    pub fn with_issuer(mut self, issuer: Option<String>) -> Auth {
        self.issuer = issuer;
        self
    }

    /// Requires `aud` to be `audience` (and puts it in minted tokens).
    #[must_use]
    pub fn with_audience(mut self, audience: Option<String>) -> Auth {
        self.audience = audience;
        self
    }

    /// Tolerates `leeway` of clock skew on `exp`.
    #[must_use]
    pub fn with_leeway(mut self, leeway: Duration) -> Auth {
        self.leeway = leeway;
        self
    }
}

/// Signs an HS256 token for `user` with `secret`, valid for `ttl` from now.
///
/// # Errors
/// [`AuthError::Signing`] when the secret is empty.
pub fn mint_hs256(
    secret: &[u8],
    user: &UserId,
    ttl: Duration,
    issuer: Option<&str>,
    audience: Option<&str>,
) -> Result<String, AuthError> {
    if secret.is_empty() {
        return Err(AuthError::Signing("empty secret".into()));
    }
    mint_with(
        &EncodingKey::from_secret(secret),
        user,
        ttl,
        issuer,
        audience,
    )
}

fn mint_with(
    key: &EncodingKey,
    user: &UserId,
    ttl: Duration,
    issuer: Option<&str>,
    audience: Option<&str>,
) -> Result<String, AuthError> {
    let now = jsonwebtoken::get_current_timestamp();
    let claims = MintClaims {
        sub: user.as_str(),
        exp: now.saturating_add(ttl.as_secs()),
        iat: now,
        iss: issuer,
        aud: audience,
    };
    jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, key)
        .map_err(|e| AuthError::Signing(e.to_string()))
}

fn map_error(e: &jsonwebtoken::errors::Error) -> AuthError {
    match e.kind() {
        ErrorKind::ExpiredSignature => AuthError::Expired,
        ErrorKind::InvalidSignature => AuthError::BadSignature,
        ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => {
            AuthError::Algorithm("of the header".into())
        }
        ErrorKind::InvalidIssuer => AuthError::Claims("wrong `iss`".into()),
        ErrorKind::InvalidAudience => AuthError::Claims("wrong `aud`".into()),
        ErrorKind::InvalidSubject => AuthError::Claims("wrong `sub`".into()),
        ErrorKind::ImmatureSignature => AuthError::Claims("not valid yet (`nbf`)".into()),
        ErrorKind::MissingRequiredClaim(c) => AuthError::Claims(format!("missing `{c}`")),
        ErrorKind::Json(_) => AuthError::Claims("`sub` must be a string and `exp` a number".into()),
        _ => AuthError::Malformed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(s: &str) -> UserId {
        UserId::new(s).expect("valid id")
    }

    #[test]
    fn minted_tokens_verify_and_name_their_user() {
        let auth = Auth::hs256(b"secret").expect("auth");
        let token = auth
            .mint(&user("auth0|7"), Duration::from_secs(60))
            .expect("mint");
        let v = auth.verify(&token).expect("verifies");
        assert_eq!(v.user, user("auth0|7"));
        assert!(v.expires_at > jsonwebtoken::get_current_timestamp());
    }

    #[test]
    fn wrong_secret_expired_and_garbage_are_refused() {
        let auth = Auth::hs256(b"secret").expect("auth");
        let other =
            mint_hs256(b"other", &user("u"), Duration::from_secs(60), None, None).expect("mint");
        assert_eq!(auth.verify(&other), Err(AuthError::BadSignature));
        assert_eq!(auth.verify("not a jwt"), Err(AuthError::Malformed));
        let key = EncodingKey::from_secret(b"secret");
        let now = jsonwebtoken::get_current_timestamp();
        let old = MintClaims {
            sub: "u",
            exp: now - 3600,
            iat: now - 7200,
            iss: None,
            aud: None,
        };
        let expired =
            jsonwebtoken::encode(&Header::new(Algorithm::HS256), &old, &key).expect("encode");
        assert_eq!(auth.verify(&expired), Err(AuthError::Expired));
        let hs512 = jsonwebtoken::encode(
            &Header::new(Algorithm::HS512),
            &MintClaims {
                exp: now + 60,
                ..old
            },
            &key,
        )
        .expect("encode");
        assert!(matches!(auth.verify(&hs512), Err(AuthError::Algorithm(_))));
    }

    #[test]
    fn issuer_and_audience_are_checked_when_configured() {
        let mut auth = Auth::hs256(b"secret").expect("auth");
        auth.issuer = Some("idp".into());
        auth.audience = Some("agentwire".into());
        let good = auth
            .mint(&user("u"), Duration::from_secs(60))
            .expect("mint");
        assert!(auth.verify(&good).is_ok());
        let bare =
            mint_hs256(b"secret", &user("u"), Duration::from_secs(60), None, None).expect("mint");
        assert!(matches!(auth.verify(&bare), Err(AuthError::Claims(_))));
        let wrong = mint_hs256(
            b"secret",
            &user("u"),
            Duration::from_secs(60),
            Some("idp"),
            Some("other"),
        )
        .expect("mint");
        assert_eq!(
            auth.verify(&wrong),
            Err(AuthError::Claims("wrong `aud`".into()))
        );
    }
}
