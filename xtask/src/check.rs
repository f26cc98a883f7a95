//! `cargo xtask check`: everything CI checks, in order, stopping at the first failure with
//! a message that says what to fix.

use std::env;
use std::ffi::OsString;
use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::{legacy, tidy, workspace};

/// One `cargo` invocation and what to do when it fails.
#[derive(Debug)]
struct Cargo {
    /// Arguments after `cargo`.
    args: Vec<String>,
    /// Extra environment variables.
    env: &'static [(&'static str, &'static str)],
    /// Printed after "`cargo …` failed: ".
    fix: String,
}

impl Cargo {
    fn new(args: &[&str], fix: impl Into<String>) -> Self {
        Self {
            args: args.iter().map(|a| (*a).to_owned()).collect(),
            env: &[],
            fix: fix.into(),
        }
    }

    /// The command line as a user would type it.
    fn display(&self) -> String {
        let env: Vec<String> = self
            .env
            .iter()
            .map(|(k, v)| format!("{k}='{v}' "))
            .collect();
        format!("{}cargo {}", env.concat(), self.args.join(" "))
    }

    /// Runs it in `root` and fails with `fix` if it does not succeed.
    fn run(&self, root: &Path) -> Result<()> {
        println!("    $ {}", self.display());
        // `CARGO` is the cargo that runs xtask; use the same toolchain for every step.
        let cargo = env::var_os("CARGO").unwrap_or_else(|| OsString::from("cargo"));
        let status = Command::new(cargo)
            .args(&self.args)
            .envs(self.env.iter().copied())
            .current_dir(root)
            .status()
            .with_context(|| format!("could not start `{}`", self.display()))?;
        if !status.success() {
            bail!("`{}` failed: {}", self.display(), self.fix);
        }
        Ok(())
    }
}

/// What one step of the check does.
#[derive(Debug)]
enum Action {
    /// Runs cargo commands one after another.
    Cargo(Vec<Cargo>),
    /// Builds the legacy fixture: it compiles, fails once per alias under `-D deprecated`,
    /// and compiles cleanly once migrated.
    LegacyFixture,
    /// Runs the tidy rules in this process.
    Tidy,
}

/// A step of the check: a header line and what it runs.
#[derive(Debug)]
struct Step {
    title: String,
    action: Action,
}

/// Feature selections an embedder uses, each checked on its own: the facade with one layer
/// and what is beneath it, and the server's library without the binary — alone and with
/// the Redis broker.
const FEATURE_SETS: &[(&str, &str)] = &[
    ("agentwire", ""),
    ("agentwire", "emitter"),
    ("agentwire", "bridge"),
    ("agentwire", "redis"),
    ("agentwire-server", ""),
    ("agentwire-server", "redis"),
];

/// The steps of `cargo xtask check` for the workspace at `root`, in order.
fn steps(root: &Path) -> Result<Vec<Step>> {
    let crates = workspace::library_crates(root)?;
    let doc = Cargo {
        env: &[("RUSTDOCFLAGS", "-D warnings")],
        ..Cargo::new(
            &["doc", "--workspace", "--no-deps"],
            "rustdoc reported warnings: fix the broken links or docs listed above",
        )
    };
    // Cargo unifies features across the workspace, so a crate can build in the workspace
    // yet not on its own; checking each alone catches a dependency it forgot to declare.
    let mut alone: Vec<Cargo> = crates
        .iter()
        .map(|krate| {
            Cargo::new(
                &["check", "-p", krate],
                format!(
                    "{krate} does not build on its own: declare in its own Cargo.toml the \
                     dependencies and features it uses"
                ),
            )
        })
        .collect();
    // What an embedder builds: the layers a feature selection leaves out must not be
    // needed by the ones it keeps.
    for (krate, features) in FEATURE_SETS {
        if crates.iter().any(|c| c == krate) {
            let mut args = vec!["check", "-p", krate, "--no-default-features"];
            if !features.is_empty() {
                args.extend(["--features", features]);
            }
            alone.push(Cargo::new(
                &args,
                format!(
                    "{krate} does not build with only `{features}`: gate what needs another \
                     feature behind it"
                ),
            ));
        }
    }
    Ok(vec![
        Step {
            title: "format".to_owned(),
            action: Action::Cargo(vec![Cargo::new(
                &["fmt", "--all", "--check"],
                "run `cargo fmt --all` and commit",
            )]),
        },
        Step {
            title: "clippy".to_owned(),
            action: Action::Cargo(vec![Cargo::new(
                &[
                    "clippy",
                    "--workspace",
                    "--all-targets",
                    "--",
                    "-D",
                    "warnings",
                ],
                "fix the lints listed above (warnings are errors)",
            )]),
        },
        Step {
            title: "test".to_owned(),
            action: Action::Cargo(vec![Cargo::new(
                &["test", "--workspace"],
                "fix the failing tests listed above",
            )]),
        },
        Step {
            title: "doc".to_owned(),
            action: Action::Cargo(vec![doc]),
        },
        Step {
            title: format!("each library crate on its own ({})", crates.len()),
            action: Action::Cargo(alone),
        },
        Step {
            title: "legacy names: fixture compiles, every alias deprecated, migration clean"
                .to_owned(),
            action: Action::LegacyFixture,
        },
        Step {
            title: format!("tidy ({} rules)", tidy::RULES.len()),
            action: Action::Tidy,
        },
    ])
}

/// `cargo xtask check`: runs every step in `root`, stopping at the first failure.
///
/// # Errors
/// The first failing step, with what to fix.
pub(crate) fn run(root: &Path) -> Result<()> {
    let steps = steps(root)?;
    let total = steps.len();
    for (index, step) in steps.iter().enumerate() {
        println!("==> [{}/{total}] {}", index + 1, step.title);
        match &step.action {
            Action::Cargo(commands) => {
                for command in commands {
                    command.run(root)?;
                }
            }
            Action::LegacyFixture => legacy::fixture::run(root)?,
            Action::Tidy => tidy::run(root)?,
        }
    }
    println!("==> all {total} steps passed");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::TempDir;

    #[test]
    fn steps_check_each_discovered_crate_alone() {
        let dir = TempDir::new();
        dir.write("crates/b/Cargo.toml", "[package]\nname = \"pkg-b\"\n");
        dir.write("crates/a/Cargo.toml", "[package]\nname = \"pkg-a\"\n");
        dir.write(
            "crates/s/Cargo.toml",
            "[package]\nname = \"agentwire-server\"\n",
        );
        let steps = steps(dir.path()).expect("steps");
        let lines: Vec<Vec<String>> = steps
            .iter()
            .map(|step| match &step.action {
                Action::Cargo(commands) => commands.iter().map(Cargo::display).collect(),
                Action::LegacyFixture => vec!["legacy fixture".to_owned()],
                Action::Tidy => vec!["tidy".to_owned()],
            })
            .collect();
        assert_eq!(
            lines,
            [
                vec!["cargo fmt --all --check"],
                vec!["cargo clippy --workspace --all-targets -- -D warnings"],
                vec!["cargo test --workspace"],
                vec!["RUSTDOCFLAGS='-D warnings' cargo doc --workspace --no-deps"],
                vec![
                    "cargo check -p pkg-a",
                    "cargo check -p pkg-b",
                    "cargo check -p agentwire-server",
                    "cargo check -p agentwire-server --no-default-features",
                    "cargo check -p agentwire-server --no-default-features --features redis",
                ],
                vec!["legacy fixture"],
                vec!["tidy"],
            ]
        );
    }
}
