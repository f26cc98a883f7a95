//! `agentwire-e2e`: end-to-end tests of agentwire — a real server on `127.0.0.1:0` and real
//! WebSocket clients. The library part holds the shared test support; the tests live in
//! `tests/tests/`, one file per area.
//!
//! What it is not: a unit-test home; each crate tests its own internals.
//!
//! Every wait here is bounded ([`WAIT`] unless said otherwise) and fails the test with a
//! message when it runs out; time is real (sockets are involved), bounds are generous, and
//! nothing asserts on timing.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use agentwire::manager::{Accepted, UnifiedWebSocketManager};
use agentwire::protocol::{
    AgentStarted, ClientFrame, ConnectionEstablished, Custom, Event, EventEnvelope, ServerFrame,
    UserId,
};
use agentwire::server::{Server, ServerConfig, ServerError, build_manager};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::{Instant, timeout};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::client::Request;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub mod proxy;
pub mod sse;

/// The HS256 secret of test servers (at least 32 bytes, as outside development mode).
pub const SECRET: &str = "agentwire-e2e-secret-of-thirty-two-bytes";
/// The admin API key of test servers.
pub const API_KEY: &str = "agentwire-e2e-api-key";
/// How long any single wait may take before the test fails.
pub const WAIT: Duration = Duration::from_secs(10);

/// The configuration tests start from: loopback on a free port, a fixed secret and API
/// key, no clock-skew leeway, no wait for a `resume` first frame and no drain delay at
/// shutdown (tests that need one turn it on).
pub fn test_config() -> ServerConfig {
    let mut c = ServerConfig::default();
    c.listen = SocketAddr::from(([127, 0, 0, 1], 0));
    c.jwt_secret = Some(SECRET.into());
    c.api_keys = vec![API_KEY.into()];
    c.jwt_leeway = Duration::ZERO;
    c.resume_wait = Duration::ZERO;
    c.shutdown_timeout = Duration::from_secs(5);
    c.drain_delay = Duration::ZERO;
    c
}

/// A user id from a test literal.
pub fn user(s: &str) -> UserId {
    UserId::new(s).expect("test user ids are valid")
}

/// A `custom` event carrying `n` (custom events need no run).
pub fn custom(n: u64) -> Event {
    Event::new(
        None,
        None,
        Custom {
            name: "n".into(),
            value: serde_json::json!(n),
            extra: Default::default(),
        },
    )
}

/// A `custom` event named `pad` carrying `n` and `pad` bytes of padding: a large frame.
pub fn padded(n: u64, pad: usize) -> Event {
    Event::new(
        None,
        None,
        Custom {
            name: "pad".into(),
            value: serde_json::json!({ "n": n, "pad": "x".repeat(pad) }),
            extra: Default::default(),
        },
    )
}

/// An `agent_started` event of run `run`.
pub fn agent_started(run: &str) -> Event {
    Event::new(
        Some("t1".parse().expect("thread id")),
        Some(run.parse().expect("run id")),
        AgentStarted {
            agent_name: Some("e2e".into()),
            stall_timeout_ms: None,
            extra: Default::default(),
        },
    )
}

/// The number a [`custom`] event carries.
pub fn custom_value(e: &EventEnvelope) -> Option<u64> {
    match &e.event.data {
        agentwire::protocol::EventData::Custom(c) => c.value.as_u64(),
        _ => None,
    }
}

/// A server started in this process, serving on `127.0.0.1:<free port>`.
#[derive(Debug)]
pub struct TestServer {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Where `/metrics` is served, when `metrics_listen` gave it a listener of its own.
    pub metrics_addr: Option<SocketAddr>,
    manager: UnifiedWebSocketManager,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), ServerError>>>,
}

impl TestServer {
    /// Starts a server with [`test_config`].
    pub async fn start() -> TestServer {
        TestServer::start_with(|_| {}).await
    }

