//! Why a token was refused ([`AuthError`]) and why the authentication settings could not be
//! loaded ([`AuthConfigError`]). Neither ever carries a token, a secret or a key.

use std::path::PathBuf;

use agentwire_protocol::IdError;

/// Why a token was refused. The message never contains the token; [`AuthError::reason`]
/// names the refusal for metrics.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    /// No token was sent.
    #[error(
        "no token: send `Authorization: Bearer <jwt>`, the `agentwire.auth.<jwt>` subprotocol, or `?token=`"
    )]
    Missing,
    /// The token is not a JWT (or its carrier is not in the form it should be); the text
    /// says what is wrong with it.
    #[error("malformed token: {0}")]
    Malformed(&'static str),
    /// The token is longer than the server accepts (`--jwt-max-bytes`).
    #[error("the token is {bytes} bytes; at most {limit} are accepted (--jwt-max-bytes)")]
    TooLarge {
        /// Its length.
        bytes: usize,
        /// The limit.
        limit: usize,
    },
    /// Two carriers (e.g. `Authorization` and `?token=`) hold different tokens: the
    /// server does not pick one.
    #[error(
        "the token in {first} differs from the one in {second}: send one token, in one carrier"
    )]
    CarriersDisagree {
        /// The first carrier.
        first: &'static str,
        /// The carrier that disagrees with it.
        second: &'static str,
    },
    /// The signature does not verify.
    #[error("bad token signature")]
    BadSignature,
    /// The token is signed with an algorithm this server does not accept; the text names
    /// it and what is accepted.
    #[error("token algorithm {0}")]
    Algorithm(String),
    /// The token's `kid` names no key of the key set (`--jwt-jwks-url`), even after the
    /// key set was fetched again (or could not be, this soon after the last fetch).
    #[error("token key id (`kid`) {0} is not in the key set of --jwt-jwks-url")]
    UnknownKey(String),
    /// The token has no `kid`, and the key set holds no single key for its algorithm.
    #[error("the token has no key id (`kid`), and the key set of --jwt-jwks-url holds {0}")]
    NoKeyId(String),
    /// No key set has been fetched from `--jwt-jwks-url` yet: the token cannot be checked
    /// now (the server answers 503; try again shortly).
    #[error("no key set has been fetched from --jwt-jwks-url yet; try again shortly")]
    KeysUnavailable,
    /// `exp` has passed (beyond the leeway).
    #[error("token expired")]
    Expired,
    /// `nbf` is in the future (beyond the leeway).
    #[error("token not valid yet: `nbf` is in the future")]
    NotYetValid,
    /// `iat` is in the future (beyond the leeway): the issuer's clock is ahead, or the
    /// token was made up.
    #[error("token issued in the future: `iat` is later than now (check the issuer's clock)")]
    IssuedInFuture,
    /// A claim is missing or wrong (`exp`, `sub`, `iss`, `aud`, or a claim of the wrong
    /// type).
    #[error("token claims: {0}")]
    Claims(String),
    /// `sub` is not a valid user id.
    #[error("token `sub` is not a valid user id: {0}")]
    Subject(IdError),
    /// A token could not be signed (no HS256 secret configured).
    #[error("cannot sign tokens: {0}")]
    Signing(String),
}

impl AuthError {
    /// The refusal's name in metrics (`agentwire_handshake_rejections_total{reason}`,
    /// `agentwire_token_refresh_refusals_total{reason}`): snake_case, one per variant.
    pub fn reason(&self) -> &'static str {
        match self {
            AuthError::Missing => "token_missing",
            AuthError::Malformed(_) => "token_malformed",
            AuthError::TooLarge { .. } => "token_too_large",
            AuthError::CarriersDisagree { .. } => "token_carriers_disagree",
            AuthError::BadSignature => "token_signature",
            AuthError::Algorithm(_) => "token_algorithm",
            AuthError::UnknownKey(_) | AuthError::NoKeyId(_) => "token_unknown_key",
            AuthError::KeysUnavailable => "keys_unavailable",
            AuthError::Expired => "token_expired",
            AuthError::NotYetValid => "token_not_yet_valid",
            AuthError::IssuedInFuture => "token_issued_in_future",
            AuthError::Claims(_) => "token_claims",
            AuthError::Subject(_) => "token_subject",
            AuthError::Signing(_) => "signing",
        }
    }
}

/// Why the authentication settings could not be loaded. The message says what to set and
/// never shows a secret or a key.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuthConfigError {
    /// A key or credentials file could not be read.
    #[error("cannot read {path}: {source}")]
    ReadKey {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The public key is not one this server can verify with.
    #[error(
        "JWT public key {path} is not an RSA (RS256), EC P-256 (ES256) or Ed25519 (EdDSA) public key in PEM: {reason}"
    )]
    BadKey {
        /// The file.
        path: PathBuf,
        /// What the parser said.
        reason: String,
    },
    /// A file that holds credentials can be written by users other than its owner: any of
    /// them could put their own key or secret in it.
    #[error(
        "{path} can be written by users other than its owner (mode {mode:03o}), so any of them \
         could change the credentials it holds; run `chmod go-w {path}`"
    )]
    WritableByOthers {
        /// The file, or the directory it is in.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// Neither an HS256 secret, a public key nor a JWKS URL is configured: no client token
    /// could ever be verified.
    #[error(
        "no credentials to verify client tokens: set AGENTWIRE_JWT_SECRET (--jwt-secret), \
         AGENTWIRE_JWT_PUBLIC_KEY (--jwt-public-key) or AGENTWIRE_JWT_JWKS_URL \
         (--jwt-jwks-url); for development on this machine, start agentwire-server with --dev"
    )]
    NoCredentials,
    /// The HS256 secret is shorter than [`MIN_SECRET_BYTES`](crate::MIN_SECRET_BYTES).
    #[error(
        "the JWT secret (AGENTWIRE_JWT_SECRET, --jwt-secret) is {bytes} bytes long; it must be \
         at least {min} bytes: generate one with `openssl rand -hex 32`"
    )]
    ShortSecret {
        /// Its length.
        bytes: usize,
        /// The minimum.
        min: usize,
    },
    /// An API key is shorter than [`MIN_API_KEY_CHARS`](crate::MIN_API_KEY_CHARS).
    #[error(
        "API key {position} of {setting} is {chars} characters long; each must be at least \
         {min} characters: generate one with `openssl rand -hex 16`"
    )]
    ShortApiKey {
        /// Where it was given: `AGENTWIRE_API_KEYS (--api-keys)` or
        /// `AGENTWIRE_PUBLISH_API_KEYS (--publish-api-keys)`.
        setting: &'static str,
        /// Its position in that list, from 1.
        position: usize,
        /// Its length.
        chars: usize,
        /// The minimum.
        min: usize,
    },
    /// The JWKS settings cannot be used; the text says why.
    #[error("--jwt-jwks-url: {0}")]
    Jwks(String),
}
