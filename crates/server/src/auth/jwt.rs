//! Client tokens: verification (HS256 with a secret; RS256, ES256 or EdDSA with a PEM public
//! key or the keys of a JWKS URL), minting, and the settings of a verifier.
//!
//! Tokens and secrets never reach a log line or an error message: `Debug` is redacted, and
//! errors say what was wrong, never what was sent.

use std::fmt;
use std::path::Path;
#[cfg(feature = "jwks")]
use std::sync::Arc;
use std::time::Duration;

use agentwire_protocol::UserId;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

#[cfg(feature = "jwks")]
use super::jwks::{Jwks, Trigger};
use super::{AuthConfigError, AuthError, JwksSettings, files};

/// Shortest HS256 secret accepted outside development mode, in bytes: 256 bits, the size
/// of the HMAC-SHA-256 output (RFC 7518 §3.2).
pub const MIN_SECRET_BYTES: usize = 32;

/// Longest client token accepted by default, in bytes (`--jwt-max-bytes`). Identity
/// providers' tokens are well under 2 KiB; a longer one is refused before it is parsed.
pub const DEFAULT_MAX_TOKEN_BYTES: usize = 8 * 1024;

/// The algorithms a public key (a PEM file or a JWKS key) may verify.
pub(super) const PUBLIC_KEY_ALGORITHMS: [Algorithm; 3] =
    [Algorithm::RS256, Algorithm::ES256, Algorithm::EdDSA];

/// A token that verified: whose it is and until when it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// The user (`sub`).
    pub user: UserId,
    /// `exp`, in seconds since the Unix epoch.
    pub expires_at: u64,
}

/// What a token says and whether a verifier accepts it ([`Auth::check`]). The claims are
/// as written in the token, not verified: trust [`TokenReport::verdict`] alone.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct TokenReport {
    /// `sub`: whom the token names.
    pub subject: Option<String>,
    /// The header's `alg`.
    pub algorithm: Option<String>,
    /// The header's `kid`.
    pub key_id: Option<String>,
    /// `iss`.
    pub issuer: Option<String>,
    /// `aud` (a list as JSON).
    pub audience: Option<String>,
    /// `exp`, seconds since the Unix epoch.
    pub expires_at: Option<u64>,
    /// `nbf`, seconds since the Unix epoch.
    pub not_before: Option<u64>,
    /// `iat`, seconds since the Unix epoch.
    pub issued_at: Option<u64>,
    /// Accepted, and for whom until when; or exactly why not.
    pub verdict: Result<Verified, AuthError>,
}

#[derive(Deserialize)]
struct VerifyClaims {
    sub: String,
    exp: u64,
    /// NumericDate: a JSON number, possibly with a fraction (RFC 7519 §2).
    #[serde(default)]
    iat: Option<f64>,
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
    pub(super) public_key: Option<(Algorithm, DecodingKey)>,
    #[cfg(feature = "jwks")]
    pub(super) jwks: Option<Arc<Jwks>>,
    pub(super) issuer: Option<String>,
    pub(super) audience: Option<String>,
    pub(super) leeway: Duration,
    pub(super) max_token_bytes: usize,
    pub(super) api_keys: Vec<Vec<u8>>,
    pub(super) publish_keys: Vec<Vec<u8>>,
    /// Each API key's publisher fingerprint, in the order of `api_keys` then
    /// `publish_keys`, computed once when the keys are set.
    pub(super) publishers: Vec<Option<agentwire_manager::PublisherId>>,
}

impl fmt::Debug for Auth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Auth");
        d.field("hs256", &self.hs.is_some())
            .field("public_key", &self.public_key.as_ref().map(|(alg, _)| alg));
        #[cfg(feature = "jwks")]
        d.field("jwks", &self.jwks);
        d.field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("leeway", &self.leeway)
            .field("max_token_bytes", &self.max_token_bytes)
            .field("api_keys", &self.api_keys.len())
            .field("publish_api_keys", &self.publish_keys.len())
            .finish()
    }
}

/// The key a token is checked with: the verifier's own, or one of the JWKS key set.
enum Key<'a> {
    Own(&'a DecodingKey),
    #[cfg(feature = "jwks")]
    Fetched(Arc<DecodingKey>),
}

impl std::ops::Deref for Key<'_> {
    type Target = DecodingKey;

    fn deref(&self) -> &DecodingKey {
        match self {
            Key::Own(k) => k,
            #[cfg(feature = "jwks")]
            Key::Fetched(k) => k,
        }
    }
}

