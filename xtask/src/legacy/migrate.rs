//! `cargo xtask migrate <path> [--fix]`: reports every legacy name and old module path in
//! the Rust files under a directory with its replacement, and with `--fix` rewrites them.
//!
//! What it is not: a Rust parser. It understands `use` declarations (one tree per
//! statement, braces, `as`, `self`, globs) and, elsewhere, whole-word paths and names. That
//! covers how the old names are used; anything it cannot rewrite is still reported, and a
//! rewritten crate is built by `cargo xtask check` to prove it compiles without warnings.
//!
//! The rewrite: an import from an old module becomes an import of the replacement from the
//! crate root (duplicates dropped, `as` kept); an import of an old module is dropped and
//! the paths through it are rewritten; in code, `agentwire::<old module>::` becomes
//! `agentwire::` and each legacy name its replacement (`get_websocket_manager` becomes
//! `UnifiedWebSocketManager::global`).

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use super::{LEGACY_ITEMS, LEGACY_MODULES, find_legacy, find_word, is_ident_char, legacy_names};

/// One legacy name or path found in a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FileFinding {
    /// File, relative to the migrated directory.
    pub(crate) path: PathBuf,
    /// What was found where.
    pub(crate) finding: super::Finding,
}

impl std::fmt::Display for FileFinding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}:{}: `{}` → {}",
            self.path.display(),
            self.finding.line,
            self.finding.old,
            self.finding.new
        )
    }
}

/// `cargo xtask migrate <path> [--fix]`.
///
/// # Errors
/// Bad arguments, unreadable files, or legacy names left (without `--fix`, any found).
pub(crate) fn run(args: &[String]) -> Result<()> {
    let (dir, fix) = match args {
        [dir] => (dir, false),
        [dir, flag] | [flag, dir] if flag == "--fix" => (dir, true),
        _ => bail!("usage: cargo xtask migrate <path> [--fix]"),
    };
    let dir = Path::new(dir);
    if fix {
        let changed = fix_dir(dir)?;
        for path in &changed {
            println!("rewrote {}", path.display());
        }
        println!("migrate: rewrote {} file(s)", changed.len());
    }
    let findings = report(dir)?;
    for finding in &findings {
        println!("{finding}");
    }
    if !findings.is_empty() {
        bail!(
            "{} legacy name(s) or path(s) {}; see docs/migration.md",
            findings.len(),
            if fix {
                "left that --fix could not rewrite"
            } else {
                "found: run again with --fix to rewrite them"
            }
        );
    }
    println!("migrate: no legacy names or paths under {}", dir.display());
    Ok(())
}

/// Every `.rs` file under `dir` (skipping `target` and hidden directories), relative path
/// and contents.
fn rust_files(dir: &Path) -> Result<Vec<(PathBuf, String)>> {
    let mut files = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(current) = pending.pop() {
        for entry in
            fs::read_dir(&current).with_context(|| format!("cannot read {}", current.display()))?
        {
            let entry = entry.with_context(|| format!("cannot read {}", current.display()))?;
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            let file_type = entry.file_type()?;
            if file_type.is_dir() {
                if !name.starts_with('.') && name != "target" {
                    pending.push(path);
                }
            } else if file_type.is_file() && name.ends_with(".rs") {
                let text = fs::read_to_string(&path)
                    .with_context(|| format!("cannot read {}", path.display()))?;
                files.push((path.strip_prefix(dir).unwrap_or(&path).to_path_buf(), text));
            }
        }
    }
    files.sort();
    Ok(files)
}

/// Every legacy name and path in the Rust files under `dir`.
///
/// # Errors
/// A directory or file that cannot be read.
pub(crate) fn report(dir: &Path) -> Result<Vec<FileFinding>> {
    Ok(rust_files(dir)?
        .into_iter()
        .flat_map(|(path, text)| {
            find_legacy(&text)
                .into_iter()
                .map(move |finding| FileFinding {
                    path: path.clone(),
                    finding,
                })
        })
        .collect())
}

