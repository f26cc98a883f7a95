//! Test support (feature `testing`): private `redis-server` processes on free loopback
//! ports — started, killed, restarted empty, paused (`SIGSTOP`) and resumed (`SIGCONT`) —
//! a 3-master Redis Cluster, the machine's shared Redis, and the rule for a test that
//! cannot get its Redis.
//!
//! Every process is stopped by its PID when its handle drops, also when a test panics.
//! Nothing here runs in production builds.
//!
//! ```no_run
//! use agentwire_redis::testing::{self, RedisServer};
//!
//! let Some(server) = testing::require("this test", RedisServer::start()) else {
//!     return; // outside CI, without redis-server: said why on stderr
//! };
//! server.pause().expect("SIGSTOP");
//! server.resume().expect("SIGCONT");
//! ```

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The longest a test waits for a Redis process to answer or a cluster to form.
pub const START_WAIT: Duration = Duration::from_secs(20);

/// Under `CI=true`, what a test needs is required: `Err` panics with the reason. Elsewhere
/// `Err` prints why the test does not run (on stderr, where `cargo test` shows it) and
/// answers `None`, and the test returns.
///
/// # Panics
/// When `CI=true` and `got` is `Err`.
pub fn require<T>(what: &str, got: Result<T, String>) -> Option<T> {
    match got {
        Ok(v) => Some(v),
        Err(why) if std::env::var("CI").as_deref() == Ok("true") => {
            panic!("{what} cannot run in CI: {why}")
        }
        Err(why) => {
            eprintln!("skipped: {what}: {why} (it runs where this is available, and in CI)");
            None
        }
    }
}

/// The machine's shared Redis: `AGENTWIRE_TEST_REDIS_URL` or `redis://127.0.0.1:6379`, if
/// it answers `PING`. Tests that use it give every broker a key prefix of their own
/// ([`unique_prefix`]) and never kill, pause or flush it.
///
/// # Errors
/// Why it cannot be used.
pub fn shared_redis() -> Result<String, String> {
    let url = std::env::var("AGENTWIRE_TEST_REDIS_URL")
        .unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned());
    let addr = url
        .strip_prefix("redis://")
        .map(|rest| rest.trim_end_matches('/'))
        .ok_or_else(|| format!("{url} is not a redis:// URL"))?;
    ping(addr).map_err(|e| format!("no Redis answers at {url}: {e}"))?;
    Ok(url)
}

/// A key prefix no other test shares: `agentwire-test:<label>:<random>:`.
pub fn unique_prefix(label: &str) -> String {
    format!("agentwire-test:{label}:{:016x}:", rand::random::<u64>())
}

/// Sends `PING` to `addr` (host:port) and expects `+PONG`.
fn ping(addr: &str) -> std::io::Result<()> {
    let addr = addr
        .parse()
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("{e}")))?;
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_millis(500))?;
    stream.set_read_timeout(Some(Duration::from_millis(500)))?;
    stream.write_all(b"PING\r\n")?;
    let mut reply = [0u8; 7];
    stream.read_exact(&mut reply)?;
    if &reply == b"+PONG\r\n" {
        Ok(())
    } else {
        Err(std::io::Error::other(format!(
            "answered {:?}",
            String::from_utf8_lossy(&reply)
        )))
    }
}

/// A loopback port nothing listens on now, below 55,535 so that a cluster node's bus
/// port (port + 10,000) exists too; both are checked free.
fn free_port() -> Result<u16, String> {
    for _ in 0..50 {
        let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
        let port = listener.local_addr().map_err(|e| e.to_string())?.port();
        if port < 55_535 && TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            return Ok(port);
        }
    }
    Err("found no free pair of loopback ports".into())
}

/// Whether `redis-server` and `redis-cli` run here.
///
/// # Errors
/// Which one is missing.
pub fn redis_binaries() -> Result<(), String> {
    for bin in ["redis-server", "redis-cli"] {
        Command::new(bin)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map_err(|e| format!("`{bin}` does not run ({e}); install redis-server"))?;
    }
    Ok(())
}

