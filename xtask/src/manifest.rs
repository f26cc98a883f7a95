//! A line-based reader for the small part of `Cargo.toml` that xtask needs: the package
//! name and the dependency lists.
//!
//! Why not a TOML crate: xtask keeps to std plus `anyhow`, and Cargo manifests in this
//! workspace are written one key per line. The reader understands `[table]` and
//! `[[array]]` headers (quoted keys such as `target.'cfg(unix)'.dependencies` included),
//! `key = value` and `dotted.key = value` lines, `#` comments and one-line inline tables.
//! It does not understand multi-line strings or inline tables spread over several lines;
//! a line it cannot read is skipped, never fatal.

/// One meaningful line of a manifest: a table header or a `key = value` pair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Entry<'a> {
    /// 1-based line number in the file.
    pub(crate) line: usize,
    /// Path of the table this line opens or belongs to, dotted keys split and unquoted:
    /// `[target.'cfg(unix)'.dependencies]` is `["target", "cfg(unix)", "dependencies"]`.
    pub(crate) table: Vec<String>,
    /// What the line is.
    pub(crate) kind: EntryKind<'a>,
}

/// What a manifest line holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum EntryKind<'a> {
    /// The header that opens `Entry::table`.
    Header,
    /// A `key = value` line in `Entry::table`; the key split at dots and unquoted, the value
    /// raw text with the comment stripped and whitespace trimmed.
    KeyValue { key: Vec<String>, value: &'a str },
}

/// Every header and `key = value` line of `text`, in order.
pub(crate) fn entries(text: &str) -> Vec<Entry<'_>> {
    let mut table = Vec::new();
    let mut out = Vec::new();
    for (index, raw) in text.lines().enumerate() {
        let line = strip_comment(raw).trim();
        let number = index + 1;
        if let Some(header) = header_path(line) {
            table = split_dotted(header);
            out.push(Entry {
                line: number,
                table: table.clone(),
                kind: EntryKind::Header,
            });
        } else if let Some(eq) = find_outside_quotes(line, '=') {
            out.push(Entry {
                line: number,
                table: table.clone(),
                kind: EntryKind::KeyValue {
                    key: split_dotted(&line[..eq]),
                    value: line[eq + 1..].trim(),
                },
            });
        }
    }
    out
}

/// The `[package] name = "…"` of a manifest, if it has one.
pub(crate) fn package_name(text: &str) -> Option<String> {
    entries(text)
        .into_iter()
        .find_map(|entry| match entry.kind {
            EntryKind::KeyValue { key, value } if entry.table == ["package"] && key == ["name"] => {
                string_value(value).map(str::to_owned)
            }
            _ => None,
        })
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
    /// Line where it is first declared.
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

/// Every dependency in every dependency table of `text`: `[dependencies]`,
/// `[dev-dependencies]`, `[build-dependencies]`, `[target.'…'.dependencies]`,
/// `[workspace.dependencies]`, and `[dependencies.name]` style tables.
pub(crate) fn dependencies(text: &str) -> Vec<Dependency> {
    let mut deps: Vec<Dependency> = Vec::new();
    for entry in entries(text) {
        match entry.kind {
            EntryKind::Header => {
                if let Some((name, table)) = entry.table.split_last()
                    && is_dependency_table(table)
                {
                    deps.push(Dependency {
                        name: name.clone(),
                        package: None,
                        workspace: false,
                        line: entry.line,
                        table: table.join("."),
                    });
                }
            }
            EntryKind::KeyValue { key, value } => {
                if is_dependency_table(&entry.table) {
                    add_dependency_line(&mut deps, &entry.table.join("."), entry.line, &key, value);
                } else if let Some((name, table)) = entry.table.split_last()
                    && is_dependency_table(table)
                {
                    // A key inside `[dependencies.name]`: it describes that dependency.
                    let table = table.join(".");
                    if let Some(dep) = deps
                        .iter_mut()
                        .rev()
                        .find(|d| d.name == *name && d.table == table)
                    {
                        apply_key(dep, &key, value);
                    }
                }
            }
        }
    }
    deps
}

/// Records one `name = …` or `name.key = …` line of a dependency table.
fn add_dependency_line(
    deps: &mut Vec<Dependency>,
    table: &str,
    line: usize,
    key: &[String],
    value: &str,
) {
    let Some((name, rest)) = key.split_first() else {
        return;
    };
    let index = match deps
        .iter()
        .position(|d| d.name == *name && d.table == table)
    {
        Some(index) => index,
        None => {
            deps.push(Dependency {
                name: name.clone(),
                package: None,
                workspace: false,
                line,
                table: table.to_owned(),
            });
            deps.len() - 1
        }
    };
    let dep = &mut deps[index];
    if rest.is_empty() {
        // `name = "1"` or `name = { … }`.
        if let Some(package) = inline_table_value(value, "package") {
            dep.package = string_value(package).map(str::to_owned);
        }
        if inline_table_value(value, "workspace") == Some("true") {
            dep.workspace = true;
        }
    } else {
        apply_key(dep, rest, value);
    }
}

/// Applies one key of a dependency's own table (`package`, `workspace`) to it.
fn apply_key(dep: &mut Dependency, key: &[String], value: &str) {
    match key {
        [k] if k == "package" => dep.package = string_value(value).map(str::to_owned),
        [k] if k == "workspace" => dep.workspace = value == "true",
        _ => {}
    }
}

/// Whether a table path names a dependency table: `dependencies`, `target.X.dependencies`
/// or `workspace.dependencies` (and the dev/build variants).
fn is_dependency_table(table: &[String]) -> bool {
    match table {
        [kind] => DEPENDENCY_TABLES.contains(&kind.as_str()),
        [prefix, kind] => prefix == "workspace" && kind == "dependencies",
        [prefix, _, kind] => prefix == "target" && DEPENDENCY_TABLES.contains(&kind.as_str()),
        _ => false,
    }
}

/// The contents of a basic or literal string value (`"x"` or `'x'`), escapes not decoded.
pub(crate) fn string_value(value: &str) -> Option<&str> {
    let value = value.trim();
    let quote = value.chars().next().filter(|c| *c == '"' || *c == '\'')?;
    let rest = &value[1..];
    rest.find(quote).map(|end| &rest[..end])
}

/// The raw value of `key` in a one-line inline table `{ a = 1, key = "v" }`.
fn inline_table_value<'a>(value: &'a str, key: &str) -> Option<&'a str> {
    let inner = value
        .trim()
        .strip_prefix('{')?
        .trim_end()
        .strip_suffix('}')?;
    split_outside_quotes(inner, ',')
        .into_iter()
        .find_map(|pair| {
            let eq = find_outside_quotes(pair, '=')?;
            (split_dotted(&pair[..eq]) == [key]).then(|| pair[eq + 1..].trim())
        })
}

