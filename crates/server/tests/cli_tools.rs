//! The subcommands a newcomer uses around a running development server (issue 19):
//! `token` and `dev-credentials` read the server's credentials and never make new ones,
//! `tail` prints a user's stream as JSON lines and resumes across reconnections,
//! `publish` sends events and answers with typed exit codes, `check-token` says why a
//! token is refused, `genconfig` writes a file the server starts from, and the start-up
//! hint gives the full commands.

mod support;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use support::{ServerProcess, WAIT, bin, lines_of, run_to_exit, temp_dir, websocket};

/// A development server on a free port with its credentials in `dir`, and the lines it
/// printed after the address.
fn dev_server(dir: &Path, extra: &[&str]) -> (ServerProcess, PathBuf, Vec<String>) {
    let creds = dir.join("dev-credentials.json");
    let mut cmd = bin();
    cmd.args(["--listen", "127.0.0.1:0", "--dev-credentials-file"])
        .arg(&creds)
        .args(extra);
    let server = ServerProcess::spawn(cmd).expect("a development server");
    let mut hint = Vec::new();
    while let Ok(line) = server.lines.recv_timeout(WAIT) {
        let last = line.starts_with("demo page:");
        hint.push(line);
        if last {
            break;
        }
    }
    (server, creds, hint)
}

/// The binary with `--dev-credentials-file` and `--server` of `server`.
fn tool(sub: &str, server: &ServerProcess, creds: &Path, args: &[&str]) -> Command {
    let mut c = bin();
    c.arg(sub)
        .arg("--dev-credentials-file")
        .arg(creds)
        .arg("--server")
        .arg(format!("http://{}", server.addr))
        .args(args);
    c
}