    /// Starts a server with [`test_config`] changed by `change`, over a manager of its own:
    /// a test process runs many servers, each isolated from the others (`Server::bind`
    /// would give them all the process's one manager).
    pub async fn start_with(change: impl FnOnce(&mut ServerConfig)) -> TestServer {
        let mut config = test_config();
        change(&mut config);
        let manager = build_manager(&config).await.expect("test manager");
        let server = Server::bind_with(config, manager)
            .await
            .expect("test server binds");
        TestServer::serving(server)
    }

    /// Starts a server as an application does, with `Server::bind` and [`test_config`]
    /// changed by `change`: over the process's one manager.
    ///
    /// # Errors
    /// What `Server::bind` refuses.
    pub async fn bind_process_server(
        change: impl FnOnce(&mut ServerConfig),
    ) -> Result<TestServer, ServerError> {
        let mut config = test_config();
        change(&mut config);
        Ok(TestServer::serving(Server::bind(config).await?))
    }

    /// Starts a server with [`test_config`] changed by `change`, over `manager` (e.g. one
    /// over a broker of the test's own).
    pub async fn start_over(
        manager: UnifiedWebSocketManager,
        change: impl FnOnce(&mut ServerConfig),
    ) -> TestServer {
        let mut config = test_config();
        change(&mut config);
        let server = Server::bind_with(config, manager)
            .await
            .expect("test server binds");
        TestServer::serving(server)
    }

