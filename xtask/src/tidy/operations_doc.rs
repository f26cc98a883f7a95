//! Tidy rule `operations_doc`: every long option of `agentwire-server --help` (the server's
//! and the `token` subcommand's) is written in `docs/operations.md`, so the operations
//! guide cannot fall behind the configuration.
//!
//! A tidy rule does not run binaries, so the options are read from where clap gets them:
//! each field of `crates/server/src/bin/agentwire-server/cli.rs` under an `#[arg(…)]` attribute that says
//! `long` is the option `--field-name` (clap turns `snake_case` into `kebab-case`), or the
//! name given as `long = "…"`. The guide must name it as `--field-name`, not as a prefix
//! of a longer option.

use std::fs;
use std::path::{Path, PathBuf};

use super::Violation;

/// Name of this rule in violations and in `RULES`.
pub(super) const NAME: &str = "operations_doc";

/// Where the server's options are declared, relative to the workspace root.
const CONFIG: &str = "crates/server/src/bin/agentwire-server/cli.rs";

/// The operations guide, relative to the workspace root.
const GUIDE: &str = "docs/operations.md";

/// A long option and the 1-based line of `CONFIG` that declares it.
#[derive(Debug, PartialEq, Eq)]
struct LongOption {
    name: String,
    line: usize,
}

/// Every long option of the `#[arg(…)]` fields in `source`, in order.
fn long_options(source: &str) -> Vec<LongOption> {
    let mut options = Vec::new();
    // The text of the `#[arg(…)]` attribute being read, and whether it is complete.
    let mut attr: Option<(String, bool)> = None;
    for (i, line) in source.lines().enumerate() {
        let trimmed = line.trim();
        match &mut attr {
            None if trimmed.starts_with("#[arg(") => {
                attr = Some((trimmed.to_owned(), trimmed.ends_with(")]")));
            }
            None => {}
            Some((text, false)) => {
                text.push(' ');
                text.push_str(trimmed);
                if trimmed.ends_with(")]") {
                    attr = attr.map(|(t, _)| (t, true));
                }
            }
            Some((text, true)) => {
                if trimmed.starts_with("#[") || trimmed.starts_with("///") {
                    continue;
                }
                let field = ["pub(crate) ", "pub(super) ", "pub "]
                    .iter()
                    .find_map(|vis| trimmed.strip_prefix(vis))
                    .unwrap_or(trimmed);
                if let Some((ident, _)) = field.split_once(':')
                    && let Some(name) = long_name(text, ident.trim())
                {
                    options.push(LongOption { name, line: i + 1 });
                }
                attr = None;
            }
        }
    }
    options
}

/// The long option an attribute gives the field `ident`, if it gives one.
fn long_name(attr: &str, ident: &str) -> Option<String> {
    let inner = attr.strip_prefix("#[arg(")?.strip_suffix(")]")?;
    for part in split_top_level(inner) {
        let part = part.trim();
        if part == "long" {
            return Some(ident.replace('_', "-"));
        }
        if let Some(value) = part.strip_prefix("long") {
            let value = value.trim_start().strip_prefix('=')?.trim();
            return Some(value.trim_matches('"').to_owned());
        }
    }
    None
}

