//! Where the workspace is and what is in it: the root directory and the library crates
//! under `crates/`.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow};

use crate::manifest;

/// The workspace root: the parent of xtask's own manifest directory.
pub(crate) fn root() -> Result<PathBuf> {
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest_dir.parent().map(Path::to_path_buf).ok_or_else(|| {
        anyhow!(
            "xtask manifest dir {} has no parent",
            manifest_dir.display()
        )
    })
}

/// Package names of the library crates: every directory under `root/crates/` that holds a
/// `Cargo.toml`, sorted by directory name.
///
/// # Errors
/// If `crates/` or a manifest cannot be read, or a manifest has no `[package] name`.
pub(crate) fn library_crates(root: &Path) -> Result<Vec<String>> {
    let crates_dir = root.join("crates");
    let mut dirs = Vec::new();
    for entry in fs::read_dir(&crates_dir)
        .with_context(|| format!("cannot read {}", crates_dir.display()))?
    {
        let path = entry
            .with_context(|| format!("cannot read {}", crates_dir.display()))?
            .path();
        if path.join("Cargo.toml").is_file() {
            dirs.push(path);
        }
    }
    dirs.sort();
    dirs.iter()
        .map(|dir| {
            let manifest_path = dir.join("Cargo.toml");
            let text = fs::read_to_string(&manifest_path)
                .with_context(|| format!("cannot read {}", manifest_path.display()))?;
            manifest::package_name(&text).ok_or_else(|| {
                anyhow!(
                    "{} has no `[package] name = \"…\"` line",
                    manifest_path.display()
                )
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::TempDir;

    #[test]
    fn library_crates_lists_dirs_with_a_manifest() {
        let dir = TempDir::new();
        dir.write(
            "crates/zeta/Cargo.toml",
            "[package]\nname = \"agentwire-zeta\"\n",
        );
        dir.write(
            "crates/alpha/Cargo.toml",
            "[package]\nversion = \"1\"\nname = \"agentwire-alpha\"\n",
        );
        dir.write("crates/no-manifest/README.md", "not a crate\n");
        dir.write("crates/stray.toml", "[package]\nname = \"stray\"\n");
        let crates = library_crates(dir.path()).expect("temp workspace is readable");
        assert_eq!(crates, ["agentwire-alpha", "agentwire-zeta"]);
    }

    #[test]
    fn library_crates_rejects_a_manifest_without_a_name() {
        let dir = TempDir::new();
        dir.write("crates/broken/Cargo.toml", "[lib]\nname = \"broken\"\n");
        let err = library_crates(dir.path()).expect_err("no package name");
        assert!(err.to_string().contains("has no `[package] name"), "{err}");
    }

    #[test]
    fn library_crates_needs_a_crates_dir() {
        let dir = TempDir::new();
        assert!(library_crates(dir.path()).is_err());
    }
}
