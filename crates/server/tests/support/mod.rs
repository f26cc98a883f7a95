//! What the tests of the `agentwire-server` binary share: the binary with a clean
//! environment, a running server process (its address read from its first line), and a
//! plain HTTP status check.

#![allow(dead_code, reason = "each test binary uses a part")]

pub(crate) mod nodes;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub(crate) const BIN: &str = env!("CARGO_BIN_EXE_agentwire-server");
pub(crate) const WAIT: Duration = Duration::from_secs(15);

pub(crate) fn temp_dir(name: &str) -> PathBuf {
    let dir =
        std::env::temp_dir().join(format!("agentwire-bin-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

/// The binary with a clean environment (no inherited `AGENTWIRE_*`).
pub(crate) fn bin() -> Command {
    let mut c = Command::new(BIN);
    c.env_clear().env("RUST_LOG", "warn");
    c
}

/// The lines a child process writes to `stdout`, as they come (read on a thread of
/// their own).
pub(crate) fn lines_of(stdout: std::process::ChildStdout) -> mpsc::Receiver<String> {
    let (tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    lines
}

/// The most of a child's stderr kept (the latest bytes): enough for every warning of a
/// test, bounded for one that logs in a loop.
const STDERR_KEPT: usize = 1 << 20;

/// What a child process writes to `stderr`, read on a thread of its own as it comes, so
/// a server that logs a lot never blocks on a full pipe; the latest [`STDERR_KEPT`]
/// bytes are kept.
pub(crate) struct Stderr {
    text: Arc<Mutex<Vec<u8>>>,
    reader: Option<JoinHandle<()>>,
}

impl Stderr {
    fn drain(stderr: std::process::ChildStderr) -> Stderr {
        use std::io::Read;
        let text = Arc::new(Mutex::new(Vec::new()));
        let kept = Arc::clone(&text);
        let reader = std::thread::spawn(move || {
            let mut stderr = stderr;
            let mut buf = [0u8; 8192];
            while let Ok(n @ 1..) = stderr.read(&mut buf) {
                let mut text = kept.lock().unwrap_or_else(|p| p.into_inner());
                text.extend_from_slice(&buf[..n]);
                if text.len() > STDERR_KEPT {
                    let cut = text.len() - STDERR_KEPT;
                    text.drain(..cut);
                }
            }
        });
        Stderr {
            text,
            reader: Some(reader),
        }
    }

    /// What was written so far.
    pub(crate) fn so_far(&self) -> String {
        let text = self.text.lock().unwrap_or_else(|p| p.into_inner());
        String::from_utf8_lossy(&text).into_owned()
    }

    /// Everything written, once the process has closed its stderr (it has exited).
    pub(crate) fn until_exit(&mut self) -> String {
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
        self.so_far()
    }
}

/// A running server process; killed on drop if still running.
pub(crate) struct ServerProcess {
    pub(crate) child: Child,
    pub(crate) lines: mpsc::Receiver<String>,
    pub(crate) stderr: Stderr,
    pub(crate) addr: SocketAddr,
}

impl ServerProcess {
    pub(crate) fn spawn(mut cmd: Command) -> Result<ServerProcess, String> {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn the binary");
        let lines = lines_of(child.stdout.take().expect("stdout"));
        let mut stderr = Stderr::drain(child.stderr.take().expect("stderr"));
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match lines.recv_timeout(left) {
                Ok(line) => {
                    if let Some(rest) = line.split("listening on ").nth(1) {
                        let addr = rest
                            .split_whitespace()
                            .next()
                            .and_then(|a| a.parse().ok())
                            .expect("an address after `listening on`");
                        return Ok(ServerProcess {
                            child,
                            lines,
                            stderr,
                            addr,
                        });
                    }
                }
                Err(_) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(stderr.until_exit());
                }
            }
        }
    }

    pub(crate) fn sigterm(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success());
    }

    pub(crate) fn wait_exit(&mut self, within: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The status of `GET path` on a new connection (0 when there is no answer).
pub(crate) fn get_status(addr: SocketAddr, path: &str) -> u16 {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect_timeout(&addr, WAIT) else {
        return 0;
    };
    let _ = s.set_read_timeout(Some(WAIT));
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    if s.write_all(request.as_bytes()).is_err() {
        return 0;
    }
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    answer
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0)
}

/// The binary under an open-file limit of `nofile` (soft and hard), set by the shell that
/// then becomes it: `sh -c 'ulimit -n N && exec …'` (the workspace forbids the `unsafe` a
/// pre-exec hook would need).
pub(crate) fn bin_with_nofile(nofile: u64) -> Command {
    let mut c = Command::new("/bin/sh");
    c.env_clear()
        .env("RUST_LOG", "warn")
        .arg("-c")
        .arg(format!("ulimit -n {nofile} && exec \"$0\" \"$@\""))
        .arg(BIN);
    c
}

/// Runs `cmd` until it exits, at most `within` (then it is killed): whether it exited by
/// itself, its status, and what it wrote to stdout and stderr.
pub(crate) fn run_to_exit(
    mut cmd: Command,
    within: Duration,
) -> (Option<ExitStatus>, String, String) {
    use std::io::Read;
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn the binary");
    let deadline = Instant::now() + within;
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break Some(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut out = String::new();
    let mut err = String::new();
    if let Some(mut s) = child.stdout.take() {
        let _ = s.read_to_string(&mut out);
    }
    if let Some(mut s) = child.stderr.take() {
        let _ = s.read_to_string(&mut err);
    }
    (status, out, err)
}

/// A WebSocket to `ws://{addr}/ws` with `Authorization: Bearer <token>`, once its
/// `connection_established` frame is read.
pub(crate) async fn websocket(
    addr: SocketAddr,
    token: &str,
) -> tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>> {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    use tokio_tungstenite::tungstenite::http::HeaderValue;
    let mut req = format!("ws://{addr}/ws")
        .into_client_request()
        .expect("request");
    req.headers_mut().insert(
        "authorization",
        HeaderValue::from_str(&format!("Bearer {token}")).expect("header"),
    );
    let (mut ws, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(req))
        .await
        .expect("connect in time")
        .expect("connects");
    let hello = tokio::time::timeout(WAIT, ws.next())
        .await
        .expect("hello in time");
    assert!(
        matches!(&hello, Some(Ok(Message::Text(t))) if t.contains("connection_established")),
        "{hello:?}"
    );
    ws
}