fn output(mut cmd: Command, stdin: Option<&str>) -> (i32, String, String) {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    if let Some(text) = stdin {
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(text.as_bytes())
            .expect("write stdin");
    } else {
        drop(child.stdin.take());
    }
    let out = child.wait_with_output().expect("output");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A running `tail` whose stdout lines arrive on a channel.
struct Tail {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Tail {
    fn spawn(mut cmd: Command) -> Tail {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn tail");
        let lines = lines_of(child.stdout.take().expect("stdout"));
        Tail { child, lines }
    }

    /// The next frame printed, as JSON (each line must be one JSON object).
    fn next(&self) -> serde_json::Value {
        let line = self.lines.recv_timeout(WAIT).expect("a line from tail");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("not one JSON line: {line}: {e}"))
    }
}

impl Drop for Tail {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn run_lines(user: &str, run: &str) -> String {
    [
        format!(r#"{{"user_id":"{user}","type":"agent_started","run_id":"{run}","data":{{"agent_name":"triage"}}}}"#),
        format!(r#"{{"user_id":"{user}","type":"agent_thinking","run_id":"{run}","data":{{"thought":"Looking."}}}}"#),
        format!(r#"{{"user_id":"{user}","type":"tool_executing","run_id":"{run}","data":{{"tool_call_id":"tc1","tool_name":"search","arguments":{{}}}}}}"#),
        format!(r#"{{"user_id":"{user}","type":"tool_completed","run_id":"{run}","data":{{"tool_call_id":"tc1","tool_name":"search","result":"ok"}}}}"#),
        format!(r#"{{"user_id":"{user}","type":"agent_completed","run_id":"{run}","data":{{"result":"done"}}}}"#),
    ]
    .join("\n")
}

#[test]
fn token_and_dev_credentials_read_the_servers_file_and_never_create_one() {
    let dir = temp_dir("cli-token");
    let creds = dir.join("missing").join("dev-credentials.json");
    for sub in [
        &["token", "--user", "alice"][..],
        &["dev-credentials"][..],
        &["publish", "--user", "alice", "--type", "custom"][..],
        &["tail", "--user", "alice"][..],
    ] {
        let mut cmd = bin();
        cmd.args(sub).arg("--dev-credentials-file").arg(&creds);
        let (status, out, err) = run_to_exit(cmd, WAIT);
        assert!(status.is_some_and(|s| !s.success()), "{sub:?} succeeded");
        assert!(out.is_empty(), "{sub:?}: {out}");
        assert!(
            err.contains("no development credentials at") && err.contains("--dev-credentials-file"),
            "{sub:?}: {err}"
        );
    }
    assert!(!creds.exists(), "no command created credentials");
    assert!(!creds.parent().expect("dir").exists());

    let (server, creds, _) = dev_server(&dir, &[]);
    let file: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&creds).expect("the server wrote it")).expect("JSON");
    let mut cmd = bin();
    cmd.args(["dev-credentials", "--api-key", "--dev-credentials-file"])
        .arg(&creds);
    let (code, out, _) = output(cmd, None);
    assert_eq!(code, 0);
    assert_eq!(out.trim(), file["api_key"].as_str().expect("a key"));
    drop(server);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn the_start_up_hint_gives_the_full_commands() {
    let dir = temp_dir("cli-hint");
    let (server, creds, hint) = dev_server(&dir, &[]);
    let text = hint.join("\n");
    let creds = creds.display().to_string();
    let at = format!("--server http://{}", server.addr);
    // Built in a checkout's target/debug: the command a checkout runs it with.
    let bin_dir = Path::new(support::BIN)
        .parent()
        .expect("the binary's directory");
    let me = if bin_dir.ends_with("target/debug") {
        "cargo run -q -p agentwire-server --".to_owned()
    } else {
        support::BIN.to_owned()
    };
    for needle in [
        format!("development credentials: {creds}"),
        format!("{me} token --user alice --dev-credentials-file '{creds}'"),
        format!("{me} tail --user alice --dev-credentials-file '{creds}' {at}"),
        format!("{me} publish --user alice --type agent_started --run-id r1"),
        format!("{me} dev-credentials --api-key"),
    ] {
        assert!(text.contains(&needle), "{needle} missing from:\n{text}");
    }
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn tail_prints_a_published_run_as_json_lines_and_resumes_after_a_reconnection() {
    let dir = temp_dir("cli-tail");
    let (server, creds, _) = dev_server(
        &dir,
        &["--max-connections-per-user", "1", "--resume-wait", "0"],
    );
    let tail = Tail::spawn(tool("tail", &server, &creds, &["--user", "alice"]));
    let hello = tail.next();
    assert_eq!(hello["type"], "connection_established");
    assert_eq!(hello["user_id"], "alice");

    let (code, out, err) = output(
        tool("publish", &server, &creds, &["--file", "-"]),
        Some(&run_lines("alice", "r1")),
    );
    assert_eq!(code, 0, "{out}{err}");
    let answer: serde_json::Value = serde_json::from_str(out.trim()).expect("the API's answer");
    assert_eq!(answer["results"].as_array().map(Vec::len), Some(5));
    let kinds: Vec<String> = (1..=5)
        .map(|seq| {
            let frame = tail.next();
            assert_eq!(frame["seq"], seq);
            frame["type"].as_str().expect("type").to_owned()
        })
        .collect();
    assert_eq!(
        kinds,
        [
            "agent_started",
            "agent_thinking",
            "tool_executing",
            "tool_completed",
            "agent_completed"
        ]
    );

    // Another connection of alice's evicts tail's (one per user): tail reconnects, resumes
    // after seq 5, and evicts that one in turn.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let token = {
        let mut cmd = bin();
        cmd.args(["token", "--user", "alice", "--dev-credentials-file"])
            .arg(&creds);
        output(cmd, None).1.trim().to_owned()
    };
    let other = rt.block_on(websocket(server.addr, &token));
    let again = tail.next();
    assert_eq!(again["type"], "connection_established", "{again}");
    assert_eq!(again["resumed"], true, "{again}");
    drop(other);
    let (code, _, err) = output(
        tool(
            "publish",
            &server,
            &creds,
            &[
                "--user",
                "alice",
                "--type",
                "custom",
                "--data",
                r#"{"name":"after","value":1}"#,
            ],
        ),
        None,
    );
    assert_eq!(code, 0, "{err}");
    let next = tail.next();
    assert_eq!(next["seq"], 6, "no event twice, none missed: {next}");
    assert_eq!(next["data"]["name"], "after");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn tail_exits_cleanly_on_ctrl_c_and_after_count_events() {
    let dir = temp_dir("cli-tail-stop");
    let (server, creds, _) = dev_server(&dir, &["--resume-wait", "0"]);
    let mut tail = Tail::spawn(tool("tail", &server, &creds, &["--user", "bob"]));
    assert_eq!(tail.next()["type"], "connection_established");
    let status = Command::new("kill")
        .args(["-INT", &tail.child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let mut exited = None;
    for _ in 0..(WAIT.as_millis() / 20) {
        if let Some(s) = tail.child.try_wait().expect("try_wait") {
            exited = Some(s);
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(exited.is_some_and(|s| s.success()), "{exited:?}");

    let (code, _, err) = output(
        tool(
            "publish",
            &server,
            &creds,
            &[
                "--json",
                &format!("[{}]", run_lines("bob", "r1").replace('\n', ",")),
            ],
        ),
        None,
    );
    assert_eq!(code, 0, "{err}");
    let (status, out, _) = run_to_exit(
        tool("tail", &server, &creds, &["--user", "bob", "--count", "2"]),
        WAIT,
    );
    assert!(status.is_some_and(|s| s.success()), "{status:?}");
    assert_eq!(out.lines().count(), 3, "hello and two events: {out}");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn publish_answers_with_a_typed_exit_code() {
    let dir = temp_dir("cli-publish");
    let (server, creds, _) = dev_server(&dir, &[]);
    let publish = |args: &[&str], key: Option<&str>| {
        let mut cmd = tool("publish", &server, &creds, args);
        if let Some(key) = key {
            cmd.env("AGENTWIRE_API_KEY", key);
        }
        output(cmd, None)
    };
    // A run event of a run never started: 409, exit 5, the answer on stdout.
    let (code, out, err) = publish(
        &[
            "--user",
            "carol",
            "--type",
            "agent_thinking",
            "--run-id",
            "r9",
            "--data",
            r#"{"thought":"x"}"#,
        ],
        None,
    );
    assert_eq!(code, 5, "{out}{err}");
    assert!(out.contains(r#""error":"run_violation""#), "{out}");
    assert!(err.contains("409"), "{err}");
    // A missing field: 422, exit 5, naming the field.
    let (code, _, err) = publish(
        &[
            "--user",
            "carol",
            "--type",
            "agent_thinking",
            "--run-id",
            "r9",
        ],
        None,
    );
    assert_eq!(code, 5);
    assert!(err.contains("data.thought"), "{err}");
    // A wrong key: exit 4.
    let (code, _, _) = publish(
        &["--user", "carol", "--type", "custom"],
        Some("not-the-key-at-all"),
    );
    assert_eq!(code, 4);
    // Bad input never reaches the server: exit 2.
    let (code, _, err) = publish(&["--json", "{not json"], None);
    assert_eq!(code, 2, "{err}");
    let (code, _, err) = output(
        tool("publish", &server, &creds, &["--file", "-"]),
        Some("{\"user_id\":\"carol\"}\n[1]\n"),
    );
    assert_eq!(code, 2);
    assert!(err.contains("-:2"), "names the line: {err}");
    // No server: exit 3.
    let addr = server.addr;
    drop(server);
    let mut cmd = bin();
    cmd.args([
        "publish",
        "--api-key",
        "0123456789abcdef",
        "--user",
        "carol",
        "--type",
        "custom",
    ])
    .arg("--server")
    .arg(format!("http://{addr}"));
    let (code, _, err) = output(cmd, None);
    assert_eq!(code, 3, "{err}");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn check_token_says_whom_a_token_names_and_why_it_is_refused() {
    let dir = temp_dir("cli-check");
    let secret = "a production secret of 32 bytes!";
    let check = |token: &str| {
        let mut cmd = bin();
        cmd.args(["check-token", token])
            .env("AGENTWIRE_JWT_SECRET", secret);
        output(cmd, None)
    };
    let mint = |secret: &str, user: &str| {
        let mut cmd = bin();
        cmd.args(["token", "--user", user, "--jwt-secret", secret]);
        output(cmd, None).1.trim().to_owned()
    };
    let (code, out, _) = check(&mint(secret, "alice"));
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("subject (sub): alice"), "{out}");
    assert!(out.contains("accepted: user alice until"), "{out}");

    let (code, out, _) = check(&mint("another secret of thirty-two bytes", "mallory"));
    assert_eq!(code, 1);
    assert!(out.contains("subject (sub): mallory"), "{out}");
    assert!(
        out.contains("refused:") && out.contains("signature"),
        "{out}"
    );

    // The development server's own credentials are read, not created.
    let (server, creds, _) = dev_server(&dir, &[]);
    let mut cmd = bin();
    cmd.args(["token", "--user", "dave", "--dev-credentials-file"])
        .arg(&creds);
    let token = output(cmd, None).1.trim().to_owned();
    let mut cmd = bin();
    cmd.arg("--dev-credentials-file")
        .arg(&creds)
        .args(["check-token", &token]);
    let (code, out, err) = output(cmd, None);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("accepted: user dave"), "{out}");
    drop(server);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn the_server_starts_from_the_file_genconfig_writes() {
    let dir = temp_dir("cli-genconfig");
    let (code, text, err) = output(
        {
            let mut c = bin();
            c.arg("genconfig");
            c
        },
        None,
    );
    assert_eq!(code, 0, "{err}");
    assert!(text.contains("\nmax-connections = 10000\n"), "{text}");
    assert!(
        text.contains("# jwt-secret = "),
        "secrets stay commented out"
    );
    // The operator edits the address; the rest stays as written.
    let file = dir.join("agentwire.toml");
    std::fs::write(
        &file,
        text.replace(
            "\nlisten = \"127.0.0.1:8080\"\n",
            "\nlisten = \"127.0.0.1:0\"\n",
        ),
    )
    .expect("write");
    let mut cmd = bin();
    cmd.arg("--config")
        .arg(&file)
        .arg("--dev-credentials-file")
        .arg(dir.join("c.json"));
    let server = ServerProcess::spawn(cmd).expect("starts from the generated file");
    server.sigterm();
    let _ = std::fs::remove_dir_all(dir);
}
