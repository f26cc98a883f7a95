//! The `agentwire-server` binary as an operator runs it: `--help` lists every flag with
//! its environment variable, environment variables configure it, `token` mints a token
//! the server accepts, and SIGTERM closes every client with 1001 before the process exits.

mod support;

use std::time::{Duration, Instant};

use agentwire_server::Auth;
use futures_util::StreamExt;
use tokio_tungstenite::tungstenite::Message;

use support::{ServerProcess, WAIT, bin, get_status, temp_dir, websocket};

fn mint_with_binary(creds: &std::path::Path, user: &str) -> String {
    let out = bin()
        .args(["token", "--user", user, "--dev-credentials-file"])
        .arg(creds)
        .output()
        .expect("run token");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .expect("utf-8")
        .trim()
        .to_owned()
}

#[test]
fn help_lists_the_flags_operators_look_for() {
    let out = bin().arg("--help").output().expect("run --help");
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).expect("utf-8");
    for name in [
        "--listen",
        "--jwt-secret",
        "--jwt-public-key",
        "--jwt-issuer",
        "--jwt-audience",
        "--jwt-jwks-url",
        "--jwt-max-bytes",
        "--api-keys",
        "--broker",
        "--redis-url",
        "--max-connections",
        "--max-connections-per-user",
        "--per-user-policy",
        "--queue-max-frames",
        "--queue-max-bytes",
        "--heartbeat-interval",
        "--heartbeat-timeout",
        "--write-timeout",
        "--max-message-size",
        "--max-frame-size",
        "--max-event-bytes",
        "--history-max-events",
        "--history-max-age",
        "--history-max-bytes",
        "--shutdown-timeout",
        "--allowed-origins",
        "--log-format",
        "--config",
        "--dev-credentials-file",
    ] {
        assert!(help.contains(name), "{name}");
    }
    // Secrets given by environment are never shown.
    let out = bin()
        .arg("--help")
        .env("AGENTWIRE_JWT_SECRET", "do-not-print-me")
        .output()
        .expect("run --help");
    assert!(!String::from_utf8_lossy(&out.stdout).contains("do-not-print-me"));
}

