//! Tidy rule `critical_events`: the five critical event names — `agent_started`,
//! `agent_thinking`, `tool_executing`, `tool_completed`, `agent_completed` — appear,
//! spelled exactly, in the protocol crate, the emitter, the bridge and `docs/protocol.md`,
//! and no misspelling of them (`agent-started`, `agentStarted`) appears there.

use std::fs;
use std::path::{Path, PathBuf};

use super::{Violation, rust_files};
use crate::legacy::find_word;

/// Name of this rule in violations and in `RULES`.
pub(super) const NAME: &str = "critical_events";

/// The wire names, as `agentwire_protocol::CRITICAL_EVENTS` and the design define them.
pub(crate) const CRITICAL_EVENTS: [&str; 5] = [
    "agent_started",
    "agent_thinking",
    "tool_executing",
    "tool_completed",
    "agent_completed",
];

/// Where the names must appear: a source directory (its `.rs` files) and the file a
/// missing name is reported at, or a single document.
const PLACES: &[(&str, &str)] = &[
    ("crates/protocol/src", "crates/protocol/src/lib.rs"),
    ("crates/emitter/src", "crates/emitter/src/lib.rs"),
    ("crates/bridge/src", "crates/bridge/src/lib.rs"),
    ("docs/protocol.md", "docs/protocol.md"),
];

/// `agent_started` as `agent-started` and as `agentStarted`.
fn misspellings(name: &str) -> [String; 2] {
    let hyphen = name.replace('_', "-");
    let mut camel = String::new();
    let mut upper = false;
    for c in name.chars() {
        if c == '_' {
            upper = true;
        } else if upper {
            camel.push(c.to_ascii_uppercase());
            upper = false;
        } else {
            camel.push(c);
        }
    }
    [hyphen, camel]
}

/// Every name missing from a place (at the place's main file, line 1) and every
/// misspelling found in one (at its line).
pub(super) fn critical_events(root: &Path) -> Vec<Violation> {
    let mut violations = Vec::new();
    for (place, report_at) in PLACES {
        let full = root.join(place);
        let files: Vec<(PathBuf, String)> = if full.is_dir() {
            let (files, errors) = rust_files(&full, NAME);
            violations.extend(errors);
            files
                .into_iter()
                .map(|f| (Path::new(place).join(f.path), f.text))
                .collect()
        } else {
            match fs::read_to_string(&full) {
                Ok(text) => vec![(PathBuf::from(place), text)],
                Err(err) => {
                    violations.push(Violation {
                        path: PathBuf::from(report_at),
                        line: 1,
                        rule: NAME,
                        message: format!("cannot read: {err}"),
                    });
                    continue;
                }
            }
        };
        for name in CRITICAL_EVENTS {
            if !files
                .iter()
                .any(|(_, text)| !find_word(text, name).is_empty())
            {
                violations.push(Violation {
                    path: PathBuf::from(report_at),
                    line: 1,
                    rule: NAME,
                    message: format!("`{name}` does not appear (as a whole word) in {place}"),
                });
            }
            for wrong in misspellings(name) {
                for (path, text) in &files {
                    for (index, line) in text.lines().enumerate() {
                        if !find_word(line, &wrong).is_empty() {
                            violations.push(Violation {
                                path: path.clone(),
                                line: index + 1,
                                rule: NAME,
                                message: format!("`{wrong}`: the event's name is `{name}`"),
                            });
                        }
                    }
                }
            }
        }
    }
    violations
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::TempDir;

    fn complete(dir: &TempDir) {
        let all = CRITICAL_EVENTS.join(", ");
        for file in [
            "crates/protocol/src/event.rs",
            "crates/emitter/src/lib.rs",
            "crates/bridge/src/lib.rs",
        ] {
            dir.write(file, &format!("//! {all}\n"));
        }
        dir.write("docs/protocol.md", &format!("# Protocol\n{all}\n"));
    }

    #[test]
    fn all_names_everywhere_pass() {
        let dir = TempDir::new();
        complete(&dir);
        assert_eq!(critical_events(dir.path()), []);
    }

    #[test]
    fn a_missing_name_or_document_is_reported_where_it_belongs() {
        let dir = TempDir::new();
        complete(&dir);
        dir.write("crates/emitter/src/lib.rs", "//! agent_started only\n");
        std::fs::remove_file(dir.path().join("docs/protocol.md")).expect("remove");
        let violations = critical_events(dir.path());
        let emitter: Vec<&Violation> = violations
            .iter()
            .filter(|v| v.path == Path::new("crates/emitter/src/lib.rs"))
            .collect();
        assert_eq!(emitter.len(), 4, "{violations:?}");
        assert!(emitter.iter().all(|v| v.line == 1));
        assert!(
            violations
                .iter()
                .any(|v| v.path == Path::new("docs/protocol.md")
                    && v.message.contains("cannot read"))
        );
    }

    #[test]
    fn misspellings_are_reported_at_their_line() {
        let dir = TempDir::new();
        complete(&dir);
        dir.write(
            "crates/bridge/src/run.rs",
            "//! x\n// emits agent-started\nlet agentCompleted = 1;\nlet agent_started_at = 2;\n",
        );
        let violations = critical_events(dir.path());
        let at: Vec<(String, usize)> = violations
            .iter()
            .map(|v| (v.path.to_string_lossy().into_owned(), v.line))
            .collect();
        assert_eq!(
            at,
            [
                ("crates/bridge/src/run.rs".to_owned(), 2),
                ("crates/bridge/src/run.rs".to_owned(), 3),
            ]
        );
    }
}
