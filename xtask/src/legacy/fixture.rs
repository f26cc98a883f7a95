//! The legacy fixture check of `cargo xtask check`: the fixture crate, which uses every
//! legacy name and old path, compiles; built again with `-D deprecated` it fails with a
//! deprecation error for every item of the table (so no alias lost its `#[deprecated]`)
//! and for nothing else; and a copy rewritten by `migrate --fix` compiles with
//! `-D warnings`.
//!
//! What it is not: a pure tidy rule — it has to run cargo. Its judgement of the compiler's
//! output ([`parse_diagnostics`], [`judge_deprecations`]) is pure and unit-tested.
//!
//! The fixture builds in its own target dir (`target/legacy-app`), so it never waits on
//! the workspace's build lock, and only its last step recompiles (`cargo rustc` passes
//! `-D deprecated` to the fixture alone, not to its dependencies).

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use super::{LEGACY_ITEMS, migrate};
use crate::violation::Violation;

/// The fixture crate, relative to the workspace root.
pub(crate) const FIXTURE_DIR: &str = "xtask/fixtures/legacy-app";

/// Where the fixture builds, relative to the workspace root.
const TARGET_DIR: &str = "target/legacy-app";

/// Where the migrated copy is written, relative to the workspace root.
const MIGRATED_DIR: &str = "target/legacy-app-migrated";

/// Name of this check in the violations it reports.
const NAME: &str = "legacy_fixture";

/// One `path:line:col: level: message` line of `--message-format short` output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Diagnostic {
    pub(crate) path: PathBuf,
    pub(crate) line: usize,
    pub(crate) level: String,
    pub(crate) message: String,
}

impl Diagnostic {
    /// The deprecated item it names, for a `use of deprecated …` diagnostic.
    pub(crate) fn deprecated_item(&self) -> Option<&str> {
        let rest = self.message.strip_prefix("use of deprecated ")?;
        let start = rest.find('`')? + 1;
        let len = rest[start..].find('`')?;
        Some(&rest[start..start + len])
    }
}

/// Every `path:line:col: level: message` line of cargo's short message format.
pub(crate) fn parse_diagnostics(output: &str) -> Vec<Diagnostic> {
    output
        .lines()
        .filter_map(|line| {
            let mut parts = line.splitn(4, ':');
            let path = parts.next()?;
            let line_no = parts.next()?.trim().parse().ok()?;
            let _column: usize = parts.next()?.trim().parse().ok()?;
            let rest = parts.next()?.trim_start();
            let (level, message) = rest.split_once(": ")?;
            if !matches!(level, "error" | "warning") {
                return None;
            }
            Some(Diagnostic {
                path: PathBuf::from(path),
                line: line_no,
                level: level.to_owned(),
                message: message.to_owned(),
            })
        })
        .collect()
}

/// Judges the `-D deprecated` build of the fixture: every table item must be reported as
/// an error at least once, and every error must be a deprecation of a table item. Returns
/// the errors counted per item and the violations, each naming a file and line (for a
/// missing item: the first line of the fixture source naming it, else its `lib.rs`).
pub(crate) fn judge_deprecations(
    diagnostics: &[Diagnostic],
    fixture_source: &str,
) -> (BTreeMap<String, usize>, Vec<Violation>) {
    let mut counts: BTreeMap<String, usize> = LEGACY_ITEMS.iter().map(|i| (i.path(), 0)).collect();
    let mut violations = Vec::new();
    let lib = PathBuf::from(FIXTURE_DIR).join("src/lib.rs");
    for d in diagnostics.iter().filter(|d| d.level == "error") {
        match d.deprecated_item().and_then(|item| counts.get_mut(item)) {
            Some(count) => *count += 1,
            None => violations.push(Violation {
                path: PathBuf::from(FIXTURE_DIR).join(&d.path),
                line: d.line,
                rule: NAME,
                message: format!(
                    "unexpected error (not a deprecated legacy item): {}",
                    d.message
                ),
            }),
        }
    }
    for item in LEGACY_ITEMS {
        if counts.get(&item.path()) == Some(&0) {
            let line = fixture_source
                .lines()
                .position(|l| !super::find_word(l, item.name).is_empty())
                .map_or(1, |i| i + 1);
            violations.push(Violation {
                path: lib.clone(),
                line,
                rule: NAME,
                message: format!(
                    "`{}` is not reported as deprecated: give it `#[deprecated(note = \"use …\")]` \
                     in crates/agentwire/src/legacy.rs, and use it in the fixture",
                    item.path()
                ),
            });
        }
    }
    (counts, violations)
}

