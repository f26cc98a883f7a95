//! Tidy: repository rules that no compiler or linter checks, run by `cargo xtask tidy`,
//! as the last step of `cargo xtask check`, and as a `#[test]` so plain `cargo test`
//! enforces them.
//!
//! Every rule is a pure function over a directory, `fn rule(root: &Path) -> Vec<Violation>`:
//! it reads files under `root` and never runs cargo, so each one is unit-tested on a
//! temporary directory.
//!
//! To add a rule: write `tidy/<rule>.rs` with a `NAME` constant and the rule function,
//! unit-test it on a temp dir that passes and one that fails, and add a `Rule` to `RULES`.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Result, bail};

mod critical_events;
mod migration_doc;
mod module_docs;
mod module_layers;
mod no_legacy_names;
mod no_placeholders;
mod operations_doc;
mod protocol_no_io;

/// A tidy rule: its name and the function that checks a directory against it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Rule {
    /// Name printed in each violation, `snake_case`, the same as the function's.
    pub(crate) name: &'static str,
    /// One line on what the rule demands, for `cargo xtask help`.
    pub(crate) summary: &'static str,
    /// Checks the directory tree at the given root; reads files, never runs cargo.
    pub(crate) check: fn(&Path) -> Vec<Violation>,
}

/// Every tidy rule, in the order they run.
pub(crate) const RULES: &[Rule] = &[
    Rule {
        name: module_docs::NAME,
        summary: "every .rs file opens with a `//!` doc saying what it is",
        check: module_docs::module_docs,
    },
    Rule {
        name: module_layers::NAME,
        summary: "no import cycle between a crate's modules (or a folder's files); imports follow the layers of docs/architecture.md",
        check: module_layers::module_layers,
    },
    Rule {
        name: no_placeholders::NAME,
        summary: "no todo!/dbg!/unimplemented!/#[ignore] outside xtask/",
        check: no_placeholders::no_placeholders,
    },
    Rule {
        name: protocol_no_io::NAME,
        summary: "crates/protocol depends on no I/O or async-runtime crate",
        check: protocol_no_io::protocol_no_io,
    },
    Rule {
        name: no_legacy_names::NAME,
        summary: "no legacy name or old module path outside the legacy module, table and docs",
        check: no_legacy_names::no_legacy_names,
    },
    Rule {
        name: critical_events::NAME,
        summary: "the five critical event names appear exactly in protocol, emitter, bridge, docs",
        check: critical_events::critical_events,
    },
    Rule {
        name: migration_doc::NAME,
        summary: "docs/migration.md has a row for every legacy item with its replacement",
        check: migration_doc::migration_doc,
    },
    Rule {
        name: operations_doc::NAME,
        summary: "docs/operations.md names every long option of agentwire-server --help",
        check: operations_doc::operations_doc,
    },
];

pub(crate) use crate::violation::Violation;

/// Runs every rule on `root` and returns all violations, rule by rule.
pub(crate) fn check_all(root: &Path) -> Vec<Violation> {
    RULES.iter().flat_map(|rule| (rule.check)(root)).collect()
}

/// `cargo xtask tidy`: runs every rule on `root` and prints each violation.
///
/// # Errors
/// If any rule is broken.
pub(crate) fn run(root: &Path) -> Result<()> {
    let violations = check_all(root);
    for violation in &violations {
        println!("{violation}");
    }
    if !violations.is_empty() {
        bail!(
            "tidy found {} violation(s): fix each `path:line: rule: message` printed above",
            violations.len()
        );
    }
    println!("tidy: {} rules, no violations", RULES.len());
    Ok(())
}

/// Directory names never walked: build output (`target`, and `target-rel` for the release
/// builds the benchmark scripts use, both in `.gitignore`), JavaScript packages, and test
/// fixtures, which may break rules on purpose. Hidden directories (`.git`, `.cargo`) are
/// skipped too.
const SKIPPED_DIRS: &[&str] = &["target", "target-rel", "node_modules", "fixtures"];

/// A Rust source file read by `rust_files`.
#[derive(Debug)]
struct SourceFile {
    /// Path relative to the walked root.
    path: PathBuf,
    /// Whole contents.
    text: String,
}

