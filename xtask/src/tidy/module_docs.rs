//! Tidy rule `module_docs`: every Rust file opens with a `//!` doc comment that says what
//! the file is, so a reader landing in any file knows where they are.

use std::path::Path;

use super::{Violation, rust_files};

/// Name of this rule in violations and in `RULES`.
pub(super) const NAME: &str = "module_docs";

/// Every `.rs` file under `root` whose first non-empty line does not start with `//!`.
/// The violation is reported at line 1 of the file.
pub(super) fn module_docs(root: &Path) -> Vec<Violation> {
    let (files, mut violations) = rust_files(root, NAME);
    for file in files {
        let first = file
            .text
            .lines()
            .map(str::trim)
            .find(|line| !line.is_empty());
        if !first.is_some_and(|line| line.starts_with("//!")) {
            violations.push(Violation {
                path: file.path,
                line: 1,
                rule: NAME,
                message: "file must open with a `//!` doc comment that says what it is".to_owned(),
            });
        }
    }
    violations
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::test_support::TempDir;

    #[test]
    fn passes_when_every_file_opens_with_a_module_doc() {
        let dir = TempDir::new();
        dir.write("src/lib.rs", "//! The crate.\n\nmod a;\n");
        dir.write(
            "src/a.rs",
            "\n\n//! Leading blank lines are fine.\nfn f() {}\n",
        );
        dir.write("fixtures/undocumented.rs", "fn f() {}\n");
        assert_eq!(module_docs(dir.path()), []);
    }

    #[test]
    fn fails_on_a_file_without_a_module_doc() {
        let dir = TempDir::new();
        dir.write("src/lib.rs", "//! The crate.\n");
        dir.write(
            "src/outer.rs",
            "/// An item doc is not a module doc.\nfn f() {}\n",
        );
        dir.write("src/empty.rs", "");
        let violations = module_docs(dir.path());
        let places: Vec<(PathBuf, usize, &str)> = violations
            .iter()
            .map(|v| (v.path.clone(), v.line, v.rule))
            .collect();
        assert_eq!(
            places,
            [
                (PathBuf::from("src/empty.rs"), 1, NAME),
                (PathBuf::from("src/outer.rs"), 1, NAME),
            ]
        );
    }
}