#[test]
fn the_token_subcommand_mints_a_token_the_server_verifies() {
    let dir = temp_dir("token");
    let creds = dir.join("dev-credentials.json");
    // The development server writes its credentials; `token` reads them (and never writes
    // any: tests/cli_tools.rs).
    let mut cmd = bin();
    cmd.args(["--listen", "127.0.0.1:0", "--dev-credentials-file"])
        .arg(&creds);
    let server = ServerProcess::spawn(cmd).expect("a development server");
    let token = mint_with_binary(&creds, "alice");
    drop(server);
    let file: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&creds).expect("the server wrote it")).expect("JSON");
    let secret = file["jwt_secret"].as_str().expect("a secret");
    let auth = Auth::hs256(secret.as_bytes()).expect("auth from the same file");
    let verified = auth.verify(&token).expect("verifies");
    assert_eq!(verified.user.as_str(), "alice");

    // With an explicit secret instead.
    let out = bin()
        .args(["token", "--user", "bob", "--ttl-secs", "60"])
        .env(
            "AGENTWIRE_JWT_SECRET",
            "an explicit secret of thirty-two bytes",
        )
        .output()
        .expect("run token");
    assert!(out.status.success());
    let token = String::from_utf8(out.stdout).expect("utf-8");
    let auth = Auth::hs256(b"an explicit secret of thirty-two bytes").expect("auth");
    assert_eq!(
        auth.verify(token.trim()).expect("verifies").user.as_str(),
        "bob"
    );

    let bad = bin()
        .args(["token", "--user", ""])
        .env(
            "AGENTWIRE_JWT_SECRET",
            "an explicit secret of thirty-two bytes",
        )
        .output()
        .expect("run token");
    assert!(!bad.status.success());
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn environment_variables_and_the_config_file_configure_the_binary() {
    let dir = temp_dir("env");
    let file = dir.join("agentwire.toml");
    std::fs::write(&file, "broker = \"redis\"\nlisten = \"127.0.0.1:0\"\n").expect("write");

    // The file alone asks for Redis without saying where: refused, naming what to set.
    let out = bin()
        .args(["--dev-credentials-file"])
        .arg(dir.join("c.json"))
        .env("AGENTWIRE_CONFIG", &file)
        .output()
        .expect("run");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--broker redis needs --redis-url"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // An environment variable beats the file.
    let mut cmd = bin();
    cmd.args(["--dev-credentials-file"])
        .arg(dir.join("c.json"))
        .env("AGENTWIRE_CONFIG", &file)
        .env("AGENTWIRE_BROKER", "memory");
    let mut server = ServerProcess::spawn(cmd).expect("serves with the memory broker");
    assert!(server.addr.ip().is_loopback());
    server.sigterm();
    assert!(server.wait_exit(WAIT).is_some_and(|s| s.success()));

    // A bad value in the environment is an error naming the flag.
    let out = bin()
        .env("AGENTWIRE_MAX_CONNECTIONS", "lots")
        .output()
        .expect("run");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--max-connections"));
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_closes_every_client_with_1001_and_the_process_exits_in_time() {
    let dir = temp_dir("sigterm");
    let creds = dir.join("dev-credentials.json");
    let mut cmd = bin();
    cmd.args([
        "--listen",
        "127.0.0.1:0",
        "--shutdown-timeout",
        "5s",
        "--drain-delay",
        "2s",
        "--log-format",
        "json",
        "--dev-credentials-file",
    ])
    .arg(&creds);
    let mut server = ServerProcess::spawn(cmd).expect("starts");
    assert_eq!(get_status(server.addr, "/readyz"), 200);
    // The credentials path is announced for people.
    let announced = server.lines.recv_timeout(WAIT).expect("a second line");
    assert!(announced.contains("dev-credentials.json"), "{announced}");

    let mut clients = Vec::new();
    for user in ["alice", "alice", "bob", "carol"] {
        let token = mint_with_binary(&creds, user);
        let ws = websocket(server.addr, &token).await;
        clients.push(ws);
    }

    let started = Instant::now();
    server.sigterm();
    // For the drain delay /readyz fails while the listener still answers.
    while get_status(server.addr, "/readyz") != 503 {
        assert!(started.elapsed() < WAIT, "/readyz never failed");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(get_status(server.addr, "/healthz"), 200);
    for ws in &mut clients {
        let code = tokio::time::timeout(WAIT, async {
            loop {
                match ws.next().await {
                    Some(Ok(Message::Close(frame))) => {
                        // Reading on sends the close reply.
                        let _ = ws.next().await;
                        return frame.map(|f| u16::from(f.code));
                    }
                    Some(Ok(_)) => {}
                    Some(Err(_)) | None => return None,
                }
            }
        })
        .await
        .expect("a close in time");
        assert_eq!(code, Some(1001));
    }
    let status = tokio::task::spawn_blocking(move || server.wait_exit(WAIT))
        .await
        .expect("join");
    assert!(
        status.is_some_and(|s| s.success()),
        "the process did not exit cleanly in time: {status:?}"
    );
    assert!(started.elapsed() < WAIT);
    let _ = std::fs::remove_dir_all(dir);
}

fn stderr_of(server: &mut ServerProcess) -> String {
    server.stderr.until_exit()
}

/// Issue 14: without a secret or public key the binary starts only on a loopback address
/// (or with `--dev`); anywhere else it refuses, saying what to set — also when the secret's
/// variable is misspelt, or only API keys are given.
#[test]
fn without_credentials_a_non_loopback_address_is_refused_with_what_to_set() {
    type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)]);
    let cases: [Case<'_>; 4] = [
        (&["--listen", "0.0.0.0:0"], &[]),
        (&["--listen", "0.0.0.0:0", "--api-keys", "k1"], &[]),
        (&["--listen", "[::]:0"], &[]),
        (
            &[],
            &[
                ("AGENTWIRE_LISTEN", "0.0.0.0:0"),
                ("AGENTWIRE_JWT_SECRETS", "a typo of the variable"),
            ],
        ),
    ];
    for (args, env) in cases {
        let out = bin()
            .args(args)
            .envs(env.iter().copied())
            .output()
            .expect("run");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} {env:?} started: {stderr}");
        for needle in [
            "refusing to start",
            "AGENTWIRE_JWT_SECRET",
            "--jwt-secret",
            "--dev",
        ] {
            assert!(
                stderr.contains(needle),
                "{args:?}: {needle} missing: {stderr}"
            );
        }
        assert!(out.stdout.is_empty(), "nothing was served");
    }
}

