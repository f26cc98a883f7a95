//! The small part of a `Cargo.toml` that xtask needs — the package name and the
//! dependency lists — read with the `toml` crate, keeping each dependency's line for
//! messages.

use toml::Spanned;
use toml::de::{DeTable, DeValue};

/// The `[package] name = "…"` of a manifest, if it has one (and the manifest parses).
pub(crate) fn package_name(text: &str) -> Option<String> {
    let doc = DeTable::parse(text).ok()?;
    let package = doc.get_ref().get("package")?.get_ref().as_table()?;
    package.get("name")?.get_ref().as_str().map(str::to_owned)
}

/// One dependency declared in a manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Dependency {
    /// The name the dependency is declared under (the key, or the last part of a
    /// `[dependencies.name]` header).
    pub(crate) name: String,
    /// The `package = "…"` it renames, if any.
    pub(crate) package: Option<String>,
    /// Whether it is `workspace = true`, so a rename may live in the root manifest.
    pub(crate) workspace: bool,
    /// Line where it is declared.
    pub(crate) line: usize,
    /// The dependency table it is in, as written in a header: `dev-dependencies`,
    /// `target.cfg(unix).dependencies`, `workspace.dependencies`.
    pub(crate) table: String,
}

impl Dependency {
    /// The crate this dependency really is: the renamed package if there is one.
    pub(crate) fn crate_name(&self) -> &str {
        self.package.as_deref().unwrap_or(&self.name)
    }
}

/// Table names that hold dependencies; the underscore forms are Cargo's legacy spellings.
const DEPENDENCY_TABLES: &[&str] = &[
    "dependencies",
    "dev-dependencies",
    "build-dependencies",
    "dev_dependencies",
    "build_dependencies",
];

/// Every dependency in every dependency table of `text`, in the order they are declared:
/// `[dependencies]`, `[dev-dependencies]`, `[build-dependencies]`,
/// `[target.'…'.dependencies]`, `[workspace.dependencies]`, in any TOML spelling
/// (`[dependencies.name]` tables, dotted keys, inline tables). A manifest that does not
/// parse has none (cargo reports it).
pub(crate) fn dependencies(text: &str) -> Vec<Dependency> {
    let Ok(doc) = DeTable::parse(text) else {
        return Vec::new();
    };
    let root = doc.get_ref();
    let mut deps = Vec::new();
    let mut read = |table: &DeTable<'_>, prefix: &str| {
        for kind in DEPENDENCY_TABLES {
            if let Some(list) = root_table(table, kind) {
                let name = if prefix.is_empty() {
                    (*kind).to_owned()
                } else {
                    format!("{prefix}.{kind}")
                };
                read_table(text, list, &name, &mut deps);
            }
        }
    };
    read(root, "");
    if let Some(targets) = root_table(root, "target") {
        for (cfg, target) in targets {
            if let Some(target) = target.get_ref().as_table() {
                read(target, &format!("target.{}", cfg.get_ref()));
            }
        }
    }
    if let Some(workspace) = root_table(root, "workspace")
        && let Some(list) = root_table(workspace, "dependencies")
    {
        read_table(text, list, "workspace.dependencies", &mut deps);
    }
    deps.sort_by_key(|d| d.line);
    deps
}

fn root_table<'a, 'i>(table: &'a DeTable<'i>, key: &str) -> Option<&'a DeTable<'i>> {
    table.get(key)?.get_ref().as_table()
}

/// The dependencies of one dependency table.
fn read_table(text: &str, list: &DeTable<'_>, table: &str, deps: &mut Vec<Dependency>) {
    for (name, spec) in list {
        let fields = spec.get_ref().as_table();
        let field = |key: &str| fields.and_then(|f| f.get(key)).map(Spanned::get_ref);
        deps.push(Dependency {
            name: name.get_ref().to_string(),
            package: field("package")
                .and_then(DeValue::as_str)
                .map(str::to_owned),
            workspace: field("workspace").and_then(DeValue::as_bool) == Some(true),
            line: line_of(text, name.span().start),
            table: table.to_owned(),
        });
    }
}

/// The 1-based line of byte `offset` in `text`.
fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn package_name_reads_the_package_table() {
        let text = "# agentwire\n[package]\ndescription = \"x = y\"\nname = \"agentwire-protocol\" # the name\nversion.workspace = true\n";
        assert_eq!(package_name(text).as_deref(), Some("agentwire-protocol"));
    }

    #[test]
    fn package_name_ignores_names_in_other_tables() {
        let text = "[lib]\nname = \"not_this\"\n[dependencies]\nname = \"1\"\n[package]\nversion = \"1\"\nname = 'this-one'\n";
        assert_eq!(package_name(text).as_deref(), Some("this-one"));
        assert_eq!(package_name("[lib]\nname = \"x\"\n"), None);
        assert_eq!(package_name(""), None);
    }

    #[test]
    fn dependencies_reads_every_table_and_rename() {
        let text = "\
[package]
name = \"p\"

[dependencies]
serde.workspace = true
rt = { package = \"tokio\", version = \"1\" }
plain = \"1\"

[target.'cfg(unix)'.dev-dependencies]
\"quoted\" = { workspace = true }

[build-dependencies.alias]
version = \"1\"
package = \"real\"

[workspace.dependencies]
ws = { version = \"1\", package = \"ws-real\" }
";
        let got: Vec<(String, Option<String>, bool, usize, String)> = dependencies(text)
            .into_iter()
            .map(|d| (d.name, d.package, d.workspace, d.line, d.table))
            .collect();
        let own = |s: &str| s.to_owned();
        assert_eq!(
            got,
            vec![
                (own("serde"), None, true, 5, own("dependencies")),
                (own("rt"), Some(own("tokio")), false, 6, own("dependencies")),
                (own("plain"), None, false, 7, own("dependencies")),
                (
                    own("quoted"),
                    None,
                    true,
                    10,
                    own("target.cfg(unix).dev-dependencies")
                ),
                (
                    own("alias"),
                    Some(own("real")),
                    false,
                    12,
                    own("build-dependencies")
                ),
                (
                    own("ws"),
                    Some(own("ws-real")),
                    false,
                    17,
                    own("workspace.dependencies")
                ),
            ]
        );
    }

    #[test]
    fn spellings_toml_allows_are_read_too() {
        let text = "[dependencies]\nrt = {\n  package = \"tokio\",\n  version = \"1\" }\n\n[dependencies.a]\npackage = \"b\" # trailing\n";
        let got: Vec<(String, Option<String>, usize)> = dependencies(text)
            .into_iter()
            .map(|d| (d.name, d.package, d.line))
            .collect();
        assert_eq!(
            got,
            vec![
                ("rt".to_owned(), Some("tokio".to_owned()), 2),
                ("a".to_owned(), Some("b".to_owned()), 6),
            ]
        );
        assert!(dependencies("[dependencies\nbroken").is_empty());
    }
}
