//! Tidy rule `protocol_no_io`: `agentwire-protocol` knows nothing of tokio, sockets or
//! HTTP, so `crates/protocol/Cargo.toml` declares no I/O or async-runtime crate in any
//! dependency table. This keeps the wire types usable by any client and any runtime.

use std::fs;
use std::path::Path;

use super::Violation;
use crate::manifest::{self, Dependency};

/// Name of this rule in violations and in `RULES`.
pub(super) const NAME: &str = "protocol_no_io";

/// The protocol crate's manifest, relative to the workspace root.
const PROTOCOL_MANIFEST: &str = "crates/protocol/Cargo.toml";

/// Crates that do I/O or run async tasks. `bytes` is a plain buffer type and allowed.
const IO_CRATES: &[&str] = &[
    "tokio",
    "tokio-util",
    "tokio-tungstenite",
    "tungstenite",
    "axum",
    "hyper",
    "hyper-util",
    "mio",
    "async-std",
    "smol",
    "reqwest",
    "redis",
    "futures-io",
    "tower",
    "tower-http",
    "socket2",
];

/// Every dependency of `root/crates/protocol/Cargo.toml`, in any table, that is one of
/// `IO_CRATES`, also through a `package = "…"` rename, including one made in the root
/// manifest's `[workspace.dependencies]`. A missing manifest is a violation too, so the
/// rule cannot pass by the crate having moved.
pub(super) fn protocol_no_io(root: &Path) -> Vec<Violation> {
    let text = match fs::read_to_string(root.join(PROTOCOL_MANIFEST)) {
        Ok(text) => text,
        Err(err) => {
            return vec![Violation {
                path: PROTOCOL_MANIFEST.into(),
                line: 1,
                rule: NAME,
                message: format!("cannot read: {err}; if the crate moved, update this rule"),
            }];
        }
    };
    // A missing or unreadable root manifest only means no workspace renames to follow.
    let workspace_deps = fs::read_to_string(root.join("Cargo.toml"))
        .map(|root_text| manifest::dependencies(&root_text))
        .unwrap_or_default();
    manifest::dependencies(&text)
        .iter()
        .filter_map(|dep| {
            let krate = resolve(dep, &workspace_deps);
            is_io_crate(krate).then(|| Violation {
                path: PROTOCOL_MANIFEST.into(),
                line: dep.line,
                rule: NAME,
                message: format!(
                    "`{}` in [{}] is the I/O crate `{krate}`: agentwire-protocol knows \
                     nothing of tokio, sockets or HTTP; move the code that needs it to \
                     the manager or server",
                    dep.name, dep.table
                ),
            })
        })
        .collect()
}

/// The crate `dep` really is, following a rename in `[workspace.dependencies]` when it is
/// a `workspace = true` dependency without its own `package`.
fn resolve<'a>(dep: &'a Dependency, workspace_deps: &'a [Dependency]) -> &'a str {
    if dep.workspace && dep.package.is_none() {
        let inherited = workspace_deps
            .iter()
            .find(|w| w.table == "workspace.dependencies" && w.name == dep.name);
        if let Some(inherited) = inherited {
            return inherited.crate_name();
        }
    }
    dep.crate_name()
}

/// Whether `name` is one of `IO_CRATES`; `-` and `_` count as the same, as on crates.io.
fn is_io_crate(name: &str) -> bool {
    let name = name.replace('_', "-");
    IO_CRATES.contains(&name.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::TempDir;

    const ROOT_MANIFEST: &str = "\
[workspace.dependencies]
serde = \"1\"
rt = { version = \"1\", package = \"tokio\" }
";

    fn lines(root: &Path) -> Vec<(usize, &'static str)> {
        protocol_no_io(root)
            .into_iter()
            .map(|v| {
                assert_eq!(v.path, Path::new(PROTOCOL_MANIFEST));
                (v.line, v.rule)
            })
            .collect()
    }

    #[test]
    fn passes_on_a_pure_protocol_crate() {
        let dir = TempDir::new();
        dir.write("Cargo.toml", ROOT_MANIFEST);
        dir.write(
            PROTOCOL_MANIFEST,
            "\
[package]
name = \"agentwire-protocol\"
description = \"no tokio here\" # tokio = \"1\"

[dependencies]
serde.workspace = true
bytes = \"1\"
tokio-like = { package = \"not-io\", version = \"1\" }

[dev-dependencies]
proptest.workspace = true
",
        );
        assert_eq!(lines(dir.path()), []);
    }

    #[test]
    fn fails_on_io_crates_in_every_table_and_rename() {
        let dir = TempDir::new();
        dir.write("Cargo.toml", ROOT_MANIFEST);
        dir.write(
            PROTOCOL_MANIFEST,
            "\
[package]
name = \"agentwire-protocol\"

[dependencies]
serde.workspace = true
tokio.workspace = true
net = { package = \"socket2\", version = \"0.5\" }
rt.workspace = true

[dev-dependencies]
axum = \"0.8\"

[build-dependencies]
tower_http = \"0.6\"

[target.'cfg(unix)'.dependencies]
mio = { version = \"1\" }

[dependencies.hyper]
version = \"1\"

[dependencies.web]
package = \"reqwest\"
",
        );
        assert_eq!(
            lines(dir.path()),
            [
                (6, NAME),
                (7, NAME),
                (8, NAME),
                (11, NAME),
                (14, NAME),
                (17, NAME),
                (19, NAME),
                (22, NAME),
            ]
        );
    }

    #[test]
    fn fails_when_the_manifest_is_missing() {
        let dir = TempDir::new();
        assert_eq!(lines(dir.path()), [(1, NAME)]);
    }
}