/// A private `redis-server` on a free loopback port, with no persistence (`--save ''`,
/// `--appendonly no`): killed and started again it comes back empty — or, started with
/// [`start_persistent`](Self::start_persistent), with an append-only file synced on every
/// write, so [`restart`](Self::restart) brings back everything it acknowledged. Stopped by
/// PID on drop.
#[derive(Debug)]
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    dir: PathBuf,
    cluster: bool,
    persistent: bool,
    tls: Option<(u16, TlsFiles)>,
}

/// The files of a TLS listener ([`RedisServer::start_tls`]), all PEM.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// The server's certificate.
    pub cert: PathBuf,
    /// Its private key.
    pub key: PathBuf,
    /// The CA that signs the client certificates it accepts.
    pub ca: PathBuf,
    /// Whether a client must present a certificate signed by `ca` (`tls-auth-clients`).
    pub require_client_certificate: bool,
}

impl RedisServer {
    /// Starts a standalone server and waits until it answers.
    ///
    /// # Errors
    /// Why it could not be started (no binary, no port, no answer within
    /// [`START_WAIT`]).
    pub fn start() -> Result<Self, String> {
        Self::spawn(false, false, None)
    }

    /// Starts a standalone server that also listens for TLS on a second free port
    /// ([`tls_url`](Self::tls_url)), with the certificate, key and client CA of `files`,
    /// and waits until it answers (on its plain port).
    ///
    /// # Errors
    /// As [`start`](Self::start).
    pub fn start_tls(files: TlsFiles) -> Result<Self, String> {
        Self::spawn(false, false, Some(files))
    }

    /// Starts a standalone server that keeps its data across [`restart`](Self::restart)
    /// (`--appendonly yes --appendfsync always`) and waits until it answers.
    ///
    /// # Errors
    /// As [`start`](Self::start).
    pub fn start_persistent() -> Result<Self, String> {
        Self::spawn(false, true, None)
    }

    /// Starts a server in cluster mode (not yet part of a cluster).
    fn start_cluster_node() -> Result<Self, String> {
        Self::spawn(true, false, None)
    }