/// Rewrites every Rust file under `dir` that holds legacy names; returns the files changed.
///
/// # Errors
/// A file that cannot be read or written.
pub(crate) fn fix_dir(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut changed = Vec::new();
    for (path, text) in rust_files(dir)? {
        let fixed = fix_source(&text);
        if fixed != text {
            let full = dir.join(&path);
            fs::write(&full, fixed).with_context(|| format!("cannot write {}", full.display()))?;
            changed.push(path);
        }
    }
    Ok(changed)
}

/// One imported path of a `use` tree: `a::b::C as D`, `a::b` (a `self` import), `a::*`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Leaf {
    path: Vec<String>,
    alias: Option<String>,
    glob: bool,
}

impl Leaf {
    fn render(&self) -> String {
        let mut s = self.path.join("::");
        if self.glob {
            s.push_str("::*");
        }
        if let Some(alias) = &self.alias {
            s.push_str(" as ");
            s.push_str(alias);
        }
        s
    }
}

/// A `use` declaration: where it is and what it imports.
#[derive(Debug)]
struct UseDecl {
    /// Byte range of the whole declaration, from its first line's start to the `;`.
    start: usize,
    end: usize,
    /// Indentation and visibility before `use`.
    prefix: String,
    leaves: Vec<Leaf>,
}

/// Splits a use tree into tokens: identifiers, `::`, `{`, `}`, `,`, `*`.
fn tokens(tree: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut chars = tree.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        if c.is_whitespace() {
            continue;
        }
        if is_ident_char(c) {
            let mut end = i + c.len_utf8();
            while let Some((j, d)) = chars.peek().copied() {
                if !is_ident_char(d) {
                    break;
                }
                end = j + d.len_utf8();
                chars.next();
            }
            out.push(tree[i..end].to_owned());
        } else if c == ':' {
            if chars.peek().map(|(_, d)| *d) == Some(':') {
                chars.next();
            }
            out.push("::".to_owned());
        } else {
            out.push(c.to_string());
        }
    }
    out
}

/// Parses a use tree into its leaves, each with the full path from the root.
fn parse_tree(tokens: &[String], pos: &mut usize, prefix: &[String], out: &mut Vec<Leaf>) {
    let mut path = prefix.to_vec();
    loop {
        match tokens.get(*pos).map(String::as_str) {
            Some("::") => *pos += 1,
            Some("{") => {
                *pos += 1;
                loop {
                    match tokens.get(*pos).map(String::as_str) {
                        Some("}") => {
                            *pos += 1;
                            return;
                        }
                        Some(",") => *pos += 1,
                        None => return,
                        _ => parse_tree(tokens, pos, &path, out),
                    }
                }
            }
            Some("*") => {
                *pos += 1;
                out.push(Leaf {
                    path,
                    alias: None,
                    glob: true,
                });
                return;
            }
            Some(tok) if tok.chars().all(is_ident_char) => {
                // `a::{self}` imports `a` itself.
                if tok != "self" {
                    path.push(tok.to_owned());
                }
                *pos += 1;
                if tokens.get(*pos).map(String::as_str) == Some("as") {
                    let alias = tokens.get(*pos + 1).cloned();
                    *pos += 2;
                    out.push(Leaf {
                        path,
                        alias,
                        glob: false,
                    });
                    return;
                }
                if tokens.get(*pos).map(String::as_str) != Some("::") {
                    out.push(Leaf {
                        path,
                        alias: None,
                        glob: false,
                    });
                    return;
                }
            }
            _ => {
                if path.len() > prefix.len() {
                    out.push(Leaf {
                        path,
                        alias: None,
                        glob: false,
                    });
                }
                return;
            }
        }
    }
}

