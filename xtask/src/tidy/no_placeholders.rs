//! Tidy rule `no_placeholders`: no unfinished code, debug prints or ignored tests are
//! committed — `todo!(`, `dbg!(`, `unimplemented!(`, `#[ignore` — anywhere outside
//! `xtask/`, whose own sources have to name them.

use std::path::{Component, Path};

use super::{Violation, rust_files};

/// Name of this rule in violations and in `RULES`.
pub(super) const NAME: &str = "no_placeholders";

/// Each forbidden text and what to do instead. Built with `concat!` so that this file
/// would not match even if xtask were not skipped.
const NEEDLES: &[(&str, &str)] = &[
    (
        concat!("todo", "!("),
        "unfinished code: finish it or return an error",
    ),
    (
        concat!("unimplemented", "!("),
        "unfinished code: finish it or return an error",
    ),
    (concat!("dbg", "!("), "debug print: remove it"),
    (
        concat!("#[", "ignore"),
        "ignored test: fix it, or delete it and say why in the issue",
    ),
];

/// Every line of every `.rs` file outside `root/xtask/` that holds a forbidden text; a
/// line with two different ones is reported twice.
pub(super) fn no_placeholders(root: &Path) -> Vec<Violation> {
    let (files, mut violations) = rust_files(root, NAME);
    for file in files {
        if file.path.components().next() == Some(Component::Normal("xtask".as_ref())) {
            continue;
        }
        for (index, line) in file.text.lines().enumerate() {
            for (needle, advice) in NEEDLES {
                if line.contains(needle) {
                    violations.push(Violation {
                        path: file.path.clone(),
                        line: index + 1,
                        rule: NAME,
                        message: format!("`{needle}` found: {advice}"),
                    });
                }
            }
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
    fn passes_on_clean_code_and_skips_xtask() {
        let dir = TempDir::new();
        dir.write("crates/a/src/lib.rs", "//! A.\nfn todo_list() {}\n");
        dir.write(
            "xtask/src/main.rs",
            &format!(
                "//! xtask names them.\nfn f() {{ {}) }}\n",
                concat!("todo", "!(")
            ),
        );
        assert_eq!(no_placeholders(dir.path()), []);
    }

    #[test]
    fn fails_on_each_placeholder_with_its_line() {
        let dir = TempDir::new();
        let text = format!(
            "//! A.\nfn f() {{\n    {}\"x\");\n}}\n{}]\nfn g() {{ {}) }}\n",
            concat!("dbg", "!("),
            concat!("#[", "ignore"),
            concat!("unimplemented", "!("),
        );
        dir.write("crates/a/src/lib.rs", &text);
        dir.write(
            "tests/tests/b.rs",
            &format!("//! B.\n\nfn h() {{ {}) }}\n", concat!("todo", "!(")),
        );
        let places: Vec<(PathBuf, usize, &str)> = no_placeholders(dir.path())
            .into_iter()
            .map(|v| (v.path, v.line, v.rule))
            .collect();
        assert_eq!(
            places,
            [
                (PathBuf::from("crates/a/src/lib.rs"), 3, NAME),
                (PathBuf::from("crates/a/src/lib.rs"), 5, NAME),
                (PathBuf::from("crates/a/src/lib.rs"), 6, NAME),
                (PathBuf::from("tests/tests/b.rs"), 3, NAME),
            ]
        );
    }
}