    fn spawn(cluster: bool, persistent: bool, tls: Option<TlsFiles>) -> Result<Self, String> {
        redis_binaries()?;
        let port = free_port()?;
        let tls = match tls {
            Some(files) => Some((free_port()?, files)),
            None => None,
        };
        let dir = std::env::temp_dir().join(format!(
            "agentwire-redis-{}-{port}-{:08x}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let mut server = RedisServer {
            child: None,
            port,
            dir,
            cluster,
            persistent,
            tls,
        };
        server.launch()?;
        Ok(server)
    }

    fn launch(&mut self) -> Result<(), String> {
        let mut cmd = Command::new("redis-server");
        cmd.args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .args(["--save", ""])
            .args(["--appendonly", if self.persistent { "yes" } else { "no" }])
            .args(["--appendfsync", "always"])
            .args(["--protected-mode", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if let Some((port, files)) = &self.tls {
            cmd.args(["--tls-port", &port.to_string()])
                .arg("--tls-cert-file")
                .arg(&files.cert)
                .arg("--tls-key-file")
                .arg(&files.key)
                .arg("--tls-ca-cert-file")
                .arg(&files.ca)
                .args([
                    "--tls-auth-clients",
                    if files.require_client_certificate {
                        "yes"
                    } else {
                        "no"
                    },
                ]);
        }
        if self.cluster {
            cmd.args(["--cluster-enabled", "yes"])
                .arg("--cluster-config-file")
                .arg(self.dir.join("nodes.conf"))
                .args(["--cluster-node-timeout", "2000"]);
        }
        let child = cmd
            .spawn()
            .map_err(|e| format!("cannot start redis-server: {e}"))?;
        self.child = Some(child);
        let deadline = Instant::now() + START_WAIT;
        let addr = self.addr();
        loop {
            match ping(&addr) {
                Ok(()) => return Ok(()),
                Err(e) if Instant::now() > deadline => {
                    return Err(format!("redis-server on {addr} did not answer: {e}"));
                }
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }

    /// `127.0.0.1:<port>`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://{}", self.addr())
    }

    /// `rediss://127.0.0.1:<TLS port>`, for a server started with
    /// [`start_tls`](Self::start_tls).
    pub fn tls_url(&self) -> Option<String> {
        self.tls
            .as_ref()
            .map(|(port, _)| format!("rediss://127.0.0.1:{port}"))
    }

    /// The port it listens on (the same after [`restart_empty`](Self::restart_empty)).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    fn signal(&self, signal: &str) -> Result<(), String> {
        let pid = self.pid().ok_or("the server is not running")?;
        let status = Command::new("kill")
            .args([signal, &pid.to_string()])
            .status()
            .map_err(|e| format!("kill {signal} {pid}: {e}"))?;
        if status.success() {
            Ok(())
        } else {
            Err(format!("kill {signal} {pid} failed: {status}"))
        }
    }

    /// Kills the process (`SIGKILL`) and waits for it; idempotent.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kills the process and starts a new one on the same port, empty (no persistence).
    ///
    /// # Errors
    /// Why the new process did not answer.
    pub fn restart_empty(&mut self) -> Result<(), String> {
        self.kill();
        let _ = std::fs::remove_file(self.dir.join("nodes.conf"));
        if self.persistent {
            let _ = std::fs::remove_dir_all(self.dir.join("appendonlydir"));
        }
        self.launch()
    }

    /// Starts the process again on the same port after [`kill`](Self::kill) (killing it
    /// first if it runs), with its data when it is persistent
    /// ([`start_persistent`](Self::start_persistent)).
    ///
    /// # Errors
    /// Why the new process did not answer.
    pub fn restart(&mut self) -> Result<(), String> {
        self.kill();
        self.launch()
    }

    /// Stops the process (`SIGSTOP`): connections stay open and nothing answers.
    ///
    /// # Errors
    /// When the signal could not be sent.
    pub fn pause(&self) -> Result<(), String> {
        self.signal("-STOP")
    }

    /// Lets a paused process go on (`SIGCONT`).
    ///
    /// # Errors
    /// When the signal could not be sent.
    pub fn resume(&self) -> Result<(), String> {
        self.signal("-CONT")
    }

    /// Runs `redis-cli -p <port> <args…>` and returns its output.
    ///
    /// # Errors
    /// When `redis-cli` fails or prints an error.
    pub fn cli(&self, args: &[&str]) -> Result<String, String> {
        cli(self.port, args)
    }
}

fn cli(port: u16, args: &[&str]) -> Result<String, String> {
    let out = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("redis-cli: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() || text.starts_with("ERR") || text.starts_with("(error)") {
        return Err(format!(
            "redis-cli {args:?}: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(text)
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        // A paused process dies of SIGKILL too.
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A private Redis Cluster of masters without replicas, each a [`RedisServer`] in cluster
/// mode, joined with `redis-cli --cluster create`. Stopped by PID on drop.
#[derive(Debug)]
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// Starts `masters` nodes (3 is the least Redis accepts), creates the cluster and
    /// waits until every node reports `cluster_state:ok`.
    ///
    /// # Errors
    /// Why the cluster could not be formed within [`START_WAIT`].
    pub fn start(masters: usize) -> Result<Self, String> {
        let nodes = (0..masters)
            .map(|_| RedisServer::start_cluster_node())
            .collect::<Result<Vec<_>, _>>()?;
        let addrs: Vec<String> = nodes.iter().map(RedisServer::addr).collect();
        let mut args: Vec<&str> = vec!["--cluster", "create"];
        args.extend(addrs.iter().map(String::as_str));
        args.extend(["--cluster-replicas", "0", "--cluster-yes"]);
        cli(nodes[0].port, &args)?;
        let deadline = Instant::now() + START_WAIT;
        for node in &nodes {
            loop {
                let info = node.cli(&["CLUSTER", "INFO"]).unwrap_or_default();
                if info.contains("cluster_state:ok") {
                    break;
                }
                if Instant::now() > deadline {
                    return Err(format!(
                        "node {} did not reach cluster_state:ok",
                        node.addr()
                    ));
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        Ok(RedisCluster { nodes })
    }

    /// The nodes' `redis://` URLs.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
    }

    /// The nodes, to signal or query one.
    pub fn nodes(&self) -> &[RedisServer] {
        &self.nodes
    }

    /// Mutable access to the nodes (to kill one).
    pub fn nodes_mut(&mut self) -> &mut [RedisServer] {
        &mut self.nodes
    }
}

/// A private `redis-server` listening for TLS beside its plain port, with a certificate
/// (for `localhost` and `127.0.0.1`) from a CA made for it, and a client certificate from
/// the same CA, all written as PEM files in a directory removed on drop. The plain port is
/// for setting up and cleaning up; clients under test use [`url`](Self::url).
#[derive(Debug)]
pub struct TlsRedis {
    /// The server (its plain port: [`RedisServer::addr`]).
    pub server: RedisServer,
    /// The CA's certificate.
    pub ca_pem: String,
    /// The same, as a file.
    pub ca_file: PathBuf,
    /// A client certificate from the CA, and its key.
    pub client_cert_pem: String,
    /// The client certificate's private key.
    pub client_key_pem: String,
    /// The client certificate, as a file.
    pub client_cert_file: PathBuf,
    /// Its key, as a file.
    pub client_key_file: PathBuf,
    dir: PathBuf,
}

impl TlsRedis {
    /// Starts it; with `require_client_certificate`, Redis refuses a client without a
    /// certificate from the CA.
    ///
    /// # Errors
    /// Why it could not be started (as [`RedisServer::start`]), or a certificate not made.
    pub fn start(require_client_certificate: bool) -> Result<Self, String> {
        use rcgen::{
            BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
            SanType,
        };
        let e = |e: rcgen::Error| e.to_string();
        let ca_key = KeyPair::generate().map_err(e)?;
        let mut ca = CertificateParams::new(Vec::<String>::new()).map_err(e)?;
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(DnType::CommonName, "agentwire test CA");
        let ca_cert = ca.self_signed(&ca_key).map_err(e)?;
        let leaf = |purpose: ExtendedKeyUsagePurpose| -> Result<(String, String), String> {
            let key = KeyPair::generate().map_err(e)?;
            let mut params = CertificateParams::new(vec!["localhost".to_owned()]).map_err(e)?;
            params
                .subject_alt_names
                .push(SanType::IpAddress(std::net::Ipv4Addr::LOCALHOST.into()));
            params.extended_key_usages = vec![purpose];
            let cert = params.signed_by(&key, &ca_cert, &ca_key).map_err(e)?;
            Ok((cert.pem(), key.serialize_pem()))
        };
        let (server_cert, server_key) = leaf(ExtendedKeyUsagePurpose::ServerAuth)?;
        let (client_cert_pem, client_key_pem) = leaf(ExtendedKeyUsagePurpose::ClientAuth)?;
        let dir = std::env::temp_dir().join(format!(
            "agentwire-redis-tls-{}-{:08x}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let write = |name: &str, pem: &str| -> Result<PathBuf, String> {
            let path = dir.join(name);
            std::fs::write(&path, pem).map_err(|e| format!("{}: {e}", path.display()))?;
            Ok(path)
        };
        let ca_pem = ca_cert.pem();
        let files = TlsFiles {
            cert: write("server.pem", &server_cert)?,
            key: write("server.key", &server_key)?,
            ca: write("ca.pem", &ca_pem)?,
            require_client_certificate,
        };
        let ca_file = files.ca.clone();
        let client_cert_file = write("client.pem", &client_cert_pem)?;
        let client_key_file = write("client.key", &client_key_pem)?;
        let server = RedisServer::start_tls(files)?;
        Ok(TlsRedis {
            server,
            ca_pem,
            ca_file,
            client_cert_pem,
            client_key_pem,
            client_cert_file,
            client_key_file,
            dir,
        })
    }

    /// `rediss://127.0.0.1:<TLS port>`.
    pub fn url(&self) -> String {
        self.server.tls_url().expect("started with TLS")
    }

    /// Trusts the CA and presents the client certificate.
    pub fn client_tls(&self) -> crate::RedisTls {
        crate::RedisTls::new()
            .with_root_ca_pem(self.ca_pem.clone())
            .and_then(|t| {
                t.with_client_identity_pem(
                    self.client_cert_pem.clone(),
                    self.client_key_pem.clone(),
                )
            })
            .expect("the certificates made here are valid")
    }
}

impl Drop for TlsRedis {
    fn drop(&mut self) {
        // The server first: it reads the files.
        self.server.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