/// Issue 14: development mode is explicit and loud: on by itself only without credentials
/// on a loopback address, asked for with `--dev`, and announced by a warning at start.
#[test]
fn development_mode_is_announced_and_only_where_asked_for() {
    let dir = temp_dir("devmode");
    // No secret on loopback: development mode with the credentials file.
    let mut cmd = bin();
    cmd.args(["--listen", "127.0.0.1:0", "--dev-credentials-file"])
        .arg(dir.join("c.json"));
    let mut server = ServerProcess::spawn(cmd).expect("development mode on loopback");
    let line = server
        .lines
        .recv_timeout(WAIT)
        .expect("the credentials line");
    assert!(line.starts_with("development credentials:"), "{line}");
    server.sigterm();
    assert!(server.wait_exit(WAIT).is_some_and(|s| s.success()));
    assert!(stderr_of(&mut server).contains("DEVELOPMENT MODE"));
    assert!(dir.join("c.json").is_file());

    // --dev with a secret: development mode on the configured secret, no file.
    let mut cmd = bin();
    cmd.args(["--dev", "--listen", "127.0.0.1:0", "--jwt-secret", "s"]);
    let mut server = ServerProcess::spawn(cmd).expect("--dev with a secret");
    let line = server.lines.recv_timeout(WAIT).expect("the demo line");
    assert!(line.starts_with("demo page:"), "{line}");
    server.sigterm();
    assert!(server.wait_exit(WAIT).is_some_and(|s| s.success()));
    assert!(stderr_of(&mut server).contains("DEVELOPMENT MODE"));

    // A secret without --dev: production, quietly.
    let mut cmd = bin();
    cmd.args([
        "--listen",
        "127.0.0.1:0",
        "--jwt-secret",
        "a production secret of 32 bytes!",
    ]);
    let mut server = ServerProcess::spawn(cmd).expect("a secret");
    server.sigterm();
    assert!(server.wait_exit(WAIT).is_some_and(|s| s.success()));
    assert!(
        server.lines.try_recv().is_err(),
        "no credentials or demo line"
    );
    assert!(!stderr_of(&mut server).contains("DEVELOPMENT MODE"));
    let _ = std::fs::remove_dir_all(dir);
}

/// Issue 14: outside development mode a short secret or API key, or a public key file
/// others can write, stops the binary with what to set — and never shows the secret.
#[test]
fn short_secrets_keys_and_writable_key_files_refuse_to_start() {
    let long = "a production secret of 32 bytes!";
    let cases: [(&[&str], &[&str]); 3] = [
        (
            &["--jwt-secret", "tiny-secret-value"],
            &["--jwt-secret", "at least 32 bytes", "openssl rand"],
        ),
        (
            &["--jwt-secret", long, "--api-keys", "short-key-value"],
            &["--api-keys", "at least 16 characters"],
        ),
        (
            &[
                "--jwt-secret",
                long,
                "--publish-api-keys",
                "0123456789abcdef,abc",
            ],
            &["--publish-api-keys", "API key 2", "at least 16 characters"],
        ),
    ];
    for (args, needles) in cases {
        let out = bin()
            .args(["--listen", "127.0.0.1:0"])
            .args(args)
            .output()
            .expect("run");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} started");
        for needle in needles {
            assert!(
                stderr.contains(needle),
                "{args:?}: {needle} missing: {stderr}"
            );
        }
        for secret in ["tiny-secret-value", "short-key-value", "abc\n"] {
            assert!(
                !stderr.contains(secret),
                "{args:?} shows a secret: {stderr}"
            );
        }
        assert!(out.stdout.is_empty(), "nothing was served");
    }

    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let dir = temp_dir("writable-key");
        let pem = dir.join("key.pem");
        let fixture = std::fs::read(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../../tests/tests/fixtures/rs256-test-public.pem"),
        )
        .expect("fixture");
        std::fs::write(&pem, fixture).expect("write");
        std::fs::set_permissions(&pem, std::fs::Permissions::from_mode(0o666)).expect("chmod");
        let out = bin()
            .args(["--listen", "127.0.0.1:0", "--jwt-public-key"])
            .arg(&pem)
            .output()
            .expect("run");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        assert!(stderr.contains("chmod go-w"), "{stderr}");
        std::fs::set_permissions(&pem, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let mut cmd = bin();
        cmd.args(["--listen", "127.0.0.1:0", "--jwt-public-key"])
            .arg(&pem);
        let server = ServerProcess::spawn(cmd).expect("a key only its owner can write");
        server.sigterm();
        let _ = std::fs::remove_dir_all(dir);
    }
}
