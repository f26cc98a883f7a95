//! Authentication: client tokens (JWT, HS256 and optionally RS256) and API keys with
//! their scope. Development credentials are the binary's (`src/bin/agentwire-server`): the
//! library verifies only what it is given.
//!
//! Tokens, secrets and keys never reach a log line or an error message: every `Debug` here
//! is redacted, and errors say what was wrong, never what was sent.

mod jwt;
mod keys;

pub use jwt::{Auth, AuthConfigError, AuthError, Verified, mint_hs256};
pub(crate) use keys::{KeyScope, authorize};
