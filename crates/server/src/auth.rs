//! Authentication: client tokens (JWT, HS256 and optionally RS256), admin API keys, and
//! the development credentials kept in a file when nothing is configured.
//!
//! Tokens, secrets and keys never reach a log line or an error message: every `Debug` here
//! is redacted, and errors say what was wrong, never what was sent.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use agentwire_protocol::{IdError, UserId};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use subtle::{ConditionallySelectable, ConstantTimeEq};

use crate::config::ServerConfig;

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
    /// The development credentials file could not be read or created.
    #[error("development credentials {path}: {source}")]
    DevCredentials {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
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

/// Verifies client tokens and API keys.
pub struct Auth {
    hs: Option<(DecodingKey, EncodingKey)>,
    rs: Option<DecodingKey>,
    issuer: Option<String>,
    audience: Option<String>,
    leeway: Duration,
    api_keys: Vec<Vec<u8>>,
    publish_keys: Vec<Vec<u8>>,
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
    /// Builds the verifier from the configuration. In development mode (no secret, no
    /// public key) the secret and an API key come from the development credentials file,
    /// created on first use.
    ///
    /// # Errors
    /// [`AuthConfigError`] when a key or the credentials file cannot be read.
    pub fn from_config(config: &ServerConfig) -> Result<Auth, AuthConfigError> {
        let mut api_keys: Vec<String> = config
            .api_keys
            .iter()
            .filter(|k| !k.is_empty())
            .cloned()
            .collect();
        let secret = match (&config.jwt_secret, config.is_dev_mode()) {
            (Some(s), _) => Some(s.clone()),
            (None, true) => {
                let path = config
                    .dev_credentials_file
                    .clone()
                    .unwrap_or_else(default_dev_credentials_path);
                let creds = DevCredentials::load_or_create(&path)?;
                api_keys.push(creds.api_key);
                Some(creds.jwt_secret)
            }
            (None, false) => None,
        };
        let mut auth = match secret {
            Some(s) => Auth::hs256(s.as_bytes())?,
            None => Auth::empty(),
        };
        if let Some(path) = &config.jwt_public_key {
            let pem = std::fs::read(path).map_err(|source| AuthConfigError::ReadKey {
                path: path.clone(),
                source,
            })?;
            let key = DecodingKey::from_rsa_pem(&pem).map_err(|e| AuthConfigError::BadKey {
                path: path.clone(),
                reason: e.to_string(),
            })?;
            auth.rs = Some(key);
        }
        auth.issuer = config.jwt_issuer.clone();
        auth.audience = config.jwt_audience.clone();
        auth.leeway = config.jwt_leeway;
        auth.api_keys = api_keys.into_iter().map(String::into_bytes).collect();
        auth.publish_keys = config
            .publish_api_keys
            .iter()
            .filter(|k| !k.is_empty())
            .map(|k| k.clone().into_bytes())
            .collect();
        Ok(auth)
    }

    fn empty() -> Auth {
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

/// Mints a token as `agentwire-server token` does: signed with `--jwt-secret`, or else
/// with the development secret (the file is created when missing, so a server started
/// later accepts the token too).
///
/// # Errors
/// [`crate::ServerError`] for an invalid user id or unreadable credentials.
pub fn mint_token(args: &crate::config::TokenArgs) -> Result<String, crate::ServerError> {
    let user = UserId::new(&args.user)?;
    let secret = match &args.jwt_secret {
        Some(s) => s.clone(),
        None => {
            let path = args
                .dev_credentials_file
                .clone()
                .unwrap_or_else(default_dev_credentials_path);
            DevCredentials::load_or_create(&path)?.jwt_secret
        }
    };
    Ok(mint_hs256(
        secret.as_bytes(),
        &user,
        Duration::from_secs(args.ttl_secs),
        args.jwt_issuer.as_deref(),
        args.jwt_audience.as_deref(),
    )?)
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

/// The development secret and API key, generated once and kept in a file so that
/// `agentwire-server token` (another process) mints tokens the running server accepts.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DevCredentials {
    /// The HS256 secret.
    pub jwt_secret: String,
    /// The admin API key.
    pub api_key: String,
}

impl fmt::Debug for DevCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DevCredentials { .. }")
    }
}

impl DevCredentials {
    /// Fresh random credentials.
    pub fn generate() -> Self {
        DevCredentials {
            jwt_secret: random_hex(),
            api_key: random_hex(),
        }
    }

    /// Reads the credentials at `path`, or generates them and writes them there (mode
    /// 0600, parent directories created). Two processes racing to create the file agree:
    /// the loser reads what the winner wrote.
    ///
    /// # Errors
    /// [`AuthConfigError::DevCredentials`] when the file cannot be read, parsed or written.
    pub fn load_or_create(path: &Path) -> Result<DevCredentials, AuthConfigError> {
        let fail = |source: std::io::Error| AuthConfigError::DevCredentials {
            path: path.to_owned(),
            source,
        };
        match std::fs::read(path) {
            Ok(bytes) => return parse_credentials(&bytes).map_err(fail),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(fail(e)),
        }
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(fail)?;
        }
        let creds = DevCredentials::generate();
        let json = serde_json::to_vec_pretty(&creds)
            .map_err(|e| fail(std::io::Error::other(e.to_string())))?;
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        match options.open(path) {
            Ok(mut file) => {
                use std::io::Write;
                file.write_all(&json).map_err(fail)?;
                file.sync_all().map_err(fail)?;
                Ok(creds)
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                // Another process created it first; give it a moment to finish writing.
                for _ in 0..50 {
                    if let Ok(c) = std::fs::read(path).and_then(|b| parse_credentials(&b)) {
                        return Ok(c);
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                std::fs::read(path)
                    .and_then(|b| parse_credentials(&b))
                    .map_err(fail)
            }
            Err(e) => Err(fail(e)),
        }
    }
}

fn parse_credentials(bytes: &[u8]) -> std::io::Result<DevCredentials> {
    let creds: DevCredentials = serde_json::from_slice(bytes).map_err(|e| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("not a credentials file: {e}"),
        )
    })?;
    if creds.jwt_secret.is_empty() || creds.api_key.is_empty() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "empty secret or API key",
        ));
    }
    Ok(creds)
}