/// Every `use` declaration in `text` that starts a line.
fn use_decls(text: &str) -> Vec<UseDecl> {
    let mut decls = Vec::new();
    let mut line_start = 0;
    while line_start < text.len() {
        let line_end = text[line_start..]
            .find('\n')
            .map_or(text.len(), |i| line_start + i + 1);
        let line = &text[line_start..line_end];
        let trimmed = line.trim_start();
        let indent = &line[..line.len() - trimmed.len()];
        let visibility = ["pub(crate) ", "pub(super) ", "pub ", ""]
            .into_iter()
            .find(|v| trimmed.starts_with(&format!("{v}use ")));
        if let Some(visibility) = visibility {
            let tree_start = line_start + indent.len() + visibility.len() + "use ".len();
            if let Some(semi) = text[tree_start..].find(';') {
                let end = tree_start + semi + 1;
                let toks = tokens(&text[tree_start..end - 1]);
                let mut leaves = Vec::new();
                let mut pos = 0;
                while pos < toks.len() {
                    let before = pos;
                    parse_tree(&toks, &mut pos, &[], &mut leaves);
                    if pos == before {
                        pos += 1;
                    }
                }
                decls.push(UseDecl {
                    start: line_start,
                    end,
                    prefix: format!("{indent}{visibility}"),
                    leaves,
                });
                let next_line = text[end..].find('\n').map_or(text.len(), |i| end + i + 1);
                line_start = next_line;
                continue;
            }
        }
        line_start = line_end;
    }
    decls
}

/// The legacy module a path names, when it is `agentwire::<legacy module>`.
fn legacy_module(path: &[String]) -> Option<&'static str> {
    let (root, rest) = path.split_first()?;
    if root != "agentwire" {
        return None;
    }
    let joined = rest.join("::");
    LEGACY_MODULES.iter().copied().find(|m| *m == joined)
}

