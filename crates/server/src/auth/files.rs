//! Files that hold credentials — a public key, the development credentials — read only
//! when no other user can have written them, and the public keys a PEM file can hold.

use std::io::Read;
use std::path::{Path, PathBuf};

use jsonwebtoken::{Algorithm, DecodingKey};

use super::AuthConfigError;

/// Largest credentials file read, in bytes: a PEM public key or a small JSON file is far
/// smaller; anything larger is not one.
pub const MAX_CREDENTIALS_FILE_BYTES: u64 = 64 * 1024;

/// Reads a file that holds credentials (a key, a secret), refusing one that users other
/// than its owner can write — group- or world-writable, or in a directory they can write
/// without the sticky bit — since any of them could have put their own key in it.
///
/// The permissions are those of the file opened (not of the path looked up before), so a
/// file swapped in between is not read unchecked. At most
/// [`MAX_CREDENTIALS_FILE_BYTES`] are read.
///
/// # Errors
/// [`AuthConfigError::WritableByOthers`] naming the file or directory and its mode;
/// [`AuthConfigError::ReadKey`] when it cannot be read or is larger than the bound.
pub fn read_credentials_file(path: &Path) -> Result<Vec<u8>, AuthConfigError> {
    let read_error = |source: std::io::Error| AuthConfigError::ReadKey {
        path: path.to_owned(),
        source,
    };
    let file = std::fs::File::open(path).map_err(read_error)?;
    let meta = file.metadata().map_err(read_error)?;
    if let Some((path, mode)) = writable_by_others(path, &meta).map_err(read_error)? {
        return Err(AuthConfigError::WritableByOthers { path, mode });
    }
    if meta.len() > MAX_CREDENTIALS_FILE_BYTES {
        return Err(read_error(std::io::Error::other(format!(
            "larger than {MAX_CREDENTIALS_FILE_BYTES} bytes: not a credentials file"
        ))));
    }
    let mut bytes = Vec::new();
    file.take(MAX_CREDENTIALS_FILE_BYTES)
        .read_to_end(&mut bytes)
        .map_err(read_error)?;
    Ok(bytes)
}

/// Whether users other than its owner can write the file at `path` (`meta`, the metadata
/// of the file as opened, so one swapped in after the lookup is not taken unchecked):
/// group- or world-writable, or in a directory they can write without the sticky bit. The
/// answer names the file or the directory at fault and its permission bits; `None` when
/// only the owner can. Files that hold credentials or settings are refused when it is
/// `Some` (always `None` off Unix).
///
/// # Errors
/// When the directory's metadata cannot be read.
pub fn writable_by_others(
    path: &Path,
    meta: &std::fs::Metadata,
) -> std::io::Result<Option<(PathBuf, u32)>> {
    if let Some(mode) = shared_mode(meta) {
        return Ok(Some((path.to_owned(), mode)));
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty())
        && let Some(mode) = shared_mode(&std::fs::metadata(dir)?)
    {
        return Ok(Some((dir.to_owned(), mode)));
    }
    Ok(None)
}

/// The permission bits of `meta` when users other than its owner can write it.
#[cfg(unix)]
fn shared_mode(meta: &std::fs::Metadata) -> Option<u32> {
    use std::os::unix::fs::PermissionsExt;
    const GROUP_OR_OTHER_WRITE: u32 = 0o022;
    const STICKY: u32 = 0o1000;
    let mode = meta.permissions().mode() & 0o7777;
    // A sticky directory (`/tmp`) lets others add files but not replace this one.
    let shared = mode & GROUP_OR_OTHER_WRITE != 0 && !(meta.is_dir() && mode & STICKY != 0);
    shared.then_some(mode)
}

#[cfg(not(unix))]
fn shared_mode(_meta: &std::fs::Metadata) -> Option<u32> {
    None
}

/// The public key in the PEM file at `path` and the one algorithm it verifies: RSA →
/// RS256, EC P-256 → ES256, Ed25519 → EdDSA.
pub(super) fn public_key_file(path: &Path) -> Result<(Algorithm, DecodingKey), AuthConfigError> {
    let pem = read_credentials_file(path)?;
    public_key_pem(&pem).map_err(|reason| AuthConfigError::BadKey {
        path: path.to_owned(),
        reason,
    })
}

fn public_key_pem(pem: &[u8]) -> Result<(Algorithm, DecodingKey), String> {
    // Each parser accepts only its own key type, so the first that does names the key.
    let rsa = match DecodingKey::from_rsa_pem(pem) {
        Ok(key) => return Ok((Algorithm::RS256, key)),
        Err(e) => e,
    };
    if let Ok(key) = DecodingKey::from_ec_pem(pem) {
        return Ok((Algorithm::ES256, key));
    }
    if let Ok(key) = DecodingKey::from_ed_pem(pem) {
        return Ok((Algorithm::EdDSA, key));
    }
    Err(rsa.to_string())
}

#[cfg(all(test, unix))]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn temp_dir(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "agentwire-auth-files-{}-{name}-{}",
            std::process::id(),
            jsonwebtoken::get_current_timestamp()
        ));
        std::fs::create_dir_all(&dir).expect("temp dir");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).expect("chmod");
        dir
    }

    /// Issue 14: a credentials file others can write is refused, and so is one in a
    /// directory others can write.
    #[test]
    fn files_others_can_write_are_refused() {
        let dir = temp_dir("perms");
        let file = dir.join("key.pem");
        std::fs::write(&file, b"content").expect("write");
        for (mode, ok) in [
            (0o600, true),
            (0o644, true),
            (0o400, true),
            (0o620, false),
            (0o602, false),
            (0o666, false),
        ] {
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(mode)).expect("chmod");
            let got = read_credentials_file(&file);
            assert_eq!(got.is_ok(), ok, "mode {mode:o}: {got:?}");
            if let Err(e) = got {
                assert!(
                    matches!(e, AuthConfigError::WritableByOthers { mode: m, .. } if m == mode),
                    "{e}"
                );
                let text = e.to_string();
                assert!(
                    text.contains("chmod go-w") && text.contains("key.pem"),
                    "{text}"
                );
                assert!(!text.contains("content"), "{text}");
            }
        }
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).expect("chmod");
        assert!(matches!(
            read_credentials_file(&file),
            Err(AuthConfigError::WritableByOthers { .. })
        ));
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o1777)).expect("chmod");
        assert!(read_credentials_file(&file).is_ok(), "a sticky directory");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn missing_and_oversized_files_say_so() {
        let dir = temp_dir("size");
        let missing = read_credentials_file(&dir.join("none"));
        assert!(matches!(missing, Err(AuthConfigError::ReadKey { .. })));
        let big = dir.join("big");
        std::fs::write(&big, vec![b'a'; 70_000]).expect("write");
        let e = read_credentials_file(&big).expect_err("too large");
        assert!(e.to_string().contains("larger than"), "{e}");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn a_pem_file_names_its_algorithm() {
        assert!(public_key_pem(b"not a key").is_err());
        let ed = b"-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEAE7h4zbvqoyPWLjeCc/3NW7+Xm7dqpxYTwZPAPxUl61o=\n-----END PUBLIC KEY-----\n";
        assert_eq!(public_key_pem(ed).map(|k| k.0), Ok(Algorithm::EdDSA));
    }
}
