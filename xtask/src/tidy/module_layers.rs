//! Tidy rule `module_layers`: inside each crate whose layers `docs/architecture.md`
//! documents, imports point one way.
//!
//! - No cycle between the top-level modules of a crate (`crate::a` uses `crate::b` and
//!   `crate::b` uses `crate::a`), nor between the sibling files of one folder module
//!   (`ws/reader.rs` and `ws/writer.rs` through `super::`). A folder's `mod.rs` is the
//!   folder itself: its children may use what it declares.
//! - The crate's layers are documented in a fenced block tagged `layers`, one line per
//!   crate, top layer first:
//!
//!   ```text
//!   crates/server/src: app > api, ws, demo > auth > http
//!   ```
//!
//!   a module uses only modules of the layers below its own (modules of one layer are
//!   independent of each other), and every top-level module of that crate is listed.
//!
//! An import is any `crate::…`, `super::…` or `self::…` path outside comments, in `use`
//! lines and in code alike. A file is read up to its `#[cfg(test)]` module: tests may
//! reach anywhere.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

use super::{Violation, rust_files};

/// Name of this rule in violations and in `RULES`.
pub(super) const NAME: &str = "module_layers";

/// Where the layers are documented.
const ARCHITECTURE: &str = "docs/architecture.md";

/// One documented crate: its source directory and its layers, top first.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Layers {
    src: String,
    layers: Vec<Vec<String>>,
    line: usize,
}

/// The `layers` blocks of the architecture document.
fn documented_layers(text: &str) -> Vec<Layers> {
    let mut out = Vec::new();
    let mut inside = false;
    for (i, line) in text.lines().enumerate() {
        let trimmed = line.trim();
        if trimmed.starts_with("```") {
            inside = trimmed == "```layers";
            continue;
        }
        if !inside {
            continue;
        }
        let Some((src, spec)) = trimmed.split_once(':') else {
            continue;
        };
        let layers = spec
            .split('>')
            .map(|layer| {
                layer
                    .split(',')
                    .map(|m| m.trim().to_owned())
                    .filter(|m| !m.is_empty())
                    .collect::<Vec<_>>()
            })
            .filter(|layer| !layer.is_empty())
            .collect();
        out.push(Layers {
            src: src.trim().trim_end_matches('/').to_owned(),
            layers,
            line: i + 1,
        });
    }
    out
}

/// A module's path inside its crate: `ws/reader.rs` is `["ws", "reader"]`, `ws/mod.rs`
/// `["ws"]`, `lib.rs` `[]`. `None` for files that are not modules of the library (binary
/// targets under `bin/`, `main.rs`).
fn module_path(relative: &Path) -> Option<Vec<String>> {
    let mut parts: Vec<String> = relative
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    if parts.first().is_some_and(|p| p == "bin") {
        return None;
    }
    let file = parts.pop()?;
    let stem = file.strip_suffix(".rs")?;
    match stem {
        "lib" if parts.is_empty() => {}
        "main" if parts.is_empty() => return None,
        "mod" => {}
        other => parts.push(other.to_owned()),
    }
    Some(parts)
}

/// The code of a file that counts: comments dropped, and nothing from its `#[cfg(test)]`
/// on. Each line keeps its number.
fn code_lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
    text.lines()
        .enumerate()
        .take_while(|(_, line)| line.trim() != "#[cfg(test)]")
        .map(|(i, line)| (i + 1, line.split("//").next().unwrap_or("")))
}

/// The module paths a line refers to, resolved from the module at `here`.
fn references(line: &str, here: &[String]) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    for (start, _) in line.match_indices("::") {
        // The segment just before this `::`; it starts a path only if no `::` precedes it.
        let before = &line[..start];
        let root_start = before
            .rfind(|c: char| !(c.is_alphanumeric() || c == '_'))
            .map_or(0, |i| i + 1);
        if before[..root_start].ends_with(':') {
            continue;
        }
        let root = &before[root_start..];
        let mut base: Vec<String> = match root {
            "crate" => Vec::new(),
            "self" => here.to_vec(),
            "super" => parent(here),
            _ => continue,
        };
        let mut rest = &line[start + 2..];
        // `super::super::x`.
        while let Some(more) = rest.strip_prefix("super::") {
            base = parent(&base);
            rest = more;
        }
        let names: Vec<&str> = match rest.strip_prefix('{') {
            Some(group) => group
                .split(['}', ','])
                .map(|s| s.trim().split("::").next().unwrap_or(""))
                .collect(),
            None => vec![rest.split("::").next().unwrap_or("")],
        };
        for name in names {
            let name: String = name
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() && name != "self" {
                let mut path = base.clone();
                path.push(name);
                out.push(path);
            }
        }
    }
    out
}