/// What an import from the old paths becomes.
enum Rewritten {
    /// Imports to write instead.
    Leaves(Vec<Leaf>),
    /// An old module imported under this name: drop it, rewrite the paths through it.
    Module { alias: String, module: &'static str },
    /// Not legacy.
    Unchanged,
}

fn rewrite_leaf(leaf: &Leaf) -> Rewritten {
    if let Some(module) = legacy_module(&leaf.path) {
        if leaf.glob {
            let imports: BTreeSet<&str> = LEGACY_ITEMS
                .iter()
                .filter(|i| i.module == module)
                .map(|i| i.import)
                .collect();
            return Rewritten::Leaves(
                imports
                    .into_iter()
                    .map(|import| Leaf {
                        path: vec!["agentwire".to_owned(), import.to_owned()],
                        alias: None,
                        glob: false,
                    })
                    .collect(),
            );
        }
        let alias = leaf
            .alias
            .clone()
            .or_else(|| leaf.path.last().cloned())
            .unwrap_or_default();
        return Rewritten::Module { alias, module };
    }
    let Some((name, parent)) = leaf.path.split_last() else {
        return Rewritten::Unchanged;
    };
    let Some(module) = legacy_module(parent) else {
        return Rewritten::Unchanged;
    };
    match LEGACY_ITEMS
        .iter()
        .find(|i| i.module == module && i.name == name)
    {
        Some(item) => Rewritten::Leaves(vec![Leaf {
            path: vec!["agentwire".to_owned(), item.import.to_owned()],
            alias: leaf.alias.clone(),
            glob: false,
        }]),
        None => Rewritten::Unchanged,
    }
}

/// Renders imports as one `use` declaration.
fn render_use(prefix: &str, leaves: &[Leaf]) -> String {
    match leaves {
        [one] => format!("{prefix}use {};", one.render()),
        _ => {
            let inner: Vec<String> = leaves
                .iter()
                .map(|l| {
                    let mut short = l.clone();
                    short.path.remove(0);
                    short.render()
                })
                .collect();
            format!("{prefix}use agentwire::{{{}}};", inner.join(", "))
        }
    }
}

/// Replaces every whole-word `from` that is not preceded by `::` with `to`.
fn replace_path_prefix(text: &str, from: &str, to: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut last = 0;
    for at in find_word(text, from.trim_end_matches("::")) {
        if !text[at..].starts_with(from) || text[..at].ends_with("::") {
            continue;
        }
        out.push_str(&text[last..at]);
        out.push_str(to);
        last = at + from.len();
    }
    out.push_str(&text[last..]);
    out
}

/// Replaces every whole-word `from` with `to`.
fn replace_word(text: &str, from: &str, to: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut last = 0;
    for at in find_word(text, from) {
        out.push_str(&text[last..at]);
        out.push_str(to);
        last = at + from.len();
    }
    out.push_str(&text[last..]);
    out
}

/// Rewrites code outside `use` declarations.
fn rewrite_code(code: &str, module_aliases: &[(String, &'static str)]) -> String {
    let mut code = code.to_owned();
    let mut modules: Vec<&str> = LEGACY_MODULES.to_vec();
    modules.sort_by_key(|m| std::cmp::Reverse(m.len()));
    for module in &modules {
        code = replace_path_prefix(&code, &format!("agentwire::{module}::"), "agentwire::");
    }
    for (alias, imported) in module_aliases {
        for module in &modules {
            if let Some(rest) = module.strip_prefix(imported)
                && (rest.is_empty() || rest.starts_with("::"))
            {
                code = replace_path_prefix(&code, &format!("{alias}{rest}::"), "agentwire::");
            }
        }
    }
    for (name, replacement) in legacy_names() {
        code = replace_word(&code, name, replacement);
    }
    code
}

/// `text` with every legacy import, path and name rewritten to its replacement.
pub(crate) fn fix_source(text: &str) -> String {
    let decls = use_decls(text);
    let mut seen: BTreeSet<Leaf> = decls
        .iter()
        .flat_map(|d| d.leaves.iter())
        .filter(|l| matches!(rewrite_leaf(l), Rewritten::Unchanged))
        .cloned()
        .collect();
    let mut module_aliases = Vec::new();
    let mut replacements: Vec<(usize, usize, String)> = Vec::new();
    for decl in &decls {
        let rewritten: Vec<Rewritten> = decl.leaves.iter().map(rewrite_leaf).collect();
        if rewritten.iter().all(|r| matches!(r, Rewritten::Unchanged)) {
            continue;
        }
        let mut leaves = Vec::new();
        for (leaf, r) in decl.leaves.iter().zip(rewritten) {
            match r {
                Rewritten::Unchanged => leaves.push(leaf.clone()),
                Rewritten::Module { alias, module } => module_aliases.push((alias, module)),
                Rewritten::Leaves(new) => {
                    for l in new {
                        if seen.insert(l.clone()) {
                            leaves.push(l);
                        }
                    }
                }
            }
        }
        let all_at_root = leaves.iter().all(|l| {
            l.path.first().is_some_and(|r| r == "agentwire") && l.path.len() == 2 && !l.glob
        });
        let text = if leaves.is_empty() {
            String::new()
        } else if all_at_root {
            render_use(&decl.prefix, &leaves)
        } else {
            leaves
                .iter()
                .map(|l| format!("{}use {};", decl.prefix, l.render()))
                .collect::<Vec<_>>()
                .join("\n")
        };
        replacements.push((decl.start, decl.end, text));
    }
    let mut out = String::with_capacity(text.len());
    let mut last = 0;
    for (start, end, new) in replacements {
        out.push_str(&rewrite_code(&text[last..start], &module_aliases));
        if new.is_empty() {
            // Drop the declaration's line break too.
            last = if text[end..].starts_with('\n') {
                end + 1
            } else {
                end
            };
        } else {
            out.push_str(&new);
            last = end;
        }
    }
    out.push_str(&rewrite_code(&text[last..], &module_aliases));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::TempDir;

    fn fixture_dir() -> PathBuf {
        crate::workspace::root()
            .expect("root")
            .join(super::super::fixture::FIXTURE_DIR)
    }

    /// Copies the fixture crate's sources into `dir`.
    fn copy_fixture(dir: &TempDir) {
        for (path, text) in rust_files(&fixture_dir()).expect("fixture readable") {
            dir.write(&path.to_string_lossy(), &text);
        }
    }

    #[test]
    fn the_fixture_uses_every_legacy_item_and_is_reported() {
        let findings = report(&fixture_dir()).expect("report");
        let found: BTreeSet<&str> = findings.iter().map(|f| f.finding.old).collect();
        for (name, _) in legacy_names() {
            assert!(found.contains(name), "fixture does not use {name}");
        }
        for mark in super::super::LEGACY_PATH_MARKS {
            assert!(found.contains(mark), "fixture does not use {mark}");
        }
        let first = findings[0].to_string();
        assert!(first.starts_with("src/lib.rs:"), "{first}");
        assert!(first.contains(" → "), "{first}");
    }

    #[test]
    fn fix_on_a_copy_of_the_fixture_leaves_no_legacy_name() {
        let dir = TempDir::new();
        copy_fixture(&dir);
        assert!(!report(dir.path()).expect("report").is_empty());
        let changed = fix_dir(dir.path()).expect("fix");
        assert_eq!(changed, [PathBuf::from("src/lib.rs")]);
        let left = report(dir.path()).expect("report");
        assert!(left.is_empty(), "left: {left:?}");
        let fixed = fs::read_to_string(dir.path().join("src/lib.rs")).expect("read");
        for want in [
            "UnifiedWebSocketManager::global()",
            "use agentwire::UnifiedWebSocketManager as ScopedManager;",
            "agentwire::HeartbeatPolicy::default()",
            "-> agentwire::UnifiedWebSocketManager",
        ] {
            assert!(fixed.contains(want), "{want} missing in:\n{fixed}");
        }
        // Fixing again changes nothing.
        assert!(fix_dir(dir.path()).expect("fix").is_empty());
    }

    #[test]
    fn fix_rewrites_imports_groups_aliases_and_globs() {
        let old = LEGACY_ITEMS[0];
        let src = format!(
            "use agentwire::{m}::{{self as core, {n}}};\n\
             use agentwire::{m}::*;\n\
             use std::fmt;\n\
             fn f() -> {n} {{ core::{n}::default() }}\n",
            m = old.module,
            n = old.name
        );
        let fixed = fix_source(&src);
        assert!(find_legacy(&fixed).is_empty(), "{fixed}");
        assert!(fixed.contains("use std::fmt;"), "{fixed}");
        assert!(
            fixed.contains("fn f() -> UnifiedWebSocketManager { agentwire::UnifiedWebSocketManager::default() }"),
            "{fixed}"
        );
        assert!(
            fixed.starts_with(
                "use agentwire::UnifiedWebSocketManager;\n\
                 use agentwire::{HeartbeatPolicy, UnifiedWebSocketEmitter};\n"
            ),
            "{fixed}"
        );
    }

    #[test]
    fn code_that_only_resembles_legacy_names_is_untouched() {
        let src = "use agentwire::UnifiedWebSocketManager;\n\
                   fn manager() -> UnifiedWebSocketManager { x::websocket_core_y() }\n";
        assert_eq!(fix_source(src), src);
        assert!(find_legacy(src).is_empty());
    }

    #[test]
    fn migrate_task_reports_then_fixes() {
        let dir = TempDir::new();
        copy_fixture(&dir);
        let arg = dir.path().to_string_lossy().into_owned();
        let err = run(std::slice::from_ref(&arg)).expect_err("legacy names found");
        assert!(err.to_string().contains("--fix"), "{err}");
        run(&[arg.clone(), "--fix".to_owned()]).expect("fixed");
        run(&[arg]).expect("nothing left");
        assert!(run(&[]).is_err());
    }
}