/// Runs cargo with `args` in `root`, returning whether it succeeded and its stderr.
fn cargo(root: &Path, args: &[&str]) -> Result<(bool, String)> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| OsString::from("cargo"));
    println!("    $ cargo {}", args.join(" "));
    let output = Command::new(cargo)
        .args(args)
        .current_dir(root)
        .output()
        .with_context(|| format!("could not start `cargo {}`", args.join(" ")))?;
    Ok((
        output.status.success(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    ))
}

/// Copies the fixture to `MIGRATED_DIR` (its dependency path made absolute) and rewrites
/// it with `migrate --fix`.
fn migrated_copy(root: &Path) -> Result<PathBuf> {
    let from = root.join(FIXTURE_DIR);
    let to = root.join(MIGRATED_DIR);
    if to.exists() {
        fs::remove_dir_all(&to).with_context(|| format!("cannot clear {}", to.display()))?;
    }
    fs::create_dir_all(to.join("src"))?;
    let facade = root.join("crates/agentwire");
    let manifest = fs::read_to_string(from.join("Cargo.toml"))?.replace(
        "\"../../../crates/agentwire\"",
        &format!("{:?}", facade.display().to_string()),
    );
    fs::write(to.join("Cargo.toml"), manifest)?;
    if from.join("Cargo.lock").exists() {
        fs::copy(from.join("Cargo.lock"), to.join("Cargo.lock"))?;
    }
    fs::copy(from.join("src/lib.rs"), to.join("src/lib.rs"))?;
    migrate::fix_dir(&to)?;
    Ok(to)
}

