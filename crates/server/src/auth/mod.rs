//! Authentication: client tokens (JWT, HS256 and optionally RS256), API keys with their
//! scope, and the development credentials kept in a file.
//!
//! Tokens, secrets and keys never reach a log line or an error message: every `Debug` here
//! is redacted, and errors say what was wrong, never what was sent.

mod dev;
mod jwt;
mod keys;

pub use dev::{DevCredentials, default_dev_credentials_path};
pub use jwt::{Auth, AuthConfigError, AuthError, Verified, mint_hs256};
pub(crate) use keys::{KeyScope, authorize};
