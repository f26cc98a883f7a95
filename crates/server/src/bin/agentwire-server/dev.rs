//! Development mode, which belongs to the binary alone: when it applies (`--dev`, or no
//! secret on a loopback address), the refusal to start without credentials anywhere else,
//! the warning banner, and the development credentials — a secret and an API key generated
//! once and kept in a file, so that another process (`agentwire-server token`) mints tokens
//! the running server accepts.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use agentwire_protocol::UserId;
use agentwire_server::{AuthConfigError, ServerConfig, mint_hs256, read_credentials_file};
use anyhow::{Context, bail};

use crate::cli::{ServeArgs, TokenArgs};

/// The development secret and API key, generated once and kept in a file so that
/// `agentwire-server token` (another process) mints tokens the running server accepts.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct DevCredentials {
    /// The HS256 secret.
    pub(crate) jwt_secret: String,
    /// The admin API key.
    pub(crate) api_key: String,
}

impl fmt::Debug for DevCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DevCredentials { .. }")
    }
}

impl DevCredentials {
    /// Fresh random credentials.
    pub(crate) fn generate() -> Self {
        DevCredentials {
            jwt_secret: random_hex(),
            api_key: random_hex(),
        }
    }

    /// Reads the credentials a running development server wrote at `path`, and never
    /// creates them: a tool that made up credentials of its own would mint tokens that
    /// server refuses.
    ///
    /// # Errors
    /// When the file is missing (saying where it looked and how to point at the server's),
    /// or cannot be read or parsed, or others can write it.
    pub(crate) fn load(path: &Path) -> anyhow::Result<DevCredentials> {
        match read_credentials_file(path) {
            Ok(bytes) => parse_credentials(&bytes).map_err(|source| {
                anyhow::Error::new(source)
                    .context(format!("development credentials {}", path.display()))
            }),
            Err(AuthConfigError::ReadKey { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                bail!(
                    "no development credentials at {}: start the server in development mode \
                     first (`agentwire-server`), and give this command the file it printed \
                     (--dev-credentials-file, AGENTWIRE_DEV_CREDENTIALS_FILE) when the server \
                     runs with another HOME, XDG_STATE_HOME or --dev-credentials-file; or pass \
                     the server's secret (--jwt-secret) or a token (--token)",
                    path.display()
                )
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Reads the credentials at `path`, or generates them and writes them there (mode
    /// 0600, parent directories created). Two processes racing to create the file agree:
    /// the loser reads what the winner wrote.
    ///
    /// # Errors
    /// When the file cannot be read, parsed or written, or when users other than its owner
    /// can write it or its directory (issue 14): they could put their own secret in it.
    pub(crate) fn load_or_create(path: &Path) -> anyhow::Result<DevCredentials> {
        let fail = |source: std::io::Error| {
            anyhow::Error::new(source)
                .context(format!("development credentials {}", path.display()))
        };
        match read_credentials_file(path) {
            Ok(bytes) => return parse_credentials(&bytes).map_err(fail),
            Err(AuthConfigError::ReadKey { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e.into()),
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
                    if let Ok(b) = read_credentials_file(path)
                        && let Ok(c) = parse_credentials(&b)
                    {
                        return Ok(c);
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                parse_credentials(&read_credentials_file(path)?).map_err(fail)
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
/// The credentials file: `given` (`--dev-credentials-file`), else the default path.
pub(crate) fn dev_credentials_path(given: Option<&Path>) -> PathBuf {
    given.map_or_else(default_dev_credentials_path, Path::to_path_buf)
}

pub(crate) fn default_dev_credentials_path() -> PathBuf {
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

/// The configuration to serve with: `args` as the library takes them, in development mode
/// when it applies, with the development credentials when no secret was given; and the
/// credentials file used, if any.
///
/// # Errors
/// Without a secret or public key on an address that is not loopback (and no `--dev`): the
/// error says what to set. Also when the credentials file cannot be used.
pub(crate) fn serve_config(args: &ServeArgs) -> anyhow::Result<(ServerConfig, Option<PathBuf>)> {
    let (config, used) = resolve(args, DevCredentials::load_or_create)?;
    if config.dev_mode {
        tracing::warn!(
            listen = %config.listen,
            credentials = %used.as_deref().map_or_else(|| "the configured secret".into(), |p| p.display().to_string()),
            "DEVELOPMENT MODE: POST /demo/token mints a token for any user (to loopback peers), \
             and the demo is on. Never expose this server; for production set \
             AGENTWIRE_JWT_SECRET and leave --dev off."
        );
    }
    Ok((config, used))
}

/// The configuration a server started with `args` would verify tokens with, reading the
/// development credentials it would use without creating them (`check-token`).
///
/// # Errors
/// As [`serve_config`], and when development mode applies but its credentials file is
/// missing.
pub(crate) fn check_config(args: &ServeArgs) -> anyhow::Result<ServerConfig> {
    Ok(resolve(args, DevCredentials::load)?.0)
}

fn resolve(
    args: &ServeArgs,
    credentials: impl FnOnce(&Path) -> anyhow::Result<DevCredentials>,
) -> anyhow::Result<(ServerConfig, Option<PathBuf>)> {
    let mut config = args.server_config();
    let has_credentials = config.jwt_secret.is_some()
        || config.jwt_public_key.is_some()
        || config.jwt_jwks_url.is_some();
    let loopback = config.listen.ip().is_loopback();
    if !has_credentials && !args.dev && !loopback {
        bail!(
            "refusing to start: no credentials to verify client tokens, and {} is not a \
             loopback address. Set AGENTWIRE_JWT_SECRET (--jwt-secret) or \
             AGENTWIRE_JWT_PUBLIC_KEY (--jwt-public-key) or AGENTWIRE_JWT_JWKS_URL \
             (--jwt-jwks-url), with AGENTWIRE_API_KEYS \
             (--api-keys) for publishers; or, for development only, pass --dev",
            config.listen
        );
    }
    if has_credentials && !args.dev {
        return Ok((config, None));
    }
    config.dev_mode = true;
    if has_credentials {
        return Ok((config, None));
    }
    let path = dev_credentials_path(args.dev_credentials_file.as_deref());
    let creds = credentials(&path)?;
    config.jwt_secret = Some(creds.jwt_secret);
    config.api_keys.push(creds.api_key);
    Ok((config, Some(path)))
}

/// Mints a token as `agentwire-server token` does: signed with `--jwt-secret`, or else
/// with the secret of the development credentials a running server wrote — never with new
/// ones.
///
/// # Errors
/// For an invalid user id, or when the credentials file is missing or unreadable.
pub(crate) fn mint_token(args: &TokenArgs) -> anyhow::Result<String> {
    let user = UserId::new(&args.user).context("--user")?;
    let secret = match &args.sign.jwt_secret {
        Some(s) => s.clone(),
        None => {
            DevCredentials::load(&dev_credentials_path(
                args.sign.dev_credentials_file.as_deref(),
            ))?
            .jwt_secret
        }
    };
    Ok(mint_hs256(
        secret.as_bytes(),
        &user,
        Duration::from_secs(args.ttl_secs),
        args.sign.jwt_issuer.as_deref(),
        args.sign.jwt_audience.as_deref(),
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;

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

    /// Issue 14: a development credentials file others can write is refused, saying how to
    /// fix it.
    #[cfg(unix)]
    #[test]
    fn a_credentials_file_others_can_write_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!(
            "agentwire-auth-test-{}-{}",
            std::process::id(),
            random_hex()
        ));
        let path = dir.join("creds.json");
        DevCredentials::load_or_create(&path).expect("create");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).expect("chmod");
        let e = DevCredentials::load_or_create(&path).expect_err("world-writable");
        let text = format!("{e:#}");
        assert!(text.contains("chmod go-w"), "{text}");
        let _ = std::fs::remove_dir_all(dir);
    }
}
