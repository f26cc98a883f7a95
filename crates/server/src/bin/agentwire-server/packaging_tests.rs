//! The files an operator installs (issue 19): `packaging/agentwire.toml` is a valid
//! configuration, `packaging/agentwire.service` starts the binary with flags it accepts,
//! allows as many files as docs/operations.md says and waits for the graceful shutdown;
//! the licences the manifests name are there, and the manifests hold no placeholder.

use std::path::{Path, PathBuf};
use std::time::Duration;

use agentwire_server::{BrokerKind, DemoMode, ServerConfig};

use crate::cli::{Cli, LogFormat};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn read(path: &str) -> String {
    std::fs::read_to_string(root().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The installed path of the example configuration in the unit, and the file it is.
const INSTALLED_CONFIG: &str = "/etc/agentwire/agentwire.toml";

fn example_config() -> String {
    root()
        .join("packaging/agentwire.toml")
        .to_str()
        .expect("utf-8 path")
        .to_owned()
}

/// `Key=value` lines of the unit's sections, in order.
fn unit_settings() -> Vec<(String, String)> {
    read("packaging/agentwire.service")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with('['))
        .map(|l| {
            let (k, v) = l
                .split_once('=')
                .unwrap_or_else(|| panic!("not Key=value: {l}"));
            (k.to_owned(), v.to_owned())
        })
        .collect()
}

fn unit_setting(key: &str) -> String {
    unit_settings()
        .into_iter()
        .find(|(k, _)| k == key)
        .unwrap_or_else(|| panic!("the unit has no {key}"))
        .1
}

#[test]
fn the_example_configuration_is_a_production_configuration() {
    let cli = Cli::load(["agentwire-server", "--config", &example_config()]).expect("it parses");
    let c = cli.serve.server_config();
    assert_ne!(c, ServerConfig::default());
    assert!(!c.listen.ip().is_loopback(), "a node others reach");
    assert!(!cli.serve.dev, "never development mode");
    assert!(
        c.jwt_secret.is_none() && c.api_keys.is_empty(),
        "no secret in the file"
    );
    assert_eq!(c.broker, BrokerKind::Memory);
    assert_eq!(c.demo, DemoMode::Off);
    assert!(c.metrics_listen.is_some_and(|a| a.ip().is_loopback()));
    assert_eq!(cli.serve.log_format, LogFormat::Json);
    // Without credentials it refuses to start there, as the file says.
    assert!(crate::dev::check_config(&cli.serve).is_err());
}

#[test]
fn the_systemd_unit_runs_flags_the_binary_accepts_and_waits_for_its_shutdown() {
    let exec = unit_setting("ExecStart");
    let mut words = exec.split_whitespace();
    let program = words.next().expect("a program");
    assert!(program.ends_with("/agentwire-server"), "{program}");
    let args: Vec<String> = std::iter::once("agentwire-server".to_owned())
        .chain(words.map(|w| {
            if w == INSTALLED_CONFIG {
                example_config()
            } else {
                w.to_owned()
            }
        }))
        .collect();
    assert!(
        args.iter().any(|a| a == "--config"),
        "the unit reads packaging/agentwire.toml"
    );
    let cli = Cli::load(args.clone()).unwrap_or_else(|e| panic!("{args:?}: {e}"));
    assert_eq!(cli.command, None, "it serves");
    let c = cli.serve.server_config();

    // As many files as docs/operations.md tells operators to allow.
    let nofile = unit_setting("LimitNOFILE");
    let n: u64 = nofile.parse().expect("a number");
    assert!(
        read("docs/operations.md").contains(&format!("LimitNOFILE={nofile}")),
        "docs/operations.md names another LimitNOFILE than {nofile}"
    );
    assert!(
        n >= c.max_tcp_connections as u64 + agentwire_server::FD_RESERVE,
        "LimitNOFILE={n} is below --max-tcp-connections plus the reserve"
    );

    // systemd kills at TimeoutStopSec: after the drain and the shutdown.
    let stop = unit_setting("TimeoutStopSec");
    let stop: Duration = humantime::parse_duration(&stop).expect("a duration");
    assert!(stop > c.drain_delay + c.shutdown_timeout, "{stop:?}");

    // Secrets come from the environment file, and hardening is on.
    assert!(unit_setting("EnvironmentFile").starts_with("/etc/agentwire/"));
    for (key, value) in [
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("DynamicUser", "yes"),
        ("CapabilityBoundingSet", ""),
    ] {
        assert_eq!(unit_setting(key), value, "{key}");
    }
}

#[test]
fn the_licences_the_manifests_name_are_there_and_no_field_is_a_placeholder() {
    let manifest = read("Cargo.toml");
    assert!(manifest.contains("license = \"MIT OR Apache-2.0\""));
    assert!(read("LICENSE-MIT").contains("Permission is hereby granted, free of charge"));
    let apache = read("LICENSE-APACHE");
    assert!(apache.contains("Apache License") && apache.contains("Version 2.0, January 2004"));
    for path in [
        "Cargo.toml",
        "crates/agentwire/Cargo.toml",
        "crates/bridge/Cargo.toml",
        "crates/emitter/Cargo.toml",
        "crates/manager/Cargo.toml",
        "crates/protocol/Cargo.toml",
        "crates/redis/Cargo.toml",
        "crates/server/Cargo.toml",
    ] {
        let text = read(path);
        for placeholder in ["example.invalid", "example.com", "TODO", "FIXME"] {
            assert!(!text.contains(placeholder), "{path}: {placeholder}");
        }
        if path != "Cargo.toml" {
            for field in ["description", "keywords.workspace", "categories.workspace"] {
                assert!(text.contains(field), "{path}: no {field}");
            }
        }
    }
}