/// The path inside a `[table]` or `[[array]]` header line, or `None` if it is not one.
fn header_path(line: &str) -> Option<&str> {
    let inner = line.strip_prefix('[')?.strip_suffix(']')?;
    Some(
        inner
            .strip_prefix('[')
            .and_then(|i| i.strip_suffix(']'))
            .unwrap_or(inner),
    )
}

/// Splits a dotted key at dots outside quotes, trimming and unquoting each part.
fn split_dotted(key: &str) -> Vec<String> {
    split_outside_quotes(key, '.')
        .into_iter()
        .map(|part| {
            let part = part.trim();
            string_value(part).unwrap_or(part).to_owned()
        })
        .collect()
}

/// `line` up to the first `#` that is not inside a string.
fn strip_comment(line: &str) -> &str {
    find_outside_quotes(line, '#').map_or(line, |i| &line[..i])
}

/// Byte index of the first `needle` outside quotes, brackets and braces.
fn find_outside_quotes(text: &str, needle: char) -> Option<usize> {
    positions_outside_quotes(text, needle).into_iter().next()
}

/// `text` split at every `separator` outside quotes, brackets and braces.
fn split_outside_quotes(text: &str, separator: char) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut start = 0;
    for i in positions_outside_quotes(text, separator) {
        parts.push(&text[start..i]);
        start = i + separator.len_utf8();
    }
    parts.push(&text[start..]);
    parts
}

/// Byte indices of `needle` at nesting depth zero and outside any string.
fn positions_outside_quotes(text: &str, needle: char) -> Vec<usize> {
    let mut found = Vec::new();
    let mut quote: Option<char> = None;
    let mut escaped = false;
    let mut depth = 0usize;
    for (i, c) in text.char_indices() {
        if let Some(q) = quote {
            if escaped {
                escaped = false;
            } else if c == '\\' && q == '"' {
                escaped = true;
            } else if c == q {
                quote = None;
            }
            continue;
        }
        match c {
            '"' | '\'' => quote = Some(c),
            // A `#` ends the line whatever the nesting; other needles only count at depth 0.
            _ if c == needle && (depth == 0 || needle == '#') => found.push(i),
            '[' | '{' => depth += 1,
            ']' | '}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    found
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
    fn comments_and_quoted_hashes() {
        let entries =
            entries("[package] # header comment\nname = \"a#b\" # trailing\n# whole line\n");
        assert_eq!(entries.len(), 2);
        assert_eq!(
            entries[1].kind,
            EntryKind::KeyValue {
                key: vec!["name".to_owned()],
                value: "\"a#b\""
            }
        );
    }
}
