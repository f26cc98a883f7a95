//! Server processes on Redis (`--broker redis`) and the clients the many-node tests drive
//! them with: a plain HTTP/1.1 request, the publish API, and a WebSocket reading frames as
//! JSON. Every wait is bounded by [`WAIT`](super::WAIT).

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use super::{ServerProcess, WAIT, bin};

/// The HS256 secret every node shares.
pub(crate) const SECRET: &str = "agentwire-redis-nodes-secret-32-bytes!";
/// The full API key every node shares.
pub(crate) const API_KEY: &str = "agentwire-redis-nodes-api-key";

/// The binary on a free loopback port with the shared secret, outside development mode.
pub(crate) fn secured() -> Command {
    let mut cmd = bin();
    cmd.args(["--listen", "127.0.0.1:0", "--jwt-secret", SECRET]);
    cmd
}

/// Where the nodes of a test find Redis: the flag and its value.
pub(crate) enum Target {
    /// `--redis-url URL`.
    Standalone(String),
    /// `--redis-cluster-nodes URL,URL,…`.
    Cluster(Vec<String>),
}

/// The binary as a node of the deployment under `prefix` on the Redis at `target`, on a
/// free loopback port, with `extra` flags (a flag in `extra` replaces the common one: the
/// binary refuses a flag given twice).
pub(crate) fn node_command(target: &Target, prefix: &str, extra: &[&str]) -> Command {
    let mut cmd = secured();
    let joined;
    let (redis_flag, redis_value) = match target {
        Target::Standalone(url) => ("--redis-url", url.as_str()),
        Target::Cluster(nodes) => {
            joined = nodes.join(",");
            ("--redis-cluster-nodes", joined.as_str())
        }
    };
    let common = [
        ("--api-keys", API_KEY),
        ("--broker", "redis"),
        (redis_flag, redis_value),
        ("--redis-key-prefix", prefix),
        ("--drain-delay", "0s"),
        ("--resume-wait", "0s"),
        ("--publish-rate", "0"),
        ("--redis-command-timeout", "1s"),
    ];
    for (flag, value) in common {
        let replaced = extra.contains(&flag)
            || (flag == "--redis-url" && extra.contains(&"--redis-cluster-nodes"));
        if !replaced {
            cmd.args([flag, value]);
        }
    }
    cmd.args(extra);
    cmd
}

/// Starts `cmd` and waits (off the runtime's threads) until it says where it listens.
pub(crate) async fn start(cmd: Command) -> ServerProcess {
    tokio::task::spawn_blocking(move || ServerProcess::spawn(cmd))
        .await
        .expect("the start task")
        .unwrap_or_else(|stderr| panic!("the node does not start: {stderr}"))
}

/// A client token for `user`, valid for an hour.
pub(crate) fn token(user: &str) -> String {
    agentwire_server::mint_hs256(
        SECRET.as_bytes(),
        &user.parse().expect("a valid user id"),
        Duration::from_secs(3600),
        None,
        None,
    )
    .expect("mint")
}

/// An HTTP answer.
#[derive(Debug)]
pub(crate) struct Answer {
    pub(crate) status: u16,
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) body: String,
}

impl Answer {
    /// The body as JSON (`Null` when it is not).
    pub(crate) fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }

    /// The first header called `name` (case-insensitive).
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// One request on a new connection (`Connection: close`), with the API key when `key` and
/// a JSON body when `body`. Status 0: no answer (refused, reset or timed out).
pub(crate) async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    key: Option<&str>,
    body: Option<&str>,
) -> Answer {
    let none = Answer {
        status: 0,
        headers: Vec::new(),
        body: String::new(),
    };
    let mut request = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    if let Some(key) = key {
        request.push_str(&format!("Authorization: Bearer {key}\r\n"));
    }
    if let Some(body) = body {
        request.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    request.push_str("\r\n");
    request.push_str(body.unwrap_or_default());
    let exchange = async {
        let mut s = TcpStream::connect(addr).await?;
        s.write_all(request.as_bytes()).await?;
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).await?;
        Ok::<_, std::io::Error>(raw)
    };
    let Ok(Ok(raw)) = tokio::time::timeout(WAIT, exchange).await else {
        return none;
    };
    let text = String::from_utf8_lossy(&raw);
    let Some((head, rest)) = text.split_once("\r\n\r\n") else {
        return none;
    };
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let chunked = headers.iter().any(|(n, v)| {
        n.eq_ignore_ascii_case("transfer-encoding") && v.eq_ignore_ascii_case("chunked")
    });
    let body = if chunked {
        dechunk(rest)
    } else {
        rest.to_owned()
    };
    Answer {
        status,
        headers,
        body,
    }
}

