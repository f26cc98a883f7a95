//! Tidy rule `no_legacy_names`: no code in the workspace uses a legacy name or old module
//! path (whole words: `UnifiedWebSocketManager` is no use of the old manager name). They
//! may appear only where they are defined or described: the facade's legacy module, the
//! xtask legacy table and the tools built on it, `docs/migration.md` and the fixture
//! (neither of which is a `.rs` file this walk reads).

use std::path::{Path, PathBuf};

use super::{Violation, rust_files};
use crate::legacy::find_legacy;

/// Name of this rule in violations and in `RULES`.
pub(super) const NAME: &str = "no_legacy_names";

/// Path prefixes allowed to name legacy items.
const ALLOWED: &[&str] = &["crates/agentwire/src/legacy.rs", "xtask/src/legacy/"];

/// Every legacy name or path in a `.rs` file outside `ALLOWED`, at its line.
pub(super) fn no_legacy_names(root: &Path) -> Vec<Violation> {
    let (files, mut violations) = rust_files(root, NAME);
    for file in files {
        let path = file.path.to_string_lossy().replace('\\', "/");
        if ALLOWED.iter().any(|allowed| path.starts_with(allowed)) {
            continue;
        }
        for finding in find_legacy(&file.text) {
            violations.push(Violation {
                path: PathBuf::from(&file.path),
                line: finding.line,
                rule: NAME,
                message: format!(
                    "legacy `{}`: use {} (see docs/migration.md, or run `cargo xtask migrate <dir> --fix`)",
                    finding.old, finding.new
                ),
            });
        }
    }
    violations
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::legacy::LEGACY_ITEMS;
    use crate::test_support::TempDir;

    #[test]
    fn flags_legacy_names_and_paths_with_file_and_line() {
        let dir = TempDir::new();
        let item = LEGACY_ITEMS[0];
        dir.write(
            "crates/a/src/lib.rs",
            &format!(
                "//! a\nuse agentwire::UnifiedWebSocketManager;\nlet m: {} = x;\nuse agentwire::{}::Y;\n",
                item.name, item.module
            ),
        );
        let violations = no_legacy_names(dir.path());
        let at: Vec<(PathBuf, usize)> = violations
            .iter()
            .map(|v| (v.path.clone(), v.line))
            .collect();
        let file = PathBuf::from("crates/a/src/lib.rs");
        assert_eq!(at, [(file.clone(), 3), (file, 4)]);
        assert!(violations[0].message.contains("UnifiedWebSocketManager"));
    }

    #[test]
    fn allowed_places_and_lookalikes_pass() {
        let dir = TempDir::new();
        let item = LEGACY_ITEMS[0];
        let legacy = format!("//! x\npub type {} = ();\n", item.name);
        dir.write("crates/agentwire/src/legacy.rs", &legacy);
        dir.write("xtask/src/legacy/mod.rs", &legacy);
        dir.write("xtask/fixtures/legacy-app/src/lib.rs", &legacy);
        dir.write(
            "crates/b/src/lib.rs",
            "//! b\nstruct UnifiedWebSocketManager;\nfn websocket_core_x() {}\n",
        );
        assert_eq!(no_legacy_names(dir.path()), []);
    }
}