    fn serving(server: Server) -> TestServer {
        let addr = server.local_addr();
        let metrics_addr = server.metrics_addr();
        let manager = server.manager().clone();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(server.serve(async move {
            let _ = stopped.await;
        }));
        TestServer {
            addr,
            metrics_addr,
            manager,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// The server's manager: emit through it, inspect its registry.
    pub fn manager(&self) -> &UnifiedWebSocketManager {
        &self.manager
    }

    /// A token for `user`, valid for an hour.
    pub fn token(&self, user: &str) -> String {
        self.token_ttl(user, 3600)
    }

    /// A token for `user`, valid for `ttl_secs`.
    pub fn token_ttl(&self, user: &str, ttl_secs: u64) -> String {
        token_ttl(user, ttl_secs)
    }

    /// `ws://<addr>/ws` followed by `query` (with its `?`, or empty).
    pub fn ws_url(&self, query: &str) -> String {
        format!("ws://{}/ws{query}", self.addr)
    }

    /// A handshake request for `/ws{query}` carrying `Authorization: Bearer <token>`.
    pub fn request(&self, token: &str, query: &str) -> Request {
        ws_request(self.addr, token, query)
    }

    /// Connects `user` with a bearer token and reads `connection_established`.
    pub async fn connect(&self, user: &str) -> Client {
        self.connect_query(user, "").await
    }

    /// Connects `user` with a bearer token and `query` (e.g. `?last_seq=3&epoch=e_…`) and
    /// reads `connection_established`.
    pub async fn connect_query(&self, user: &str, query: &str) -> Client {
        connect_to(self.addr, user, query).await
    }

    /// Performs a handshake; the caller reads what follows.
    ///
    /// # Errors
    /// The handshake's error (an HTTP status is `tungstenite::Error::Http`).
    pub async fn try_connect(&self, req: Request) -> Result<Client, tungstenite::Error> {
        try_connect(req).await
    }

    /// The HTTP status and body of a handshake that was refused (panics if it succeeds).
    pub async fn refused(&self, req: Request) -> (u16, String) {
        match self.try_connect(req).await {
            Ok(_) => panic!("the handshake was expected to be refused"),
            Err(tungstenite::Error::Http(resp)) => {
                let body = resp
                    .body()
                    .as_ref()
                    .map(|b| String::from_utf8_lossy(b).into_owned())
                    .unwrap_or_default();
                (resp.status().as_u16(), body)
            }
            Err(e) => panic!("expected an HTTP refusal, got {e}"),
        }
    }

    /// Opens `/v1/stream{query}` for `user` with `Authorization: Bearer <token>` and the
    /// extra `headers`; fails the test when it is refused.
    pub async fn sse(&self, user: &str, query: &str, headers: &[(&str, &str)]) -> sse::SseClient {
        let auth = format!("Bearer {}", self.token(user));
        let mut all = vec![("Authorization", auth.as_str())];
        all.extend_from_slice(headers);
        match sse::open(self.addr, &format!("/v1/stream{query}"), &all).await {
            Ok(c) => c,
            Err(r) => panic!("/v1/stream refused: {} {}", r.status, r.body),
        }
    }

    /// Emits `event` for `user` through the manager.
    pub async fn emit(&self, user: &str, event: Event) -> Accepted {
        self.manager
            .emit_critical_event(&crate::user(user), event)
            .await
            .expect("emit")
    }

    /// A plain HTTP request (`Connection: close`), with an optional bearer credential.
    pub async fn http(&self, method: &str, path: &str, bearer: Option<&str>) -> HttpResponse {
        http_request(self.addr, method, path, bearer).await
    }

    /// The `/metrics` text (read with the full API key).
    pub async fn metrics(&self) -> String {
        let r = self.http("GET", "/metrics", Some(API_KEY)).await;
        assert_eq!(r.status, 200, "{}", r.body);
        r.body
    }

    /// Waits until `check` holds, polling; fails the test with `what` after `within`.
    pub async fn wait_until(&self, what: &str, within: Duration, check: impl Fn(&Self) -> bool) {
        let deadline = Instant::now() + within;
        while !check(self) {
            assert!(Instant::now() < deadline, "timed out waiting until {what}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Starts the graceful shutdown without waiting for it (the drain delay runs, then the
    /// listener closes); [`TestServer::stop`] waits for the end.
    pub fn begin_stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    /// Shuts the server down gracefully and waits for it.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = timeout(WAIT, task).await;
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// A token for `user` signed with [`SECRET`], valid for `ttl_secs`: what a server with
/// [`test_config`] (or any router configured with `SECRET`) accepts.
pub fn token_ttl(user: &str, ttl_secs: u64) -> String {
    agentwire::server::mint_hs256(
        SECRET.as_bytes(),
        &crate::user(user),
        Duration::from_secs(ttl_secs),
        None,
        None,
    )
    .expect("mint")
}

/// A handshake request for `ws://{addr}/ws{query}` carrying `Authorization: Bearer <token>`:
/// for agentwire served by [`TestServer`] or mounted in another app.
pub fn ws_request(addr: SocketAddr, token: &str, query: &str) -> Request {
    let mut req = format!("ws://{addr}/ws{query}")
        .into_client_request()
        .expect("valid url");
    req.headers_mut().insert(
        "authorization",
        HeaderValue::from_str(&format!("Bearer {token}")).expect("header"),
    );
    req
}

/// Connects `user` (a token valid `ttl_secs`) to `ws://{addr}/ws` over a socket whose
/// receive buffer is `recv_buffer` bytes: a client whose kernel holds little, so what it
/// does not read stays in its connection's queue on the server.
pub async fn connect_small_buffer(
    addr: SocketAddr,
    user: &str,
    ttl_secs: u64,
    recv_buffer: u32,
) -> WebSocketStream<TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket
        .set_recv_buffer_size(recv_buffer)
        .expect("receive buffer");
    let tcp = timeout(WAIT, socket.connect(addr))
        .await
        .expect("connect in time")
        .expect("connect");
    let req = ws_request(addr, &token_ttl(user, ttl_secs), "");
    let (ws, _) = timeout(WAIT, tokio_tungstenite::client_async(req, tcp))
        .await
        .expect("handshake in time")
        .expect("handshake");
    ws
}

/// Connects `user` to `ws://{addr}/ws{query}` with a [`SECRET`]-signed token valid for an
/// hour, and reads `connection_established`.
pub async fn connect_to(addr: SocketAddr, user: &str, query: &str) -> Client {
    let req = ws_request(addr, &token_ttl(user, 3600), query);
    let mut client = try_connect(req)
        .await
        .unwrap_or_else(|e| panic!("{user} connects: {e}"));
    client.read_established().await;
    client
}

/// Performs a handshake; the caller reads what follows.
///
/// # Errors
/// The handshake's error (an HTTP status is `tungstenite::Error::Http`).
pub async fn try_connect(req: Request) -> Result<Client, tungstenite::Error> {
    let (ws, response) = timeout(WAIT, tokio_tungstenite::connect_async(req))
        .await
        .map_err(|_| tungstenite::Error::Io(std::io::ErrorKind::TimedOut.into()))??;
    let protocol = response
        .headers()
        .get("sec-websocket-protocol")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    Ok(Client {
        ws,
        established: None,
        protocol,
    })
}

/// What a client read.
#[derive(Debug, Clone, PartialEq)]
pub enum Received {
    /// A server frame.
    Frame(ServerFrame),
    /// A close frame, with its code.
    Close(Option<u16>),
    /// The connection ended without a close frame (or with an error).
    Ended(String),
}

/// A WebSocket client of a test server.
#[derive(Debug)]
pub struct Client {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    /// The `connection_established` frame, once read.
    pub established: Option<ConnectionEstablished>,
    /// The subprotocol the server answered.
    pub protocol: Option<String>,
}

impl Client {
    /// The next frame, close or end, waiting at most `within`; `None` when nothing came.
    pub async fn recv_within(&mut self, within: Duration) -> Option<Received> {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let msg = match timeout(left, self.ws.next()).await {
                Err(_) => return None,
                Ok(m) => m,
            };
            return Some(match msg {
                None => Received::Ended("stream ended".into()),
                Some(Err(e)) => Received::Ended(e.to_string()),
                Some(Ok(Message::Text(t))) => match ServerFrame::decode(t.as_bytes()) {
                    Ok(f) => Received::Frame(f),
                    Err(e) => panic!("server sent an undecodable frame ({e}): {t}"),
                },
                Some(Ok(Message::Close(c))) => Received::Close(c.map(|c| u16::from(c.code))),
                Some(Ok(Message::Binary(_))) => panic!("server sent a binary frame"),
                Some(Ok(_)) => continue,
            });
        }
    }

    /// The next frame, close or end, within [`WAIT`].
    pub async fn recv(&mut self) -> Received {
        self.recv_within(WAIT)
            .await
            .expect("a frame within the wait bound")
    }

    /// The next server frame; fails on a close or end.
    pub async fn frame(&mut self) -> ServerFrame {
        match self.recv().await {
            Received::Frame(f) => f,
            other => panic!("expected a frame, got {other:?}"),
        }
    }

    /// Reads `connection_established` (the first frame).
    pub async fn read_established(&mut self) -> ConnectionEstablished {
        match self.frame().await {
            ServerFrame::ConnectionEstablished(c) => {
                self.established = Some(c.clone());
                c
            }
            other => panic!("expected connection_established, got {other:?}"),
        }
    }

    /// The next event frame; fails on anything else.
    pub async fn event(&mut self) -> EventEnvelope {
        match self.frame().await {
            ServerFrame::Event(e) => e,
            other => panic!("expected an event, got {other:?}"),
        }
    }

    /// Reads until a close frame or the end, skipping frames; returns the close code
    /// (`None` when the connection ended without one).
    pub async fn closed(&mut self) -> Option<u16> {
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.recv_within(left).await {
                None => panic!("no close within the wait bound"),
                Some(Received::Close(code)) => {
                    // Reading on sends the close reply and sees the server end the stream.
                    let _ = timeout(WAIT, async {
                        while let Some(Ok(_)) = self.ws.next().await {}
                    })
                    .await;
                    return code;
                }
                Some(Received::Ended(_)) => return None,
                Some(Received::Frame(_)) => {}
            }
        }
    }

    /// Sends a client frame.
    pub async fn send(&mut self, frame: &ClientFrame) {
        self.send_text(&frame.to_json()).await;
    }

    /// Sends raw text.
    pub async fn send_text(&mut self, text: &str) {
        timeout(WAIT, self.ws.send(Message::text(text)))
            .await
            .expect("send within the wait bound")
            .expect("send");
    }

    /// The next raw WebSocket message (pings and pongs included), within [`WAIT`];
    /// `None` when the stream ended.
    pub async fn next_message(&mut self) -> Option<Result<Message, tungstenite::Error>> {
        timeout(WAIT, self.ws.next())
            .await
            .expect("a message within the wait bound")
    }

    /// Sends a raw WebSocket message.
    pub async fn send_message(&mut self, msg: Message) {
        timeout(WAIT, self.ws.send(msg))
            .await
            .expect("send within the wait bound")
            .expect("send");
    }

    /// Closes with 1000 and waits (bounded) for the server's close.
    pub async fn close(mut self) {
        let frame = CloseFrame {
            code: 1000.into(),
            reason: "bye".into(),
        };
        let _ = timeout(WAIT, self.ws.close(Some(frame))).await;
        let _ = timeout(WAIT, async {
            while let Some(Ok(_)) = self.ws.next().await {}
        })
        .await;
    }
}

/// An HTTP response: status and body.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    /// The status code.
    pub status: u16,
    /// Header lines, lower-cased names.
    pub headers: Vec<(String, String)>,
    /// The body as text.
    pub body: String,
}

impl HttpResponse {
    /// The body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", self.body))
    }

    /// A header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// One HTTP/1.1 request with `Connection: close`; the response is read to its end.
pub async fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    bearer: Option<&str>,
) -> HttpResponse {
    let work = async {
        let mut s = TcpStream::connect(addr).await.expect("connect");
        let auth = bearer
            .map(|b| format!("Authorization: Bearer {b}\r\n"))
            .unwrap_or_default();
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: 0\r\n{auth}\r\n"
        );
        s.write_all(req.as_bytes()).await.expect("write");
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).await.expect("read");
        raw
    };
    let raw = timeout(WAIT, work)
        .await
        .expect("HTTP response within the wait bound");
    parse_http(&raw)
}