/// Every `.rs` file under `root`, sorted by path, skipping `SKIPPED_DIRS` and hidden
/// directories. A directory or file that cannot be read becomes a violation of `rule`
/// rather than being passed over in silence.
fn rust_files(root: &Path, rule: &'static str) -> (Vec<SourceFile>, Vec<Violation>) {
    let mut files = Vec::new();
    let mut errors = Vec::new();
    let mut pending = vec![root.to_path_buf()];
    let unreadable = |path: &Path, err: std::io::Error| Violation {
        path: relative(root, path),
        line: 1,
        rule,
        message: format!("cannot read: {err}"),
    };
    while let Some(dir) = pending.pop() {
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(err) => {
                errors.push(unreadable(&dir, err));
                continue;
            }
        };
        for entry in entries {
            let entry = match entry {
                Ok(entry) => entry,
                Err(err) => {
                    errors.push(unreadable(&dir, err));
                    continue;
                }
            };
            let path = entry.path();
            let name = entry.file_name();
            let name = name.to_string_lossy();
            // `file_type` does not follow symlinks, so a link cannot make the walk loop.
            let Ok(file_type) = entry.file_type() else {
                continue;
            };
            if file_type.is_dir() {
                if !name.starts_with('.') && !SKIPPED_DIRS.contains(&name.as_ref()) {
                    pending.push(path);
                }
            } else if file_type.is_file() && name.ends_with(".rs") {
                match fs::read_to_string(&path) {
                    Ok(text) => files.push(SourceFile {
                        path: relative(root, &path),
                        text,
                    }),
                    Err(err) => errors.push(unreadable(&path, err)),
                }
            }
        }
    }
    files.sort_by(|a, b| a.path.cmp(&b.path));
    (files, errors)
}

/// `path` relative to `root`, for printing.
fn relative(root: &Path, path: &Path) -> PathBuf {
    path.strip_prefix(root).unwrap_or(path).to_path_buf()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::TempDir;

    /// The repository itself obeys every rule, so plain `cargo test` enforces tidy.
    #[test]
    fn workspace_is_tidy() {
        let root = crate::workspace::root().expect("workspace root");
        let violations = check_all(&root);
        let listing: Vec<String> = violations.iter().map(ToString::to_string).collect();
        assert!(
            violations.is_empty(),
            "tidy violations (run `cargo xtask tidy`):\n{}",
            listing.join("\n")
        );
    }

    #[test]
    fn rule_names_are_unique_snake_case() {
        for (i, rule) in RULES.iter().enumerate() {
            assert!(
                rule.name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'),
                "{}",
                rule.name
            );
            assert!(
                RULES[..i].iter().all(|other| other.name != rule.name),
                "duplicate rule {}",
                rule.name
            );
        }
    }

    #[test]
    fn rust_files_skips_build_output_hidden_dirs_and_fixtures() {
        let dir = TempDir::new();
        for path in [
            "src/lib.rs",
            "crates/a/src/main.rs",
            "target/debug/build.rs",
            "crates/a/target/x.rs",
            "node_modules/pkg/x.rs",
            ".git/hooks/x.rs",
            "tests/fixtures/bad.rs",
            "README.md",
        ] {
            dir.write(path, "//! x\n");
        }
        let (files, errors) = rust_files(dir.path(), "test");
        let paths: Vec<PathBuf> = files.into_iter().map(|f| f.path).collect();
        assert_eq!(
            paths,
            [
                PathBuf::from("crates/a/src/main.rs"),
                PathBuf::from("src/lib.rs")
            ]
        );
        assert!(errors.is_empty(), "{errors:?}");
    }

    #[test]
    fn violation_prints_path_line_rule_message() {
        let violation = Violation {
            path: PathBuf::from("crates/a/src/lib.rs"),
            line: 3,
            rule: "some_rule",
            message: "fix it".to_owned(),
        };
        assert_eq!(
            violation.to_string(),
            "crates/a/src/lib.rs:3: some_rule: fix it"
        );
    }
}