impl Auth {
    pub(crate) fn empty() -> Auth {
        Auth {
            hs: None,
            public_key: None,
            #[cfg(feature = "jwks")]
            jwks: None,
            issuer: None,
            audience: None,
            leeway: Duration::ZERO,
            max_token_bytes: DEFAULT_MAX_TOKEN_BYTES,
            api_keys: Vec::new(),
            publish_keys: Vec::new(),
            publishers: Vec::new(),
        }
    }

    /// A verifier for HS256 tokens signed with `secret` (at least [`MIN_SECRET_BYTES`]), no
    /// `iss`/`aud` checks, no leeway and no API key.
    ///
    /// # Errors
    /// [`AuthConfigError::ShortSecret`] for a secret under [`MIN_SECRET_BYTES`].
    pub fn hs256(secret: &[u8]) -> Result<Auth, AuthConfigError> {
        if secret.len() < MIN_SECRET_BYTES {
            return Err(AuthConfigError::ShortSecret {
                bytes: secret.len(),
                min: MIN_SECRET_BYTES,
            });
        }
        Ok(Auth::hs256_unchecked(secret))
    }

    /// As [`Auth::hs256`] with a secret of any length but zero: development mode only.
    pub(crate) fn hs256_unchecked(secret: &[u8]) -> Auth {
        let mut auth = Auth::empty();
        auth.hs = Some((
            DecodingKey::from_secret(secret),
            EncodingKey::from_secret(secret),
        ));
        auth
    }

    /// The clock skew tolerated on `exp`, `nbf` and `iat`.
    pub fn leeway(&self) -> Duration {
        self.leeway
    }

    /// Verifies a client token with the keys at hand: its size, signature and algorithm,
    /// `exp` (required), `nbf` and `iat` (when present; neither may be in the future beyond
    /// the leeway), `sub` (a valid user id), and `iss`/`aud` when configured.
    ///
    /// It never waits: a `kid` missing from the JWKS key set is refused at once (and the
    /// key set fetched again in the background, as often as the rate limit allows). Where
    /// a caller can wait, [`Auth::authenticate`] fetches first and retries.
    ///
    /// # Errors
    /// [`AuthError`] saying what was wrong.
    pub fn verify(&self, token: &str) -> Result<Verified, AuthError> {
        let result = self.verify_now(token);
        #[cfg(feature = "jwks")]
        if let (Err(e), Some(jwks)) = (&result, &self.jwks)
            && wants_new_keys(e)
        {
            jwks.refresh_in_background();
        }
        result
    }

    /// As [`Auth::verify`], but when the token names a key the JWKS key set does not hold
    /// (or none was fetched yet) the key set is fetched again first — at most once per
    /// `--jwt-jwks-min-refresh-interval`, one fetch shared by every caller waiting for it,
    /// and never longer than `--jwt-jwks-timeout`.
    ///
    /// # Errors
    /// [`AuthError`] saying what was wrong.
    ///
    /// # Cancel safety
    /// Cancel safe: a fetch in progress goes on for the other callers.
    pub async fn authenticate(&self, token: &str) -> Result<Verified, AuthError> {
        let result = self.verify_now(token);
        #[cfg(feature = "jwks")]
        if let (Err(e), Some(jwks)) = (&result, &self.jwks)
            && wants_new_keys(e)
        {
            jwks.refresh_for_unknown_key().await;
            return self.verify_now(token);
        }
        result
    }

    fn verify_now(&self, token: &str) -> Result<Verified, AuthError> {
        if token.len() > self.max_token_bytes {
            return Err(AuthError::TooLarge {
                bytes: token.len(),
                limit: self.max_token_bytes,
            });
        }
        let header = jsonwebtoken::decode_header(token).map_err(|e| header_error(&e))?;
        let key = self.key_for(&header)?;
        let mut validation = Validation::new(header.alg);
        validation.leeway = self.leeway.as_secs();
        validation.validate_nbf = true;
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
        let data = jsonwebtoken::decode::<VerifyClaims>(token, &key, &validation)
            .map_err(|e| claims_error(&e))?;
        let now = jsonwebtoken::get_current_timestamp();
        if let Some(iat) = data.claims.iat {
            #[allow(clippy::cast_precision_loss)] // seconds since 1970 fit an f64 exactly
            let latest = now.saturating_add(self.leeway.as_secs()) as f64;
            if !iat.is_finite() || iat > latest {
                return Err(AuthError::IssuedInFuture);
            }
        }
        let user = UserId::new(&data.claims.sub).map_err(AuthError::Subject)?;
        Ok(Verified {
            user,
            expires_at: data.claims.exp,
        })
    }