fn dechunk(mut rest: &str) -> String {
    let mut out = String::new();
    while let Some((size, after)) = rest.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || after.len() < n {
            break;
        }
        out.push_str(&after[..n]);
        rest = after[n..].trim_start_matches("\r\n");
    }
    out
}

/// `POST /v1/events` with `body`.
pub(crate) async fn publish(addr: SocketAddr, body: &Value) -> Answer {
    http(
        addr,
        "POST",
        "/v1/events",
        Some(API_KEY),
        Some(&body.to_string()),
    )
    .await
}

/// A `custom` event for `user` carrying `n`, under `event_id`.
pub(crate) fn custom(user: &str, n: u64, event_id: &str) -> Value {
    json!({"user_id": user, "type": "custom", "event_id": event_id,
           "data": {"name": "n", "value": n}})
}

/// `GET /metrics` with the API key: the exposition text.
pub(crate) async fn metrics(addr: SocketAddr) -> String {
    http(addr, "GET", "/metrics", Some(API_KEY), None)
        .await
        .body
}

/// The value of the sample `name_and_labels` (e.g. `agentwire_redis_reconnects_total`).
pub(crate) fn sample(text: &str, name_and_labels: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name_and_labels)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

/// Waits until `GET path` answers `status`, asking every 100 ms, at most `within`.
pub(crate) async fn wait_for_status(addr: SocketAddr, path: &str, status: u16, within: Duration) {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let got = http(addr, "GET", path, None, None).await.status;
        if got == status {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "GET {path} on {addr} still answers {got}, not {status}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A client WebSocket that reads frames as JSON.
pub(crate) struct Ws {
    stream: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

/// What [`Ws::next`] read.
#[derive(Debug)]
pub(crate) enum Read {
    /// A text frame, as JSON.
    Frame(Value),
    /// The connection closed (with its close code, if any) or failed.
    Closed(Option<u16>),
    /// Nothing within the wait.
    Nothing,
}

impl Ws {
    /// Connects `user` to the node at `addr` with `query` (e.g. `?last_seq=3&epoch=e_…`,
    /// or empty): the connection and its `connection_established` frame, or why not.
    pub(crate) async fn connect(
        addr: SocketAddr,
        user: &str,
        query: &str,
    ) -> Result<(Ws, Value), String> {
        let mut req = format!("ws://{addr}/ws{query}")
            .into_client_request()
            .map_err(|e| e.to_string())?;
        req.headers_mut().insert(
            "authorization",
            HeaderValue::from_str(&format!("Bearer {}", token(user))).map_err(|e| e.to_string())?,
        );
        let (stream, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(req))
            .await
            .map_err(|_| "the handshake timed out".to_owned())?
            .map_err(|e| e.to_string())?;
        let mut ws = Ws { stream };
        match ws.next(WAIT).await {
            Read::Frame(hello) if hello["type"] == "connection_established" => Ok((ws, hello)),
            other => Err(format!("no connection_established: {other:?}")),
        }
    }

    /// The next text frame within `within`, answering pings on the way.
    pub(crate) async fn next(&mut self, within: Duration) -> Read {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match tokio::time::timeout(left, self.stream.next()).await {
                Err(_) => return Read::Nothing,
                Ok(None) | Ok(Some(Err(_))) => return Read::Closed(None),
                Ok(Some(Ok(Message::Text(t)))) => {
                    return Read::Frame(serde_json::from_str(&t).unwrap_or(Value::Null));
                }
                Ok(Some(Ok(Message::Close(frame)))) => {
                    return Read::Closed(frame.map(|f| u16::from(f.code)));
                }
                Ok(Some(Ok(Message::Ping(p)))) => {
                    let _ = self.stream.send(Message::Pong(p)).await;
                }
                Ok(Some(Ok(_))) => {}
            }
        }
    }

    /// Sends `frame` as a text frame.
    pub(crate) async fn send(&mut self, frame: &Value) {
        self.stream
            .send(Message::Text(frame.to_string().into()))
            .await
            .expect("the frame is sent");
    }

    /// Closes the connection (best effort).
    pub(crate) async fn close(mut self) {
        let _ = self.stream.close(None).await;
    }
}

/// The nodes a test runs, by index; a killed node's slot is `None`. Shared by the
/// followers and publishers, which pick a random live node for each connect or publish.
#[derive(Clone, Default)]
pub(crate) struct Live(std::sync::Arc<std::sync::Mutex<Vec<Option<SocketAddr>>>>);

impl Live {
    /// The nodes at `addrs`, all live.
    pub(crate) fn new(addrs: impl IntoIterator<Item = SocketAddr>) -> Live {
        Live(std::sync::Arc::new(std::sync::Mutex::new(
            addrs.into_iter().map(Some).collect(),
        )))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Option<SocketAddr>>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Node `i`, if live.
    pub(crate) fn get(&self, i: usize) -> Option<SocketAddr> {
        self.lock().get(i).copied().flatten()
    }

    /// A random live node (panics when none is).
    pub(crate) fn any(&self) -> SocketAddr {
        use rand::seq::IndexedRandom;
        let live: Vec<SocketAddr> = self.lock().iter().flatten().copied().collect();
        *live.choose(&mut rand::rng()).expect("a live node")
    }

    /// Takes node `i` out: nothing picks it from now on.
    pub(crate) fn remove(&self, i: usize) {
        if let Some(slot) = self.lock().get_mut(i) {
            *slot = None;
        }
    }
}

/// What a [`follow`]er saw, as a client following `protocol.md` §6.4 keeps it.
#[derive(Debug, Default, Clone)]
pub(crate) struct Seen {
    /// The `custom` values of the events processed (duplicates by `seq` dropped), in
    /// order, with their epoch and `seq`.
    pub(crate) events: Vec<(String, u64, u64)>,
    /// `replay_gap` frames: `(from_seq, to_seq)`.
    pub(crate) gaps: Vec<(u64, u64)>,
    /// Events one connection sent with a `seq` not above one it sent before (the server
    /// promises none).
    pub(crate) repeated_on_a_connection: u64,
    /// Events after a hole: a `seq` more than one above the last processed, with no gap
    /// told (the server promises none).
    pub(crate) holes: u64,
    /// Connections made (the first one included).
    pub(crate) connections: u64,
    /// Close codes of the connections that ended (`None`: no close frame).
    pub(crate) closes: Vec<Option<u16>>,
}

/// A client of `user` that stays connected to some live node until `done` says it has
/// seen enough: it connects to `first` (or a random live node), processes events by
/// `seq`, and when its connection ends reconnects to a random live node with its resume
/// point. Gives up, returning what it saw, at `deadline`.
pub(crate) async fn follow(
    user: String,
    live: Live,
    first: Option<SocketAddr>,
    done: impl Fn(&Seen) -> bool,
    deadline: tokio::time::Instant,
) -> Seen {
    let mut seen = Seen::default();
    let mut epoch: Option<String> = None;
    let mut last_seq = 0u64;
    let mut next = first;
    'connect: while tokio::time::Instant::now() < deadline && !done(&seen) {
        let addr = next.take().unwrap_or_else(|| live.any());
        let query = match &epoch {
            Some(e) => format!("?last_seq={last_seq}&epoch={e}"),
            None => String::new(),
        };
        let Ok((mut ws, hello)) = Ws::connect(addr, &user, &query).await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        seen.connections += 1;
        let now = hello["epoch"].as_str().unwrap_or_default().to_owned();
        let stream_last = hello["last_seq"].as_u64().unwrap_or_default();
        if epoch.as_deref() != Some(now.as_str()) {
            last_seq = 0;
        } else if last_seq > stream_last {
            last_seq = stream_last;
        }
        epoch = Some(now.clone());
        let mut sent_here = 0u64;
        while !done(&seen) {
            if tokio::time::Instant::now() >= deadline {
                ws.close().await;
                break 'connect;
            }
            match ws.next(Duration::from_millis(200)).await {
                Read::Frame(f) if f["type"] == "replay_gap" => seen.gaps.push((
                    f["from_seq"].as_u64().unwrap_or_default(),
                    f["to_seq"].as_u64().unwrap_or_default(),
                )),
                Read::Frame(f) => {
                    let Some(seq) = f["seq"].as_u64() else {
                        continue;
                    };
                    if seq <= sent_here {
                        seen.repeated_on_a_connection += 1;
                    }
                    sent_here = sent_here.max(seq);
                    if seq <= last_seq {
                        continue;
                    }
                    if seq > last_seq + 1 && last_seq != 0 {
                        seen.holes += 1;
                    }
                    last_seq = seq;
                    let value = f["data"]["value"].as_u64().unwrap_or(u64::MAX);
                    seen.events.push((now.clone(), seq, value));
                }
                Read::Closed(code) => {
                    seen.closes.push(code);
                    continue 'connect;
                }
                Read::Nothing => {}
            }
        }
        ws.close().await;
    }
    seen
}

/// Publishes `body` on a random live node until one accepts it (200), retrying the same
/// body (the same `event_id`s) after a 503 or no answer; any other status is returned.
/// Counts the 503s and unanswered tries in `refused`.
pub(crate) async fn publish_until_accepted(
    live: &Live,
    body: &Value,
    refused: &std::sync::atomic::AtomicU64,
    deadline: tokio::time::Instant,
) -> Answer {
    loop {
        let r = publish(live.any(), body).await;
        if !matches!(r.status, 0 | 503) || tokio::time::Instant::now() >= deadline {
            return r;
        }
        refused.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
