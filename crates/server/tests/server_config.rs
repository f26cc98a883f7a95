//! Configuration parsing: defaults, flags, the `--config` file and its precedence, and
//! the errors for bad values. (Environment variables are tested through the binary, in
//! `server_binary.rs`: a test process must not change its own environment.)

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use agentwire_server::{
    BrokerKind, Cli, Command, ConfigError, LogFormat, PerUserPolicy, ServerConfig,
};

fn temp_file(name: &str, contents: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "agentwire-config-test-{}-{name}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("agentwire.toml");
    std::fs::write(&path, contents).expect("write");
    path
}

fn load(args: &[&str]) -> Result<Cli, ConfigError> {
    Cli::load(std::iter::once("agentwire-server").chain(args.iter().copied()))
}

#[test]
fn no_arguments_give_the_documented_defaults() {
    let cli = load(&[]).expect("parses");
    assert_eq!(cli.command, None);
    let c = cli.config;
    assert_eq!(c, ServerConfig::default());
    assert_eq!(
        c.listen,
        "127.0.0.1:8080".parse::<SocketAddr>().expect("addr")
    );
    assert_eq!(c.broker, BrokerKind::Memory);
    assert_eq!(c.max_connections, 10_000);
    assert_eq!(c.max_connections_per_user, 3);
    assert_eq!(c.per_user_policy, PerUserPolicy::EvictOldest);
    assert_eq!(c.heartbeat_interval, Duration::from_secs(30));
    assert_eq!(c.heartbeat_timeout, Duration::from_secs(10));
    assert_eq!(c.write_timeout, Duration::from_secs(10));
    assert_eq!(c.max_message_size, 16 * 1024);
    assert_eq!(c.max_event_bytes, 256 * 1024);
    assert_eq!(c.max_bad_frames, 10);
    assert_eq!(c.resume_wait, Duration::from_millis(50));
    assert_eq!(c.log_format, LogFormat::Text);
    assert!(c.is_dev_mode());
    assert!(c.api_keys.is_empty());
}

#[test]
fn flags_set_every_kind_of_value() {
    let cli = load(&[
        "--listen",
        "0.0.0.0:9000",
        "--api-keys",
        "k1,k2",
        "--heartbeat-interval",
        "15s",
        "--resume-wait",
        "0",
        "--per-user-policy",
        "reject",
        "--allowed-origins",
        "https://a.example,https://b.example",
        "--jwt-secret",
        "s3cret",
        "--log-format",
        "json",
        "--max-connections",
        "500",
    ])
    .expect("parses");
    let c = cli.config;
    assert_eq!(c.listen.port(), 9000);
    assert_eq!(c.api_keys, vec!["k1", "k2"]);
    assert_eq!(c.heartbeat_interval, Duration::from_secs(15));
    assert_eq!(c.resume_wait, Duration::ZERO);
    assert_eq!(c.per_user_policy, PerUserPolicy::Reject);
    assert_eq!(c.allowed_origins.len(), 2);
    assert!(!c.is_dev_mode());
    assert_eq!(c.log_format, LogFormat::Json);
    let m = c.manager_config();
    assert_eq!(m.max_connections, 500);
    assert_eq!(m.heartbeat.interval, Duration::from_secs(15));
    assert_eq!(m.limit_policy, agentwire_manager::LimitPolicy::Reject);
}

#[test]
fn the_config_file_fills_what_flags_do_not_give() {
    let path = temp_file(
        "merge",
        r#"
listen = "127.0.0.1:9100"
heartbeat-interval = "5s"
history_max_events = 42
api-keys = ["a", "b"]
broker = "memory"
"#,
    );
    let p = path.to_str().expect("utf-8 path");
    let c = load(&["--config", p, "--heartbeat-interval", "7s"])
        .expect("parses")
        .config;
    assert_eq!(c.listen.port(), 9100, "from the file");
    assert_eq!(c.history_max_events, 42, "snake_case keys work too");
    assert_eq!(c.api_keys, vec!["a", "b"], "arrays become lists");
    assert_eq!(
        c.heartbeat_interval,
        Duration::from_secs(7),
        "the command line wins"
    );
    assert_eq!(
        c.heartbeat_timeout,
        Duration::from_secs(10),
        "the default stays"
    );
}

#[test]
fn bad_files_and_values_are_errors_that_say_what_is_wrong() {
    let unknown = temp_file("unknown", "listen = \"127.0.0.1:1\"\nno_such_setting = 1\n");
    let err = load(&["--config", unknown.to_str().expect("path")]).expect_err("unknown key");
    assert!(err.to_string().contains("no_such_setting"), "{err}");

    let bad_toml = temp_file("bad", "listen = \n");
    assert!(matches!(
        load(&["--config", bad_toml.to_str().expect("path")]),
        Err(ConfigError::File { .. })
    ));

    let bad_value = temp_file("value", "max-connections = \"many\"\n");
    assert!(matches!(
        load(&["--config", bad_value.to_str().expect("path")]),
        Err(ConfigError::Cli(_))
    ));

    let missing = load(&["--config", "/nonexistent/agentwire.toml"]).expect_err("missing file");
    assert!(matches!(missing, ConfigError::Read { .. }), "{missing}");

    for args in [
        &["--heartbeat-interval", "soon"][..],
        &["--listen", "not-an-address"][..],
        &["--broker", "kafka"][..],
        &["--per-user-policy", "random"][..],
    ] {
        assert!(load(args).is_err(), "{args:?}");
    }
}

#[test]
fn the_token_subcommand_parses() {
    let cli = load(&["token", "--user", "alice", "--ttl-secs", "60"]).expect("parses");
    match cli.command {
        Some(Command::Token(t)) => {
            assert_eq!(t.user, "alice");
            assert_eq!(t.ttl_secs, 60);
        }
        other => panic!("expected the token command, got {other:?}"),
    }
    assert!(load(&["token"]).is_err(), "--user is required");
}