fn random_hex() -> String {
    let bytes: [u8; 32] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Where the development credentials are kept by default:
/// `$XDG_STATE_HOME/agentwire/dev-credentials.json`, else
/// `~/.local/state/agentwire/dev-credentials.json`, else the working directory.
pub fn default_dev_credentials_path() -> PathBuf {
    let state = std::env::var_os("XDG_STATE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .filter(|v| !v.is_empty())
                .map(|h| PathBuf::from(h).join(".local").join("state"))
        });
    match state {
        Some(dir) => dir.join("agentwire").join("dev-credentials.json"),
        None => PathBuf::from("agentwire-dev-credentials.json"),
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

    #[test]
    fn api_keys_compare_exactly() {
        let mut auth = Auth::hs256(b"s").expect("auth");
        assert!(!auth.check_api_key("k1"));
        auth.api_keys = vec![b"k1".to_vec(), b"k2".to_vec()];
        assert!(auth.check_api_key("k2"));
        assert!(!auth.check_api_key("k"));
        assert!(!auth.check_api_key("k22"));
        assert!(!auth.check_api_key(""));
    }

    #[test]
    fn api_keys_have_a_scope_and_an_identity() {
        let mut auth = Auth::hs256(b"s").expect("auth");
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

    #[test]
    fn dev_credentials_are_created_once_and_reused() {
        let dir = std::env::temp_dir().join(format!(
            "agentwire-auth-test-{}-{}",
            std::process::id(),
            random_hex()
        ));
        let path = dir.join("nested").join("creds.json");
        let a = DevCredentials::load_or_create(&path).expect("create");
        let b = DevCredentials::load_or_create(&path).expect("read");
        assert_eq!(a, b);
        assert_eq!(format!("{a:?}"), "DevCredentials { .. }");
        let _ = std::fs::remove_dir_all(dir);
    }
}