fn parent(path: &[String]) -> Vec<String> {
    path[..path.len().saturating_sub(1)].to_vec()
}

/// One crate's modules and the imports between them.
#[derive(Debug, Default)]
struct Crate {
    /// Every module path of the crate.
    modules: BTreeSet<Vec<String>>,
    /// (from, to) → where it happens first.
    imports: BTreeMap<(Vec<String>, Vec<String>), (PathBuf, usize)>,
}

/// The edges of a graph among `nodes`: `from` → `to` for each import of one node's module
/// (or a module inside it) to another's.
fn edges<'a>(
    krate: &'a Crate,
    group: impl Fn(&[String]) -> Option<String> + 'a,
) -> BTreeMap<(String, String), (PathBuf, usize)> {
    let mut out = BTreeMap::new();
    for ((from, to), place) in &krate.imports {
        if let (Some(a), Some(b)) = (group(from), group(to))
            && a != b
        {
            out.entry((a, b)).or_insert_with(|| place.clone());
        }
    }
    out
}

/// A cycle in `graph`, as the nodes in order, if there is one.
fn find_cycle(graph: &BTreeMap<(String, String), (PathBuf, usize)>) -> Option<Vec<String>> {
    let mut next: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (a, b) in graph.keys() {
        next.entry(a).or_default().push(b);
    }
    // Depth-first search; `stack` is the path being explored.
    fn visit<'a>(
        node: &'a str,
        next: &BTreeMap<&'a str, Vec<&'a str>>,
        stack: &mut Vec<&'a str>,
        done: &mut BTreeSet<&'a str>,
    ) -> Option<Vec<String>> {
        if let Some(at) = stack.iter().position(|n| *n == node) {
            let mut cycle: Vec<String> = stack[at..].iter().map(|s| (*s).to_owned()).collect();
            cycle.push(node.to_owned());
            return Some(cycle);
        }
        if !done.insert(node) {
            return None;
        }
        stack.push(node);
        for n in next.get(node).into_iter().flatten() {
            if let Some(c) = visit(n, next, stack, done) {
                return Some(c);
            }
        }
        stack.pop();
        None
    }
    let mut done = BTreeSet::new();
    for start in next.keys() {
        if let Some(c) = visit(start, &next, &mut Vec::new(), &mut done) {
            return Some(c);
        }
    }
    None
}

/// Every crate under `root`: each `src` directory beneath `crates/` (and `xtask/src`).
fn crates(root: &Path) -> BTreeMap<PathBuf, Crate> {
    let (files, _) = rust_files(root, NAME);
    let mut out: BTreeMap<PathBuf, Crate> = BTreeMap::new();
    let mut parsed = Vec::new();
    for file in &files {
        let mut parts = file.path.iter();
        let src: PathBuf = match (parts.next(), parts.next(), parts.next()) {
            (Some(c), Some(name), Some(s)) if c == "crates" && s == "src" => {
                Path::new(c).join(name).join(s)
            }
            (Some(x), Some(s), _) if x == "xtask" && s == "src" => Path::new(x).join(s),
            _ => continue,
        };
        let Ok(inside) = file.path.strip_prefix(&src) else {
            continue;
        };
        let Some(module) = module_path(inside) else {
            continue;
        };
        out.entry(src.clone())
            .or_default()
            .modules
            .insert(module.clone());
        parsed.push((src, module, file));
    }
    for (src, module, file) in parsed {
        let krate = out.entry(src).or_default();
        for (line_no, line) in code_lines(&file.text) {
            for target in references(line, &module) {
                // The longest prefix of the path that is a module of the crate.
                let Some(to) = (1..=target.len())
                    .rev()
                    .map(|n| target[..n].to_vec())
                    .find(|p| krate.modules.contains(p))
                else {
                    continue;
                };
                krate
                    .imports
                    .entry((module.clone(), to))
                    .or_insert_with(|| (file.path.clone(), line_no));
            }
        }
    }
    out
}