/// `inner` split at the commas outside parentheses, brackets and strings.
fn split_top_level(inner: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut depth, mut in_string, mut start) = (0i32, false, 0);
    for (i, c) in inner.char_indices() {
        match c {
            '"' => in_string = !in_string,
            '(' | '[' if !in_string => depth += 1,
            ')' | ']' if !in_string => depth -= 1,
            ',' if !in_string && depth == 0 => {
                parts.push(&inner[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&inner[start..]);
    parts
}

/// Whether `text` names `--option` on its own (not as the start of a longer option).
fn mentions(text: &str, option: &str) -> bool {
    let needle = format!("--{option}");
    text.match_indices(&needle).any(|(at, _)| {
        !text[at + needle.len()..]
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    })
}

/// Every long option of `CONFIG` that `GUIDE` does not name, reported where it is declared.
pub(super) fn operations_doc(root: &Path) -> Vec<Violation> {
    let read = |path: &str| {
        fs::read_to_string(root.join(path)).map_err(|err| Violation {
            path: PathBuf::from(path),
            line: 1,
            rule: NAME,
            message: format!("cannot read: {err}"),
        })
    };
    let (source, guide) = match (read(CONFIG), read(GUIDE)) {
        (Ok(s), Ok(g)) => (s, g),
        (s, g) => return [s.err(), g.err()].into_iter().flatten().collect(),
    };
    let options = long_options(&source);
    if options.is_empty() {
        return vec![Violation {
            path: PathBuf::from(CONFIG),
            line: 1,
            rule: NAME,
            message: "no `#[arg(long …)]` field found: the rule cannot read the options".into(),
        }];
    }
    options
        .into_iter()
        .filter(|o| !mentions(&guide, &o.name))
        .map(|o| Violation {
            path: PathBuf::from(CONFIG),
            line: o.line,
            rule: NAME,
            message: format!(
                "`--{}` is not in {GUIDE}: add it with its environment variable and default",
                o.name
            ),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::TempDir;

    const SOURCE: &str = r#"//! config
pub struct ServerConfig {
    /// Address.
    #[arg(long, env = "AGENTWIRE_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// Keys.
    #[arg(
        long,
        env = "AGENTWIRE_API_KEYS",
        value_delimiter = ',',
    )]
    pub api_keys: Vec<String>,

    /// Renamed.
    #[arg(long = "max-conns", env = "X", value_parser = parse(1, 2))]
    pub max_connections: usize,

    /// Short only: not a long option.
    #[arg(short)]
    pub verbose: bool,

    /// A field attribute in between.
    #[arg(long, default_value_t = 3)]
    #[allow(dead_code)]
    pub max_connections_per_user: usize,
}
"#;

    #[test]
    fn options_are_read_from_arg_attributes() {
        let names: Vec<(String, usize)> = long_options(SOURCE)
            .into_iter()
            .map(|o| (o.name, o.line))
            .collect();
        assert_eq!(
            names,
            [
                ("listen".to_owned(), 5),
                ("api-keys".to_owned(), 13),
                ("max-conns".to_owned(), 17),
                ("max-connections-per-user".to_owned(), 26),
            ]
        );
    }

    #[test]
    fn a_guide_naming_every_option_passes() {
        let dir = TempDir::new();
        dir.write(CONFIG, SOURCE);
        dir.write(
            GUIDE,
            "| `--listen` | |\n| `--api-keys` |\n--max-conns and --max-connections-per-user.\n",
        );
        assert_eq!(operations_doc(dir.path()), []);
    }

    #[test]
    fn a_missing_option_is_reported_where_it_is_declared() {
        let dir = TempDir::new();
        dir.write(CONFIG, SOURCE);
        // `--max-conns` appears only as the start of a longer option.
        dir.write(GUIDE, "`--listen`, `--api-keys`, `--max-conns-x`");
        let violations = operations_doc(dir.path());
        let got: Vec<(usize, bool)> = violations
            .iter()
            .map(|v| (v.line, v.path == Path::new(CONFIG)))
            .collect();
        assert_eq!(got, [(17, true), (26, true)], "{violations:?}");
        assert!(violations[0].message.contains("`--max-conns`"));
        assert!(violations[1].message.contains("--max-connections-per-user"));
    }

    #[test]
    fn missing_files_and_unreadable_options_are_violations() {
        let dir = TempDir::new();
        assert_eq!(operations_doc(dir.path()).len(), 2);
        dir.write(CONFIG, "//! no options\npub struct C { pub a: u8 }\n");
        dir.write(GUIDE, "# Operations\n");
        let violations = operations_doc(dir.path());
        assert_eq!(violations.len(), 1);
        assert!(violations[0].message.contains("no `#[arg(long"));
    }
}