/// Whether `raw` holds a whole answer with a `Content-Length`.
pub(crate) fn answer_is_whole(raw: &[u8]) -> bool {
    let Some(split) = raw.windows(4).position(|w| w == b"\r\n\r\n") else {
        return false;
    };
    let head = String::from_utf8_lossy(&raw[..split]).to_ascii_lowercase();
    if head.starts_with("http/1.1 101 ") {
        // Switched protocols: what follows is not this answer's.
        return true;
    }
    head.lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|n| n.trim().parse::<usize>().ok())
        .is_some_and(|n| raw.len() >= split + 4 + n)
}

pub(crate) fn parse_http(raw: &[u8]) -> HttpResponse {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a complete HTTP head");
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut body = raw[split + 4..].to_vec();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .expect("a status line");
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    if headers
        .iter()
        .any(|(n, v)| n == "transfer-encoding" && v.contains("chunked"))
    {
        body = dechunk(&body);
    }
    HttpResponse {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

fn dechunk(mut raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(line_end) = raw.windows(2).position(|w| w == b"\r\n") {
        let size = std::str::from_utf8(&raw[..line_end])
            .ok()
            .and_then(|s| usize::from_str_radix(s.trim(), 16).ok())
            .unwrap_or(0);
        if size == 0 {
            break;
        }
        let start = line_end + 2;
        let end = (start + size).min(raw.len());
        out.extend_from_slice(&raw[start..end]);
        raw = raw.get(end + 2..).unwrap_or(&[]);
    }
    out
}

/// The value of the metric line that starts with `name_and_labels ` (e.g.
/// `agentwire_events_emitted_total`, or with `{type="custom"}`).
pub fn metric(text: &str, name_and_labels: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(name_and_labels)?.strip_prefix(' '))
        .and_then(|v| v.split(' ').next())
        .and_then(|v| v.parse().ok())
}

impl TestServer {
    /// `POST /v1/events` with `body` as JSON, [`API_KEY`] and
    /// `Content-Type: application/json`.
    pub async fn publish(&self, body: &serde_json::Value) -> HttpResponse {
        self.publish_as(API_KEY, body).await
    }

    /// `POST /v1/events` with `body` as JSON, sent with the API key `key`.
    pub async fn publish_as(&self, key: &str, body: &serde_json::Value) -> HttpResponse {
        self.publish_text_as(key, &body.to_string()).await
    }

    /// `POST /v1/events` with `body`, byte for byte, and [`API_KEY`].
    pub async fn publish_text(&self, body: &str) -> HttpResponse {
        self.publish_text_as(API_KEY, body).await
    }

    /// `POST /v1/events` with `body`, byte for byte, sent with the API key `key`.
    pub async fn publish_text_as(&self, key: &str, body: &str) -> HttpResponse {
        let auth = format!("Bearer {key}");
        http_send(
            self.addr,
            "POST",
            "/v1/events",
            &[
                ("Authorization", auth.as_str()),
                ("Content-Type", "application/json"),
            ],
            body.as_bytes(),
        )
        .await
    }
}

/// One HTTP/1.1 request with `Connection: close`, the given headers and body (its
/// `Content-Length` is added). The response is read to its end; a connection reset after a
/// complete response head (a server that refused the body before reading all of it) ends
/// the read without failing.
pub async fn http_send(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> HttpResponse {
    // `Host: <addr>` unless the caller sends a `Host` of its own.
    let host = if headers.iter().any(|(n, _)| n.eq_ignore_ascii_case("host")) {
        String::new()
    } else {
        format!("Host: {addr}\r\n")
    };
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\n{host}Connection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    let mut request = head.into_bytes();
    request.extend_from_slice(body);
    // A server may answer and close before reading a refused body; the answer counts.
    raw_http(addr, &request).await
}

/// Sends `request` as it is (any bytes, well-formed or not) on a new connection and reads
/// the answer: until its `Content-Length` is read, or else until the server closes; a reset
/// after a complete head ends the read without failing.
pub async fn raw_http(addr: SocketAddr, request: &[u8]) -> HttpResponse {
    let work = async {
        let mut s = TcpStream::connect(addr).await.expect("connect");
        let _ = s.write_all(request).await;
        let mut raw = Vec::new();
        let mut buf = [0u8; 8192];
        loop {
            if answer_is_whole(&raw) {
                break;
            }
            match s.read(&mut buf).await {
                Ok(0) => break,
                Ok(n) => raw.extend_from_slice(&buf[..n]),
                Err(_) if raw.windows(4).any(|w| w == b"\r\n\r\n") => break,
                Err(e) => panic!("reading the response: {e}"),
            }
        }
        raw
    };
    let raw = timeout(WAIT, work)
        .await
        .expect("HTTP response within the wait bound");
    parse_http(&raw)
}

/// What every case of a bad-input matrix (`tests/tests/e2e_bad_input_*.rs`) must leave as
/// it was: another user's stream. The bystander is connected before the cases run; after
/// each, [`Bystander::still_served`] emits it a fresh event and reads it, next in order.
#[derive(Debug)]
pub struct Bystander {
    client: Client,
    user: String,
    seq: u64,
}

impl Bystander {
    /// Connects `user` as the bystander.
    pub async fn connect(server: &TestServer, user: &str) -> Bystander {
        Bystander {
            client: server.connect(user).await,
            user: user.to_owned(),
            seq: 0,
        }
    }

    /// Asserts that `case` published nothing (the node accepted `accepted_before` events
    /// before it, and still has) and that the bystander is still served.
    pub async fn untouched_since(&mut self, server: &TestServer, accepted_before: u64, case: &str) {
        assert_eq!(
            accepted_events(server),
            accepted_before,
            "{case}: nothing published"
        );
        self.still_served(server, case).await;
    }

    /// Asserts the bystander's connection is open and its stream goes on, gap-free, after
    /// `case`.
    pub async fn still_served(&mut self, server: &TestServer, case: &str) {
        self.seq += 1;
        let accepted = server.emit(&self.user, custom(self.seq)).await;
        assert_eq!(
            accepted.seq.get(),
            self.seq,
            "{case}: the bystander's stream"
        );
        let e = match self.client.recv().await {
            Received::Frame(ServerFrame::Event(e)) => e,
            other => panic!("{case}: the bystander got {other:?} instead of its event"),
        };
        assert_eq!(e.seq.get(), self.seq, "{case}: the bystander's next event");
        assert_eq!(custom_value(&e), Some(self.seq), "{case}");
    }
}

/// Events the server's broker accepted so far: a refused case leaves it as it was
/// (nothing half-published).
pub fn accepted_events(server: &TestServer) -> u64 {
    server.manager().get_stats().events_emitted
}

/// Asserts `r` is the JSON error answer: `status`, `error` = `code`, and `field` = `field`
/// (`None`: `null`).
pub fn assert_error_body(
    r: &HttpResponse,
    status: u16,
    code: &str,
    field: Option<&str>,
    case: &str,
) {
    assert_eq!(r.status, status, "{case}: {}", r.body);
    assert!(
        r.header("content-type")
            .is_some_and(|t| t.starts_with("application/json")),
        "{case}: {:?}",
        r.headers
    );
    let v = r.json();
    assert_eq!(v["error"], code, "{case}: {}", r.body);
    assert!(
        v["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{case}: {}",
        r.body
    );
    match field {
        Some(f) => assert_eq!(v["field"], f, "{case}: {}", r.body),
        None => assert!(v["field"].is_null(), "{case}: {}", r.body),
    }
}

/// A file of `tests/tests/fixtures/`.
pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("fixtures")
        .join(name)
}

/// A copy of the key fixture `name` in a new private directory (mode 0700, the file 0600),
/// as a server is given a key file: the server refuses one that others can write, and a
/// checkout's permissions are whatever its umask made them.
pub fn key_file(name: &str) -> PathBuf {
    let dir = temp_dir("key");
    let path = dir.join(name);
    std::fs::copy(fixture(name), &path).expect("copy the key fixture");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).expect("chmod");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    }
    path
}