/// Checks every crate under `root` (see the module doc).
pub(super) fn module_layers(root: &Path) -> Vec<Violation> {
    let mut violations = Vec::new();
    let documented = fs::read_to_string(root.join(ARCHITECTURE))
        .map(|t| documented_layers(&t))
        .unwrap_or_default();
    let all = crates(root);
    for doc in &documented {
        let src = PathBuf::from(&doc.src);
        let Some(krate) = all.get(&src) else {
            violations.push(Violation {
                path: PathBuf::from(ARCHITECTURE),
                line: doc.line,
                rule: NAME,
                message: format!("no Rust modules under {}", doc.src),
            });
            continue;
        };
        // Top-level modules.
        let top = edges(krate, |m| m.first().cloned());
        if let Some(cycle) = find_cycle(&top) {
            let (path, line) = top[&(cycle[0].clone(), cycle[1].clone())].clone();
            violations.push(Violation {
                path,
                line,
                rule: NAME,
                message: format!(
                    "modules of {} import each other in a circle: {}; move what they share \
                     into a module below both",
                    src.display(),
                    cycle.join(" → ")
                ),
            });
        }
        // Sibling files of each folder.
        let folders: BTreeSet<Vec<String>> = krate
            .modules
            .iter()
            .filter(|m| m.len() > 1)
            .map(|m| parent(m))
            .collect();
        for folder in folders {
            let inside = |m: &[String]| {
                (m.len() > folder.len() && m[..folder.len()] == folder[..])
                    .then(|| m[folder.len()].clone())
            };
            let siblings = edges(krate, inside);
            if let Some(cycle) = find_cycle(&siblings) {
                let (path, line) = siblings[&(cycle[0].clone(), cycle[1].clone())].clone();
                violations.push(Violation {
                    path,
                    line,
                    rule: NAME,
                    message: format!(
                        "files of {}/{} import each other in a circle: {}; move what they \
                         share into a file below both (or into the folder's mod.rs)",
                        src.display(),
                        folder.join("/"),
                        cycle.join(" → ")
                    ),
                });
            }
        }
        // Documented layers.
        let rank: BTreeMap<&str, usize> = doc
            .layers
            .iter()
            .enumerate()
            .flat_map(|(i, layer)| layer.iter().map(move |m| (m.as_str(), i)))
            .collect();
        for module in krate.modules.iter().filter(|m| m.len() == 1) {
            if !rank.contains_key(module[0].as_str()) {
                violations.push(Violation {
                    path: PathBuf::from(ARCHITECTURE),
                    line: doc.line,
                    rule: NAME,
                    message: format!(
                        "module `{}` of {} is in no documented layer: add it to the line",
                        module[0],
                        src.display()
                    ),
                });
            }
        }
        for ((from, to), (path, line)) in &top {
            let (Some(a), Some(b)) = (rank.get(from.as_str()), rank.get(to.as_str())) else {
                continue;
            };
            if a >= b {
                let why = if a == b { "beside it" } else { "above it" };
                violations.push(Violation {
                    path: path.clone(),
                    line: *line,
                    rule: NAME,
                    message: format!(
                        "`{from}` uses `{to}`, which is {why} in the layers of {} \
                         ({ARCHITECTURE}): imports point down only",
                        src.display()
                    ),
                });
            }
        }
    }
    violations
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::TempDir;

    const DOC: &str = "# Architecture\n\n```layers\ncrates/c/src: app > api, ws > http\n```\n";

    fn layered_crate(dir: &TempDir) {
        dir.write(ARCHITECTURE, DOC);
        dir.write(
            "crates/c/src/lib.rs",
            "//! c\nmod api;\nmod app;\nmod http;\nmod ws;\n",
        );
        dir.write(
            "crates/c/src/app/mod.rs",
            "//! app\nmod server;\nuse crate::api::Thing;\n",
        );
        dir.write(
            "crates/c/src/app/server.rs",
            "//! s\nuse crate::ws::{handshake, Other};\nuse super::X;\nfn f() { crate::http::g() }\n",
        );
        dir.write(
            "crates/c/src/api/mod.rs",
            "//! api\nuse crate::http::Error;\n",
        );
        dir.write(
            "crates/c/src/ws/mod.rs",
            "//! ws\npub(crate) mod handshake;\nmod reader;\n",
        );
        dir.write(
            "crates/c/src/ws/handshake.rs",
            "//! h\nuse super::reader::read;\n// crate::app::x in a comment\n",
        );
        dir.write(
            "crates/c/src/ws/reader.rs",
            "//! r\nuse super::Shared;\n#[cfg(test)]\nmod tests { use crate::app::Anything; use super::super::handshake; }\n",
        );
        dir.write("crates/c/src/http.rs", "//! http\n");
    }

    #[test]
    fn imports_that_point_down_pass() {
        let dir = TempDir::new();
        layered_crate(&dir);
        assert_eq!(module_layers(dir.path()), []);
    }

    #[test]
    fn an_import_up_or_beside_is_reported_where_it_is() {
        let dir = TempDir::new();
        layered_crate(&dir);
        dir.write("crates/c/src/http.rs", "//! http\nuse crate::app::State;\n");
        dir.write(
            "crates/c/src/api/mod.rs",
            "//! api\nfn f() { crate::ws::handshake::x() }\n",
        );
        let got: Vec<(PathBuf, usize, bool)> = module_layers(dir.path())
            .into_iter()
            .map(|v| (v.path, v.line, v.message.contains("imports point down")))
            .collect();
        assert!(
            got.contains(&(PathBuf::from("crates/c/src/http.rs"), 2, true)),
            "{got:?}"
        );
        assert!(
            got.contains(&(PathBuf::from("crates/c/src/api/mod.rs"), 2, true)),
            "{got:?}"
        );
    }

    #[test]
    fn a_cycle_between_modules_or_sibling_files_is_reported() {
        let dir = TempDir::new();
        dir.write(ARCHITECTURE, "```layers\ncrates/k/src: a > b > f\n```\n");
        dir.write("crates/k/src/lib.rs", "//! k\nmod a;\nmod b;\nmod f;\n");
        dir.write("crates/k/src/a.rs", "//! a\nuse crate::b::B;\n");
        dir.write(
            "crates/k/src/b.rs",
            "//! b\npub(crate) fn g() { crate::a::h() }\n",
        );
        dir.write("crates/k/src/f/mod.rs", "//! f\nmod x;\nmod y;\n");
        dir.write("crates/k/src/f/x.rs", "//! x\nuse super::y::Y;\n");
        dir.write("crates/k/src/f/y.rs", "//! y\nuse super::{x, Z};\n");
        let messages: Vec<String> = module_layers(dir.path())
            .into_iter()
            .map(|v| v.message)
            .collect();
        assert!(
            messages.iter().any(|m| m.contains("a → b → a")),
            "{messages:?}"
        );
        assert!(
            messages.iter().any(|m| m.contains("x → y → x")),
            "{messages:?}"
        );
    }

    #[test]
    fn an_undocumented_module_is_reported() {
        let dir = TempDir::new();
        layered_crate(&dir);
        dir.write(
            "crates/c/src/lib.rs",
            "//! c\nmod api;\nmod app;\nmod extra;\nmod http;\nmod ws;\n",
        );
        dir.write("crates/c/src/extra.rs", "//! extra\n");
        let v = module_layers(dir.path());
        assert_eq!(v.len(), 1, "{v:?}");
        assert!(v[0].message.contains("`extra`"), "{}", v[0].message);
        assert_eq!(v[0].path, PathBuf::from(ARCHITECTURE));
    }

    #[test]
    fn paths_are_resolved_from_the_file() {
        let here = vec!["ws".to_owned(), "reader".to_owned()];
        assert_eq!(
            references("use super::{news::X, wire};", &here),
            vec![
                vec!["ws".to_owned(), "news".to_owned()],
                vec!["ws".to_owned(), "wire".to_owned()]
            ]
        );
        assert_eq!(
            references(
                "let a = crate::http::bearer(h); super::super::app::x()",
                &here
            ),
            vec![vec!["http".to_owned()], vec!["app".to_owned()]]
        );
        assert_eq!(
            references("use std::sync::Arc;", &here),
            Vec::<Vec<String>>::new()
        );
        assert_eq!(
            module_path(Path::new("ws/mod.rs")),
            Some(vec!["ws".to_owned()])
        );
        assert_eq!(module_path(Path::new("bin/tool/main.rs")), None);
        assert_eq!(module_path(Path::new("lib.rs")), Some(vec![]));
    }
}