/// The check step: see the module docs.
///
/// # Errors
/// The first failing part, with what to fix.
pub(crate) fn run(root: &Path) -> Result<()> {
    let manifest = format!("{FIXTURE_DIR}/Cargo.toml");
    let base = [
        "--manifest-path",
        manifest.as_str(),
        "--target-dir",
        TARGET_DIR,
        "--message-format",
        "short",
    ];
    let (ok, stderr) = cargo(root, &[&["build"][..], &base].concat())?;
    if !ok {
        eprint!("{stderr}");
        bail!("the legacy fixture does not compile: an old name or path stopped resolving");
    }
    let (ok, stderr) = cargo(
        root,
        &[&["rustc", "--lib"][..], &base, &["--", "-D", "deprecated"]].concat(),
    )?;
    if ok {
        bail!("the legacy fixture compiles with -D deprecated: its aliases are not deprecated");
    }
    let source = fs::read_to_string(root.join(FIXTURE_DIR).join("src/lib.rs"))?;
    let (counts, violations) = judge_deprecations(&parse_diagnostics(&stderr), &source);
    for (item, count) in &counts {
        println!("    {count} deprecation error(s): {item}");
    }
    for v in &violations {
        println!("{v}");
    }
    if !violations.is_empty() {
        bail!("{} legacy fixture violation(s) above", violations.len());
    }

    let migrated = migrated_copy(root)?;
    let left = migrate::report(&migrated)?;
    if !left.is_empty() {
        for finding in &left {
            println!("{MIGRATED_DIR}/{finding}");
        }
        bail!("`cargo xtask migrate --fix` left legacy names in the fixture");
    }
    let manifest = format!("{MIGRATED_DIR}/Cargo.toml");
    let (ok, stderr) = cargo(
        root,
        &[
            "rustc",
            "--lib",
            "--manifest-path",
            manifest.as_str(),
            "--target-dir",
            TARGET_DIR,
            "--message-format",
            "short",
            "--",
            "-D",
            "warnings",
        ],
    )?;
    if !ok {
        eprint!("{stderr}");
        bail!("the fixture rewritten by `cargo xtask migrate --fix` does not compile cleanly");
    }
    println!(
        "    {} legacy items deprecated; the migrated fixture compiles without warnings",
        counts.len()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error_for(item: &str, line: usize) -> String {
        format!(
            "src/lib.rs:{line}:5: error: use of deprecated type alias `{item}`: use `agentwire::X`\n"
        )
    }

    #[test]
    fn parses_short_diagnostics_and_skips_the_rest() {
        let out = "   Compiling legacy-app v0.1.0\n\
                   src/lib.rs:14:50: error: use of deprecated function `agentwire::a::f`: use `g`\n\
                   src/lib.rs:3:1: warning: unused import: `x`\n\
                   error: could not compile `legacy-app` (lib) due to 1 previous error\n";
        let diags = parse_diagnostics(out);
        assert_eq!(diags.len(), 2);
        assert_eq!(diags[0].line, 14);
        assert_eq!(diags[0].level, "error");
        assert_eq!(diags[0].deprecated_item(), Some("agentwire::a::f"));
        assert_eq!(diags[1].deprecated_item(), None);
    }

    #[test]
    fn every_item_deprecated_once_or_more_passes() {
        let mut out = String::new();
        for (i, item) in LEGACY_ITEMS.iter().enumerate() {
            out.push_str(&error_for(&item.path(), i + 1));
        }
        out.push_str(&error_for(&LEGACY_ITEMS[0].path(), 99));
        let (counts, violations) = judge_deprecations(&parse_diagnostics(&out), "");
        assert!(violations.is_empty(), "{violations:?}");
        assert_eq!(counts[&LEGACY_ITEMS[0].path()], 2);
        assert_eq!(counts[&LEGACY_ITEMS[1].path()], 1);
        assert_eq!(counts.len(), LEGACY_ITEMS.len());
    }

    #[test]
    fn an_item_without_its_deprecation_is_named_with_its_fixture_line() {
        let missing = LEGACY_ITEMS[3];
        let out: String = LEGACY_ITEMS
            .iter()
            .filter(|i| **i != missing)
            .map(|i| error_for(&i.path(), 1))
            .collect();
        let source = format!("//! x\n\nfn f() -> {} {{}}\n", missing.name);
        let (_, violations) = judge_deprecations(&parse_diagnostics(&out), &source);
        assert_eq!(violations.len(), 1, "{violations:?}");
        assert_eq!(violations[0].line, 3);
        assert_eq!(
            violations[0].path,
            PathBuf::from("xtask/fixtures/legacy-app/src/lib.rs")
        );
        assert!(violations[0].message.contains(&missing.path()));
    }

    #[test]
    fn other_errors_are_violations_at_their_line() {
        let mut out: String = LEGACY_ITEMS
            .iter()
            .map(|i| error_for(&i.path(), 1))
            .collect();
        out.push_str("src/lib.rs:7:3: error: cannot find type `Gone` in module `agentwire`\n");
        out.push_str(&error_for("agentwire::not_in_the_table::X", 8));
        let (_, violations) = judge_deprecations(&parse_diagnostics(&out), "");
        let lines: Vec<usize> = violations.iter().map(|v| v.line).collect();
        assert_eq!(lines, [7, 8]);
    }

    #[test]
    fn the_fixture_is_a_standalone_crate_on_the_facade() {
        let root = crate::workspace::root().expect("root");
        let manifest =
            fs::read_to_string(root.join(FIXTURE_DIR).join("Cargo.toml")).expect("manifest");
        assert!(manifest.contains("[workspace]"), "its own workspace");
        assert!(
            manifest.contains("\"../../../crates/agentwire\""),
            "{manifest}"
        );
    }
}
