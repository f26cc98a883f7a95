//! Tidy rule `migration_doc`: `docs/migration.md` names every legacy item of the table in
//! `xtask/src/legacy/` — its old path and its replacement — so the guide cannot fall behind
//! the aliases.

use std::fs;
use std::path::{Path, PathBuf};

use super::Violation;
use crate::legacy::LEGACY_ITEMS;

/// Name of this rule in violations and in `RULES`.
pub(super) const NAME: &str = "migration_doc";

/// The migration guide, relative to the workspace root.
const GUIDE: &str = "docs/migration.md";

/// Every table item whose old path (module and name) and replacement are not written on
/// one line of the guide.
pub(super) fn migration_doc(root: &Path) -> Vec<Violation> {
    let text = match fs::read_to_string(root.join(GUIDE)) {
        Ok(text) => text,
        Err(err) => {
            return vec![Violation {
                path: PathBuf::from(GUIDE),
                line: 1,
                rule: NAME,
                message: format!("cannot read: {err}"),
            }];
        }
    };
    LEGACY_ITEMS
        .iter()
        .filter_map(|item| {
            let old = format!("{}::{}", item.module, item.name);
            let line = text.lines().position(|l| l.contains(&old));
            let row_ok = line.is_some_and(|i| {
                text.lines()
                    .nth(i)
                    .is_some_and(|l| l.contains(item.replacement))
            });
            (!row_ok).then(|| Violation {
                path: PathBuf::from(GUIDE),
                line: line.map_or(1, |i| i + 1),
                rule: NAME,
                message: format!(
                    "no table row names `{old}` with its replacement `{}`",
                    item.replacement
                ),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::TempDir;

    fn rows() -> String {
        LEGACY_ITEMS
            .iter()
            .map(|i| format!("| `{}::{}` | `{}` |\n", i.module, i.name, i.replacement))
            .collect()
    }

    #[test]
    fn a_row_per_item_passes() {
        let dir = TempDir::new();
        dir.write(GUIDE, &format!("# Migration\n\n{}", rows()));
        assert_eq!(migration_doc(dir.path()), []);
    }

    #[test]
    fn a_missing_row_or_replacement_is_reported() {
        let dir = TempDir::new();
        let text = rows();
        let mut lines: Vec<&str> = text.lines().collect();
        lines.remove(0);
        let wrong = format!(
            "| `{}::{}` | `Something` |",
            LEGACY_ITEMS[1].module, LEGACY_ITEMS[1].name
        );
        lines[0] = &wrong;
        dir.write(GUIDE, &lines.join("\n"));
        let violations = migration_doc(dir.path());
        let lines: Vec<usize> = violations.iter().map(|v| v.line).collect();
        assert_eq!(lines, [1, 1], "{violations:?}");
        assert!(violations[0].message.contains(LEGACY_ITEMS[0].name));
        assert!(violations[1].message.contains(LEGACY_ITEMS[1].name));
    }
}
