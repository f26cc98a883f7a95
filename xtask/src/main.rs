//! `xtask`: agentwire's project automation, run as `cargo xtask <task>` through the alias
//! in `.cargo/config.toml`. `cargo xtask check` runs everything CI checks; `cargo xtask
//! tidy` runs only the repository rules in `tidy/`; `cargo xtask migrate <path> [--fix]`
//! reports (and rewrites) the legacy names of the system agentwire replaces.
//!
//! What it is not: part of the product. It is a workspace member with few dependencies
//! (std and `anyhow`) so it builds fast and on any machine that has cargo.
//!
//! To add a task, write a `fn(root, args) -> Result<()>` and add a `Task` to `TASKS`.

// Printing progress and violations to the terminal is this binary's job.
#![allow(clippy::print_stdout, clippy::print_stderr)]

mod check;
mod legacy;
mod manifest;
#[cfg(test)]
mod test_support;
mod tidy;
mod violation;
mod workspace;

use std::path::Path;
use std::process::ExitCode;

use anyhow::{Result, bail};

/// A subcommand: `cargo xtask <name> [args]`.
#[derive(Debug, Clone, Copy)]
struct Task {
    name: &'static str,
    summary: &'static str,
    /// Runs the task on the workspace at the given root with the arguments after its name.
    run: fn(&Path, &[String]) -> Result<()>,
}

/// Every task, in the order `help` lists them.
const TASKS: &[Task] = &[
    Task {
        name: "check",
        summary: "fmt, clippy, test, doc, each crate alone, legacy fixture, tidy: stop at first failure",
        run: |root, args| {
            no_args("check", args)?;
            check::run(root)
        },
    },
    Task {
        name: "tidy",
        summary: "only the repository rules listed below (no cargo)",
        run: |root, args| {
            no_args("tidy", args)?;
            tidy::run(root)
        },
    },
    Task {
        name: "legacy",
        summary: "only check's legacy fixture step: compiles, every alias deprecated, migrates",
        run: |root, args| {
            no_args("legacy", args)?;
            legacy::fixture::run(root)
        },
    },
    Task {
        name: "migrate",
        summary: "<path> [--fix]: report legacy names and paths under <path>; --fix rewrites them",
        run: |_, args| legacy::migrate::run(args),
    },
    Task {
        name: "help",
        summary: "print this help",
        run: |_, _| {
            print!("{}", help());
            Ok(())
        },
    },
];

/// The help text, generated from `TASKS` and `tidy::RULES`.
fn help() -> String {
    let mut text = String::from("Usage: cargo xtask <task>\n\nTasks:\n");
    for task in TASKS {
        text.push_str(&format!("  {:<8} {}\n", task.name, task.summary));
    }
    text.push_str("\nTidy rules:\n");
    for rule in tidy::RULES {
        text.push_str(&format!("  {:<16} {}\n", rule.name, rule.summary));
    }
    text
}

/// Fails if a task that takes no arguments was given some.
fn no_args(task: &str, args: &[String]) -> Result<()> {
    if !args.is_empty() {
        bail!(
            "`cargo xtask {task}` takes no arguments, got: {}",
            args.join(" ")
        );
    }
    Ok(())
}

/// Runs the task named by `args[0]` with the rest of `args`.
fn run(args: &[String]) -> Result<()> {
    let Some((name, rest)) = args.split_first() else {
        bail!("no task given\n\n{}", help());
    };
    let name = match name.as_str() {
        "-h" | "--help" => "help",
        other => other,
    };
    let Some(task) = TASKS.iter().find(|task| task.name == name) else {
        bail!("unknown task `{name}`\n\n{}", help());
    };
    let root = workspace::root()?;
    (task.run)(&root, rest)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("xtask: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn help_lists_every_task_and_rule() {
        let text = help();
        for task in TASKS {
            assert!(text.contains(task.name), "{}", task.name);
        }
        for rule in tidy::RULES {
            assert!(text.contains(rule.name), "{}", rule.name);
        }
    }

    #[test]
    fn unknown_task_and_extra_args_fail() {
        assert!(run(&["nope".to_owned()]).is_err());
        assert!(run(&[]).is_err());
        assert!(run(&["tidy".to_owned(), "extra".to_owned()]).is_err());
    }
}