/// base64url without padding (RFC 4648 §5), for tokens written by hand: ones no JWT
/// library would make (`alg: none`, a claim given twice).
pub fn base64url(input: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in input.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &b)| n | (u32::from(b) << (16 - 8 * i)));
        for i in 0..=chunk.len() {
            out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
        }
    }
    out
}

/// The workspace's root directory (where `Cargo.toml`, `clients/` and `examples/` are).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ sits in the workspace")
        .to_owned()
}

/// Whether a test that needs an outside tool (`node`, `python3`, Chromium) may go on:
/// `true` when `missing` is `None`. Otherwise the test fails under CI (`CI=true`), and
/// elsewhere writes `skipped: <what>: <why>` straight to the process's stderr — where it
/// shows among `cargo test`'s output (`eprintln!` would be captured and hidden for a test
/// that passes) — and returns `false` so the caller ends the test.
pub fn prerequisite(missing: Option<String>, what: &str) -> bool {
    use std::io::Write;
    let Some(why) = missing else { return true };
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "{what} cannot run in CI: {why}"
    );
    let _ = writeln!(std::io::stderr().lock(), "skipped: {what}: {why}");
    false
}

/// A new, empty directory under the system's temporary directory, named after `what`, the
/// process and the time; the caller removes it.
pub fn temp_dir(what: &str) -> PathBuf {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let dir = std::env::temp_dir().join(format!(
        "agentwire-e2e-{what}-{}-{nanos}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

/// Whether `program args…` runs and exits with success (output discarded).
pub fn command_succeeds(program: &str, args: &[&str]) -> bool {
    Command::new(program)
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Runs `cmd` to its end, killing it after `limit`: whether it succeeded, and its stdout
/// and stderr as one text (in the order written, through one file). Blocks: call it from
/// `spawn_blocking` while a test server serves.
pub fn run_bounded(mut cmd: Command, limit: Duration) -> (bool, String) {
    let dir = temp_dir("output");
    let out_path = dir.join("output.txt");
    let out = std::fs::File::create(&out_path).expect("output file");
    let err = out.try_clone().expect("output file");
    let mut child = cmd
        .stdout(out)
        .stderr(err)
        .spawn()
        .unwrap_or_else(|e| panic!("{cmd:?} starts: {e}"));
    let deadline = std::time::Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for the child") {
            break Some(status);
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let text = std::fs::read_to_string(&out_path).unwrap_or_default();
    let _ = std::fs::remove_dir_all(&dir);
    match status {
        Some(s) => (s.success(), text),
        None => (
            false,
            format!("{text}\n(killed after {} s)", limit.as_secs()),
        ),
    }
}
