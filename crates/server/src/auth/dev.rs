//! Development credentials: a secret and an API key generated once and kept in a file, so
//! that another process (`agentwire-server token`) mints tokens the running server accepts.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::AuthConfigError;

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