    /// The key that checks a token with this header.
    fn key_for(&self, header: &Header) -> Result<Key<'_>, AuthError> {
        let alg = header.alg;
        if alg == Algorithm::HS256 {
            return match &self.hs {
                Some((key, _)) => Ok(Key::Own(key)),
                None => Err(self.refuse_algorithm(alg)),
            };
        }
        if !PUBLIC_KEY_ALGORITHMS.contains(&alg) {
            return Err(self.refuse_algorithm(alg));
        }
        let own = match &self.public_key {
            Some((own_alg, key)) if *own_alg == alg => Some(key),
            _ => None,
        };
        #[cfg(feature = "jwks")]
        if let Some(jwks) = &self.jwks
            && (header.kid.is_some() || own.is_none())
        {
            return jwks.key(alg, header.kid.as_deref()).map(Key::Fetched);
        }
        own.map(Key::Own).ok_or_else(|| self.refuse_algorithm(alg))
    }

    fn refuse_algorithm(&self, alg: Algorithm) -> AuthError {
        let mut accepted: Vec<String> = Vec::new();
        if self.hs.is_some() {
            accepted.push("HS256".into());
        }
        if let Some((alg, _)) = &self.public_key {
            accepted.push(format!("{alg:?} (--jwt-public-key)"));
        }
        #[cfg(feature = "jwks")]
        if self.jwks.is_some() {
            accepted.push("RS256, ES256 and EdDSA (--jwt-jwks-url)".into());
        }
        AuthError::Algorithm(format!(
            "{alg:?} is not accepted; this server accepts {}",
            accepted.join(", ")
        ))
    }

    /// Why the verifier cannot serve yet, if it cannot: a JWKS URL is configured and no key
    /// set has been fetched from it. `/readyz` answers 503 with this text.
    pub(crate) fn not_ready(&self) -> Option<String> {
        #[cfg(feature = "jwks")]
        if let Some(jwks) = &self.jwks {
            return jwks.not_ready();
        }
        None
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

    /// Also accepts tokens signed by the private half of the public key in the PEM file at
    /// `path`: an RSA key verifies RS256 tokens, an EC P-256 key ES256, an Ed25519 key
    /// EdDSA. The file is refused when users other than its owner can write it.
    ///
    /// # Errors
    /// [`AuthConfigError::ReadKey`], [`AuthConfigError::WritableByOthers`] or
    /// [`AuthConfigError::BadKey`].
    pub fn with_public_key_file(mut self, path: &Path) -> Result<Auth, AuthConfigError> {
        self.public_key = Some(files::public_key_file(path)?);
        Ok(self)
    }

    /// Also accepts RS256, ES256 and EdDSA tokens signed by a key of the key set (JWKS) at
    /// `settings.url`, fetched and kept fresh as [`JwksSettings`] says. Nothing is fetched
    /// here: [`Auth::refresh_keys`] fetches once (a [`Server`](crate::Server) does at
    /// start), and the routes start the scheduled refreshes.
    ///
    /// # Errors
    /// [`AuthConfigError::Jwks`] for a URL that is not `https://` (or `http://` on a
    /// loopback host), when the system's CA certificates cannot be loaded for https, or in
    /// a build without the `jwks` feature.
    pub fn with_jwks(
        #[allow(unused_mut)] mut self,
        settings: JwksSettings,
    ) -> Result<Auth, AuthConfigError> {
        #[cfg(feature = "jwks")]
        {
            self.jwks = Some(Arc::new(Jwks::new(settings)?));
            Ok(self)
        }
        #[cfg(not(feature = "jwks"))]
        {
            settings.checked_url()?;
            Err(AuthConfigError::Jwks(
                "this build has no JWKS support: build agentwire-server with its `jwks` \
                 feature"
                    .into(),
            ))
        }
    }

    /// Fetches the JWKS key set now, once, when one is configured (and waits at most its
    /// timeout). A failure is logged and counted; the previous key set, if any, stays.
    ///
    /// # Cancel safety
    /// Cancel safe: the fetch goes on for other callers waiting for it.
    pub async fn refresh_keys(&self) {
        #[cfg(feature = "jwks")]
        if let Some(jwks) = &self.jwks {
            jwks.refresh(Trigger::Start).await;
        }
    }

    /// Starts the scheduled JWKS refreshes (once), when a key set is configured and a Tokio
    /// runtime is running.
    pub(crate) fn start_key_refresh(&self) {
        #[cfg(feature = "jwks")]
        if let Some(jwks) = &self.jwks {
            jwks.start();
        }
    }

    /// Registers the verifier's metrics (those of the JWKS key set) in `registry`.
    pub(crate) fn register_metrics(
        &self,
        #[allow(unused_variables)] registry: &mut prometheus_client::registry::Registry,
    ) {
        #[cfg(feature = "jwks")]
        if let Some(jwks) = &self.jwks {
            jwks.register(registry);
        }
    }

    /// What `token` says, read without trusting it, and whether this verifier accepts it
    /// (as a handshake would: fetching the JWKS key set first for an unknown `kid`). For
    /// tools such as `agentwire-server check-token`; the server itself never shows
    /// unverified claims.
    pub async fn check(&self, token: &str) -> TokenReport {
        let verdict = self.authenticate(token).await;
        let unverified = jsonwebtoken::dangerous::insecure_decode::<serde_json::Value>(token).ok();
        let claim = |name: &str| {
            unverified
                .as_ref()
                .and_then(|d| d.claims.get(name).cloned())
        };
        let number = |name: &str| claim(name).and_then(|v| v.as_u64());
        let text = |name: &str| claim(name).and_then(|v| v.as_str().map(str::to_owned));
        TokenReport {
            subject: text("sub"),
            algorithm: unverified.as_ref().map(|d| format!("{:?}", d.header.alg)),
            key_id: unverified.as_ref().and_then(|d| d.header.kid.clone()),
            issuer: text("iss"),
            audience: claim("aud").map(|v| match v {
                serde_json::Value::String(s) => s,
                other => other.to_string(),
            }),
            expires_at: number("exp"),
            not_before: number("nbf"),
            issued_at: number("iat"),
            verdict,
        }
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

    /// Tolerates `leeway` of clock skew on `exp`, `nbf` and `iat`.
    #[must_use]
    pub fn with_leeway(mut self, leeway: Duration) -> Auth {
        self.leeway = leeway;
        self
    }

    /// Refuses tokens longer than `bytes` (default [`DEFAULT_MAX_TOKEN_BYTES`]).
    #[must_use]
    pub fn with_max_token_bytes(mut self, bytes: usize) -> Auth {
        self.max_token_bytes = bytes;
        self
    }
}

/// Whether fetching the JWKS key set again could turn this refusal into an acceptance.
#[cfg(feature = "jwks")]
fn wants_new_keys(e: &AuthError) -> bool {
    matches!(
        e,
        AuthError::UnknownKey(_) | AuthError::NoKeyId(_) | AuthError::KeysUnavailable
    )
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

/// Why a token's header could not be read.
fn header_error(e: &jsonwebtoken::errors::Error) -> AuthError {
    match e.kind() {
        ErrorKind::InvalidToken => {
            AuthError::Malformed("a JWT is three base64url parts separated by dots")
        }
        ErrorKind::Base64(_) => AuthError::Malformed("the header is not base64url"),
        ErrorKind::InvalidAlgorithmName => {
            AuthError::Algorithm("of the header is not one this server knows".into())
        }
        ErrorKind::Json(_) | ErrorKind::Utf8(_) => {
            AuthError::Malformed("the header is not a JSON object with an `alg` this server knows")
        }
        _ => AuthError::Malformed("the header cannot be read"),
    }
}

/// Why a token whose header was read was refused.
fn claims_error(e: &jsonwebtoken::errors::Error) -> AuthError {
    match e.kind() {
        ErrorKind::ExpiredSignature => AuthError::Expired,
        ErrorKind::ImmatureSignature => AuthError::NotYetValid,
        ErrorKind::InvalidSignature => AuthError::BadSignature,
        ErrorKind::InvalidAlgorithm => AuthError::Algorithm("does not match its key".into()),
        ErrorKind::InvalidIssuer => AuthError::Claims("wrong `iss`".into()),
        ErrorKind::InvalidAudience => AuthError::Claims("wrong `aud`".into()),
        ErrorKind::InvalidSubject => AuthError::Claims("wrong `sub`".into()),
        // A required claim of the wrong type reads as missing to the parser.
        ErrorKind::MissingRequiredClaim(c) => {
            AuthError::Claims(format!("missing or ill-typed `{c}`"))
        }
        ErrorKind::InvalidClaimFormat(c) => AuthError::Claims(format!("`{c}` must be a number")),
        ErrorKind::Json(_) => AuthError::Claims(
            "`sub` must be a string and `exp`, `nbf`, `iat` numbers, each given once".into(),
        ),
        ErrorKind::Base64(_) => AuthError::Malformed("the payload or signature is not base64url"),
        ErrorKind::Utf8(_) => AuthError::Malformed("the payload is not UTF-8"),
        // A key that cannot verify this algorithm (e.g. an EC key of another curve).
        _ => AuthError::BadSignature,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"a secret of at least thirty-two bytes";

    fn user(s: &str) -> UserId {
        UserId::new(s).expect("valid id")
    }

    fn sign(claims: &serde_json::Value) -> String {
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            claims,
            &EncodingKey::from_secret(SECRET),
        )
        .expect("encode")
    }

    #[test]
    fn minted_tokens_verify_and_name_their_user() {
        let auth = Auth::hs256(SECRET).expect("auth");
        let token = auth
            .mint(&user("auth0|7"), Duration::from_secs(60))
            .expect("mint");
        let v = auth.verify(&token).expect("verifies");
        assert_eq!(v.user, user("auth0|7"));
        assert!(v.expires_at > jsonwebtoken::get_current_timestamp());
    }

    /// Issue 14: an HS256 secret shorter than 32 bytes is refused, saying how long it must
    /// be and how to make one — never showing it.
    #[test]
    fn short_secrets_are_refused() {
        let e = Auth::hs256(b"0123456789abcdef0123456789abcde").expect_err("31 bytes");
        assert!(
            matches!(e, AuthConfigError::ShortSecret { bytes: 31, min: 32 }),
            "{e}"
        );
        let text = e.to_string();
        assert!(
            text.contains("--jwt-secret") && text.contains("at least 32"),
            "{text}"
        );
        assert!(!text.contains("0123456789"), "{text}");
        assert!(Auth::hs256(&[b'x'; 32]).is_ok());
    }

    #[test]
    fn wrong_secret_expired_and_garbage_are_refused() {
        let auth = Auth::hs256(SECRET).expect("auth");
        let other = mint_hs256(
            b"another secret of thirty-two bytes!",
            &user("u"),
            Duration::from_secs(60),
            None,
            None,
        )
        .expect("mint");
        assert_eq!(auth.verify(&other), Err(AuthError::BadSignature));
        assert!(matches!(
            auth.verify("not a jwt"),
            Err(AuthError::Malformed(_))
        ));
        let now = jsonwebtoken::get_current_timestamp();
        let expired = sign(&serde_json::json!({"sub": "u", "exp": now - 3600}));
        assert_eq!(auth.verify(&expired), Err(AuthError::Expired));
        let hs512 = jsonwebtoken::encode(
            &Header::new(Algorithm::HS512),
            &serde_json::json!({"sub": "u", "exp": now + 60}),
            &EncodingKey::from_secret(SECRET),
        )
        .expect("encode");
        let e = auth.verify(&hs512).expect_err("HS512");
        assert!(
            matches!(&e, AuthError::Algorithm(m) if m.contains("HS512") && m.contains("accepts HS256")),
            "{e}"
        );
    }

    /// Issue 14: `nbf` in the future and `iat` in the future (beyond the leeway) are
    /// refused, each with its own error; within the leeway both pass.
    #[test]
    fn nbf_and_iat_in_the_future_are_refused_beyond_the_leeway() {
        let auth = Auth::hs256(SECRET)
            .expect("auth")
            .with_leeway(Duration::from_secs(30));
        let now = jsonwebtoken::get_current_timestamp();
        let claims = |extra: serde_json::Value| {
            let mut c = serde_json::json!({"sub": "u", "exp": now + 600});
            c.as_object_mut()
                .expect("object")
                .extend(extra.as_object().expect("object").clone());
            sign(&c)
        };
        let nbf_ahead = claims(serde_json::json!({"nbf": now + 3600}));
        assert_eq!(auth.verify(&nbf_ahead), Err(AuthError::NotYetValid));
        let iat_ahead = claims(serde_json::json!({"iat": now + 3600}));
        assert_eq!(auth.verify(&iat_ahead), Err(AuthError::IssuedInFuture));
        let iat_float = claims(serde_json::json!({"iat": (now + 3600) as f64 + 0.5}));
        assert_eq!(auth.verify(&iat_float), Err(AuthError::IssuedInFuture));
        for ok in [
            serde_json::json!({"nbf": now + 20, "iat": now + 20}),
            serde_json::json!({"nbf": now - 60, "iat": now - 60}),
            serde_json::json!({"iat": (now - 1) as f64 + 0.25}),
        ] {
            assert!(auth.verify(&claims(ok.clone())).is_ok(), "{ok}");
        }
        let bad_nbf = claims(serde_json::json!({"nbf": "tomorrow"}));
        assert_eq!(
            auth.verify(&bad_nbf),
            Err(AuthError::Claims("`nbf` must be a number".into()))
        );
        let bad_iat = claims(serde_json::json!({"iat": "now"}));
        assert!(
            matches!(auth.verify(&bad_iat), Err(AuthError::Claims(_))),
            "ill-typed iat"
        );
    }

    /// Issue 14: a token over the size bound is refused before it is parsed, saying both
    /// sizes.
    #[test]
    fn tokens_over_the_size_bound_are_refused() {
        let auth = Auth::hs256(SECRET).expect("auth").with_max_token_bytes(300);
        let now = jsonwebtoken::get_current_timestamp();
        let small = sign(&serde_json::json!({"sub": "u", "exp": now + 60}));
        assert!(auth.verify(&small).is_ok());
        let big = sign(&serde_json::json!({"sub": "u", "exp": now + 60, "pad": "x".repeat(300)}));
        let e = auth.verify(&big).expect_err("too large");
        assert_eq!(
            e,
            AuthError::TooLarge {
                bytes: big.len(),
                limit: 300
            }
        );
        assert!(e.to_string().contains("--jwt-max-bytes"), "{e}");
        assert_eq!(e.reason(), "token_too_large");
    }

    /// `check` (for `agentwire-server check-token`) says whom a token names and exactly
    /// why it would be refused.
    #[tokio::test]
    async fn check_says_whom_a_token_names_and_why_it_is_refused() {
        let auth = Auth::hs256(SECRET).expect("auth");
        let now = jsonwebtoken::get_current_timestamp();
        let expired = sign(&serde_json::json!({
            "sub": "alice", "exp": now - 3600, "iat": now - 7200, "iss": "idp", "aud": ["a", "b"]
        }));
        let report = auth.check(&expired).await;
        assert_eq!(report.subject.as_deref(), Some("alice"));
        assert_eq!(report.algorithm.as_deref(), Some("HS256"));
        assert_eq!(report.key_id, None);
        assert_eq!(report.issuer.as_deref(), Some("idp"));
        assert_eq!(report.audience.as_deref(), Some(r#"["a","b"]"#));
        assert_eq!(report.expires_at, Some(now - 3600));
        assert_eq!(report.issued_at, Some(now - 7200));
        assert_eq!(report.not_before, None);
        assert_eq!(report.verdict, Err(AuthError::Expired));

        let good = auth
            .mint(&user("bob"), Duration::from_secs(60))
            .expect("mint");
        let report = auth.check(&good).await;
        assert_eq!(report.subject.as_deref(), Some("bob"));
        assert!(report.verdict.is_ok_and(|v| v.user == user("bob")));

        let garbage = auth.check("garbage").await;
        assert_eq!(garbage.subject, None);
        assert!(matches!(garbage.verdict, Err(AuthError::Malformed(_))));
    }

    #[test]
    fn issuer_and_audience_are_checked_when_configured() {
        let mut auth = Auth::hs256(SECRET).expect("auth");
        auth.issuer = Some("idp".into());
        auth.audience = Some("agentwire".into());
        let good = auth
            .mint(&user("u"), Duration::from_secs(60))
            .expect("mint");
        assert!(auth.verify(&good).is_ok());
        let bare =
            mint_hs256(SECRET, &user("u"), Duration::from_secs(60), None, None).expect("mint");
        assert!(matches!(auth.verify(&bare), Err(AuthError::Claims(_))));
        let wrong = mint_hs256(
            SECRET,
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
