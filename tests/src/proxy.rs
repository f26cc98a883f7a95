//! Reverse proxies in front of a test server: nginx and HAProxy started as processes of
//! their own on free ports, each from the example configuration in `packaging/` with only
//! its ports, upstream and TLS lines replaced (the tests speak plain HTTP to the proxy).

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tokio::time::Instant;

use crate::{WAIT, command_succeeds, http_request, temp_dir, workspace_root};

/// A port that was free a moment ago on `127.0.0.1` (the kernel's pick for port 0).
pub fn free_port() -> u16 {
    TcpListener::bind(("127.0.0.1", 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Where `program` (`nginx`, `haproxy`) is: on `PATH`, or else in `/usr/sbin` (where
/// Debian puts both, and which a user's `PATH` may lack).
pub fn program_path(program: &str, version_flag: &str) -> Option<PathBuf> {
    let sbin = PathBuf::from("/usr/sbin").join(program);
    if command_succeeds(program, &[version_flag]) {
        Some(PathBuf::from(program))
    } else if command_succeeds(&sbin.to_string_lossy(), &[version_flag]) {
        Some(sbin)
    } else {
        None
    }
}

/// What is missing to run `program`, if anything; for [`crate::prerequisite`].
pub fn missing_program(program: &str, version_flag: &str) -> Option<String> {
    program_path(program, version_flag).is_none().then(|| {
        format!("`{program}` is not on PATH nor in /usr/sbin (`apt-get install -y {program}`; .ci/run does)")
    })
}

/// The text of `packaging/<path>`.
pub fn packaged(path: &str) -> String {
    let file = workspace_root().join("packaging").join(path);
    std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()))
}

/// `text` with each line whose trimmed form is `from` replaced by `to` (kept at the line's
/// indentation; dropped when `to` is `None`). Each `from` must match exactly once, so a
/// change to the example that this substitution no longer fits fails the test.
pub fn substitute(text: &str, rules: &[(&str, Option<&str>)]) -> String {
    let mut hits = vec![0usize; rules.len()];
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        let trimmed = line.trim();
        match rules.iter().position(|(from, _)| *from == trimmed) {
            Some(i) => {
                hits[i] += 1;
                if let Some(to) = rules[i].1 {
                    let indent = &line[..line.len() - line.trim_start().len()];
                    out.push_str(indent);
                    out.push_str(to);
                    out.push('\n');
                }
            }
            None => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    for ((from, _), n) in rules.iter().zip(hits) {
        assert_eq!(n, 1, "the line `{from}` appears {n} times in the example");
    }
    out
}

/// A proxy process serving on `addr`, stopped (by its PID) and its directory removed on
/// drop.
#[derive(Debug)]
pub struct ProxyProcess {
    /// Where the proxy listens.
    pub addr: SocketAddr,
    name: &'static str,
    child: Child,
    dir: PathBuf,
}

impl ProxyProcess {
    /// Starts nginx from `packaging/nginx/agentwire.conf` in front of `upstream`: a plain
    /// listener instead of `listen 443 ssl` and its certificate lines, the upstream's
    /// address instead of `127.0.0.1:8080`. The rest of the main configuration (pid file,
    /// logs, temporary paths) lives in a temporary directory.
    pub fn nginx(upstream: SocketAddr) -> ProxyProcess {
        let dir = temp_dir("nginx");
        let port = free_port();
        let listen = format!("listen 127.0.0.1:{port};");
        let server = format!("server {upstream};");
        let site = substitute(
            &packaged("nginx/agentwire.conf"),
            &[
                ("listen 443 ssl;", Some(&listen)),
                ("ssl_certificate     /etc/nginx/tls/agentwire.crt;", None),
                ("ssl_certificate_key /etc/nginx/tls/agentwire.key;", None),
                ("server 127.0.0.1:8080;", Some(&server)),
            ],
        );
        std::fs::write(dir.join("agentwire.conf"), site).expect("write the site");
        let d = dir.display();
        // One process (no master and workers), so stopping it by its PID leaves nothing
        // behind, and it stays the test's user (no switch to a worker user when root).
        let main = format!(
            "master_process off;\n\
             pid {d}/nginx.pid;\n\
             events {{ worker_connections 256; }}\n\
             http {{\n\
             access_log {d}/access.log;\n\
             client_body_temp_path {d}/body;\n\
             proxy_temp_path {d}/proxy;\n\
             fastcgi_temp_path {d}/fastcgi;\n\
             uwsgi_temp_path {d}/uwsgi;\n\
             scgi_temp_path {d}/scgi;\n\
             include {d}/agentwire.conf;\n\
             }}\n"
        );
        std::fs::write(dir.join("nginx.conf"), main).expect("write nginx.conf");
        let mut cmd = Command::new(program_path("nginx", "-v").expect("nginx is installed"));
        cmd.arg("-p")
            .arg(&dir)
            .arg("-c")
            .arg(dir.join("nginx.conf"))
            .arg("-e")
            .arg(dir.join("error.log"))
            .args(["-g", "daemon off;"]);
        ProxyProcess::spawn("nginx", cmd, dir, port)
    }

    /// Starts HAProxy from `packaging/haproxy/agentwire.cfg` in front of `upstream`: a
    /// plain `bind` instead of the TLS one on `:443`, the upstream's address instead of
    /// `127.0.0.1:8080`; in the foreground (`-db`), one process.
    pub fn haproxy(upstream: SocketAddr) -> ProxyProcess {
        let dir = temp_dir("haproxy");
        let port = free_port();
        let bind = format!("bind 127.0.0.1:{port}");
        let server = format!("server a1 {upstream} check");
        let cfg = substitute(
            &packaged("haproxy/agentwire.cfg"),
            &[
                ("bind :443 ssl crt /etc/haproxy/agentwire.pem", Some(&bind)),
                ("server a1 127.0.0.1:8080 check", Some(&server)),
            ],
        );
        let file = dir.join("agentwire.cfg");
        std::fs::write(&file, cfg).expect("write agentwire.cfg");
        let mut cmd = Command::new(program_path("haproxy", "-v").expect("haproxy is installed"));
        cmd.arg("-db").arg("-f").arg(&file);
        ProxyProcess::spawn("haproxy", cmd, dir, port)
    }

    fn spawn(name: &'static str, mut cmd: Command, dir: PathBuf, port: u16) -> ProxyProcess {
        let log = std::fs::File::create(dir.join("output.txt")).expect("output file");
        let err = log.try_clone().expect("output file");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("{name} starts: {e}"));
        ProxyProcess {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            name,
            child,
            dir,
        }
    }

    /// What the proxy wrote (its output and, for nginx, its error log).
    pub fn output(&self) -> String {
        let read = |f: &str| std::fs::read_to_string(self.dir.join(f)).unwrap_or_default();
        format!("{}{}", read("output.txt"), read("error.log"))
    }

    /// Waits until `GET /readyz` through the proxy answers `200` (the proxy is up and
    /// routes to the server); fails the test with the proxy's output after [`WAIT`].
    pub async fn wait_ready(&mut self) {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("{} exited ({status}):\n{}", self.name, self.output());
            }
            if tokio::net::TcpStream::connect(self.addr).await.is_ok()
                && http_request(self.addr, "GET", "/readyz", None).await.status == 200
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{} did not route /readyz within the wait bound:\n{}",
                self.name,
                self.output()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for ProxyProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
