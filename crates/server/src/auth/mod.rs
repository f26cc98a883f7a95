//! Authentication: client tokens (JWT: HS256 with a secret; RS256, ES256 or EdDSA with a
//! PEM public key or the keys of a JWKS URL), the carriers a handshake brings them in, and
//! API keys with their scope. Development credentials are the binary's
//! (`src/bin/agentwire-server`): the library verifies only what it is given, and outside
//! development mode refuses secrets and keys too short to resist guessing.
//!
//! Tokens, secrets and keys never reach a log line or an error message: every `Debug` here
//! is redacted, and errors say what was wrong, never what was sent.
//!
//! Files, top to bottom: `carrier` (a handshake's token and the answer to its refusal) →
//! `jwt` (the verifier) → `keys` (API keys), `jwks` (the fetched key set), `files` (key
//! files) → `error`.

mod carrier;
mod error;
mod files;
mod jwks;
mod jwt;
mod keys;

pub(crate) use carrier::authenticate_handshake;
pub use error::{AuthConfigError, AuthError};
pub use files::{MAX_CREDENTIALS_FILE_BYTES, read_credentials_file, writable_by_others};
pub use jwks::{
    DEFAULT_JWKS_MAX_BYTES, DEFAULT_JWKS_MAX_KEYS, DEFAULT_JWKS_MIN_REFRESH_INTERVAL,
    DEFAULT_JWKS_REFRESH_INTERVAL, DEFAULT_JWKS_TIMEOUT, JwksSettings,
};
pub use jwt::{Auth, DEFAULT_MAX_TOKEN_BYTES, MIN_SECRET_BYTES, TokenReport, Verified, mint_hs256};
pub use keys::MIN_API_KEY_CHARS;
pub(crate) use keys::{ApiKey, KeyScope, authorize};
