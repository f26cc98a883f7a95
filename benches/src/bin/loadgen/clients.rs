//! The clients: opening many connections (WebSockets on `/ws`, or event streams on
//! `/v1/stream` with `--transport sse`) from spread source addresses, reading every frame,
//! and checking each event — latency from the publisher's scheduled send
//! time, and loss, duplicates, reordering and misrouting by `seq` and the per-user marker.
//!
//! A [`Pool`] is the clients of this process ([`LocalPool`]) or of worker processes (the
//! same code, spawned with `--worker`, driven by JSON lines on stdin/stdout), so the
//! scenarios read the same [`Snapshot`] whichever it is.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio::time::Instant;

use crate::events::user_id;
use crate::frame;
use crate::placement::Placement;
use crate::sse;
use crate::throttle::Throttled;
use crate::ws::{self, Msg, WsStream};

/// How the clients receive their events.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Transport {
    /// WebSockets on `/ws`.
    #[default]
    Ws,
    /// Server-Sent Events on `GET /v1/stream`.
    Sse,
}

/// Most missing `seq`s remembered per connection (to tell a late event from a duplicate);
/// a larger gap is counted as lost at once.
const MAX_TRACKED_GAP: u64 = 4_096;

/// Microseconds since the Unix epoch (the clock publisher and clients share).
pub(crate) fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// An empty latency histogram: 1 µs to 100 s, 3 significant digits.
pub(crate) fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 100_000_000, 3).expect("valid bounds")
}

/// Which connections to open. Sent to worker processes as JSON.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct ClientSpec {
    /// The nodes, and how connections are spread over them.
    pub(crate) servers: Vec<SocketAddr>,
    pub(crate) placement: Placement,
    /// Seed of a random placement, the same in every worker process.
    pub(crate) seed: u64,
    pub(crate) secret: String,
    pub(crate) prefix: String,
    /// The first user index and how many users this pool serves.
    pub(crate) first_user: u32,
    pub(crate) users: u32,
    pub(crate) conns_per_user: u32,
    /// Source addresses 127.0.0.2 …; connection `i` uses `2 + (ip_offset + i) % source_ips`.
    pub(crate) source_ips: u32,
    pub(crate) ip_offset: u32,
    /// Every `slow_every`-th connection is slow (0: none): it stops reading after its
    /// handshake, or reads at most `slow_read_bytes_per_s` when that is not 0.
    pub(crate) slow_every: u32,
    #[serde(default)]
    pub(crate) slow_read_bytes_per_s: u64,
    #[serde(default)]
    pub(crate) transport: Transport,
    pub(crate) connect_concurrency: usize,
    pub(crate) token_ttl_s: u64,
}

impl ClientSpec {
    pub(crate) fn connections(&self) -> u64 {
        u64::from(self.users) * u64::from(self.conns_per_user)
    }

    pub(crate) fn is_slow(&self, i: u32) -> bool {
        self.slow_every > 0 && i % self.slow_every == self.slow_every - 1
    }

    /// The node of this pool's connection `i` (of local user `i / conns_per_user`).
    fn server_of(&self, i: u32) -> SocketAddr {
        let user = self.first_user + i / self.conns_per_user;
        let global = u64::from(self.first_user) * u64::from(self.conns_per_user) + u64::from(i);
        let node = self
            .placement
            .conn_node(self.servers.len(), self.seed, user, global);
        self.servers[node]
    }
}

#[derive(Serialize)]
struct Claims<'a> {
    sub: &'a str,
    exp: u64,
    iat: u64,
}

/// An HS256 token with the claims the server checks (`sub`, `exp`).
pub(crate) fn mint(secret: &str, user: &str, ttl_s: u64) -> anyhow::Result<String> {
    let now = now_us() / 1_000_000;
    let claims = Claims {
        sub: user,
        exp: now + ttl_s,
        iat: now,
    };
    Ok(jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )?)
}

/// What one connection has seen.
#[derive(Debug, Default)]
struct ConnState {
    /// Index of the user within the pool.
    user: u32,
    slow: bool,
    established: bool,
    open: bool,
    close: Option<String>,
    last_seq: u64,
    missing: BTreeSet<u64>,
    lost_untracked: u64,
    duplicates: u64,
    reordered: u64,
    misrouted: u64,
    /// Event stream messages whose `id:` is not the frame's `<epoch>:<seq>`.
    bad_ids: u64,
    /// Text messages that are not a frame (see [`frame::parse`]).
    unreadable: u64,
    received: u64,
}

/// What a set of connections received: event frames, their bytes (each frame's JSON; the
/// transport's framing not counted), and merged `message_delta` frames with the events
/// they stand for.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub(crate) struct Tally {
    pub(crate) frames: u64,
    pub(crate) bytes: u64,
    /// Frames with a `from_seq` below their `seq`.
    pub(crate) merged_frames: u64,
    /// Events the frames stand for (a merged frame counts `seq - from_seq + 1`).
    pub(crate) events_covered: u64,
}

impl Tally {
    fn add(&mut self, o: Tally) {
        self.frames += o.frames;
        self.bytes += o.bytes;
        self.merged_frames += o.merged_frames;
        self.events_covered += o.events_covered;
    }
}

/// What all connections of a pool share: the latency histogram since the last snapshot.
#[derive(Debug)]
struct Shared {
    hist: Histogram<u64>,
    received: u64,
    received_slow: u64,
    healthy: Tally,
    slow: Tally,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A snapshot of a pool, taken after the publisher stopped and deliveries drained.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct Snapshot {
    pub(crate) connections: u64,
    pub(crate) established: u64,
    pub(crate) open: u64,
    pub(crate) slow: u64,
    /// Healthy (reading) connections that closed or broke.
    pub(crate) closed_unexpected: u64,
    /// Close codes (or errors) seen, by connection.
    pub(crate) closes: BTreeMap<String, u64>,
    /// The same, of the slow connections only.
    #[serde(default)]
    pub(crate) closes_slow: BTreeMap<String, u64>,
    /// What healthy / slow connections received since the last snapshot.
    #[serde(default)]
    pub(crate) healthy: Tally,
    #[serde(default)]
    pub(crate) slow_tally: Tally,
    /// Cumulative over healthy open connections: event stream ids that were not the
    /// frame's position.
    #[serde(default)]
    pub(crate) bad_ids: u64,
    /// Cumulative over healthy open connections: text messages that could not be read as a
    /// frame (not JSON, no `type`, a checked field of the wrong type or twice).
    #[serde(default)]
    pub(crate) unreadable: u64,
    /// Event frames received since the last snapshot, by healthy / slow connections.
    pub(crate) received: u64,
    pub(crate) received_slow: u64,
    /// Cumulative over healthy open connections: events published for their user and not
    /// received (checked against `expected`).
    pub(crate) lost: u64,
    pub(crate) duplicates: u64,
    pub(crate) reordered: u64,
    pub(crate) misrouted: u64,
    /// Whether every healthy open connection had caught up with `expected` in time.
    pub(crate) drained: bool,
    /// Latency (µs) since the last snapshot, as (value, count) pairs.
    pub(crate) latency: Vec<(u64, u64)>,
}

impl Snapshot {
    pub(crate) fn merge(&mut self, o: Snapshot) {
        self.connections += o.connections;
        self.established += o.established;
        self.open += o.open;
        self.slow += o.slow;
        self.closed_unexpected += o.closed_unexpected;
        for (k, v) in o.closes {
            *self.closes.entry(k).or_default() += v;
        }
        for (k, v) in o.closes_slow {
            *self.closes_slow.entry(k).or_default() += v;
        }
        self.healthy.add(o.healthy);
        self.slow_tally.add(o.slow_tally);
        self.bad_ids += o.bad_ids;
        self.unreadable += o.unreadable;
        self.received += o.received;
        self.received_slow += o.received_slow;
        self.lost += o.lost;
        self.duplicates += o.duplicates;
        self.reordered += o.reordered;
        self.misrouted += o.misrouted;
        self.drained &= o.drained;
        self.latency.extend(o.latency);
    }

    pub(crate) fn histogram(&self) -> Histogram<u64> {
        let mut h = histogram();
        for &(v, n) in &self.latency {
            h.saturating_record_n(v, n);
        }
        h
    }
}

/// How opening the connections went.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct Ready {
    pub(crate) connected: u64,
    pub(crate) failed: u64,
    pub(crate) first_error: Option<String>,
    pub(crate) seconds: f64,
}

/// The connections of this process.
#[derive(Debug)]
pub(crate) struct LocalPool {
    spec: ClientSpec,
    conns: Vec<Arc<Mutex<ConnState>>>,
    shared: Arc<Mutex<Shared>>,
    stop: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    /// Event frames received so far, and how many of them late (for progress lines).
    pub(crate) live: Arc<Live>,
}

/// Running counts for the progress lines, read while the run goes on.
#[derive(Debug, Default)]
pub(crate) struct Live {
    /// Event frames received by healthy and slow connections.
    pub(crate) received: AtomicU64,
    /// Healthy connections' event frames that arrived more than [`Live::LATE_US`] after
    /// their scheduled send: where in a run the tail of the latency forms.
    pub(crate) late: AtomicU64,
}

impl Live {
    /// 10 ms, the default p99 limit of a step.
    pub(crate) const LATE_US: u64 = 10_000;
}

impl LocalPool {
    /// Opens every connection of `spec` and waits for each one's `connection_established`.
    pub(crate) async fn connect(spec: ClientSpec) -> anyhow::Result<(LocalPool, Ready)> {
        let started = Instant::now();
        let (stop, stop_rx) = watch::channel(false);
        let shared = Arc::new(Mutex::new(Shared {
            hist: histogram(),
            received: 0,
            received_slow: 0,
            healthy: Tally::default(),
            slow: Tally::default(),
        }));
        let live = Arc::new(Live::default());
        let limit = Arc::new(Semaphore::new(spec.connect_concurrency.max(1)));
        let n = u32::try_from(spec.connections()).context("too many connections")?;
        let mut conns = Vec::with_capacity(n as usize);
        let mut tasks = Vec::with_capacity(n as usize);
        let (ready_tx, mut ready_rx) = tokio::sync::mpsc::unbounded_channel();
        let mut tokens: Vec<Option<Arc<str>>> = vec![None; spec.users as usize];
        for i in 0..n {
            let user = i / spec.conns_per_user;
            let uid = user_id(&spec.prefix, spec.first_user + user);
            let token = match &tokens[user as usize] {
                Some(t) => t.clone(),
                None => {
                    let t: Arc<str> = mint(&spec.secret, &uid, spec.token_ttl_s)?.into();
                    tokens[user as usize] = Some(t.clone());
                    t
                }
            };
            let state = Arc::new(Mutex::new(ConnState {
                user,
                slow: spec.is_slow(i),
                ..ConnState::default()
            }));
            conns.push(state.clone());
            let ip = Ipv4Addr::new(
                127,
                0,
                0,
                2 + ((spec.ip_offset + i) % spec.source_ips) as u8,
            );
            let task = run_conn(ConnTask {
                server: spec.server_of(i),
                source: ip,
                uid,
                token,
                transport: spec.transport,
                read_rate: spec.slow_read_bytes_per_s,
                global_user: spec.first_user + user,
                state,
                shared: shared.clone(),
                live: live.clone(),
                stop: stop_rx.clone(),
                limit: limit.clone(),
                ready: ready_tx.clone(),
            });
            tasks.push(tokio::spawn(task));
        }
        drop(ready_tx);
        let mut ready = Ready::default();
        let mut last_print = Instant::now();
        while ready.connected + ready.failed < u64::from(n) {
            let Some(r) = ready_rx.recv().await else {
                break;
            };
            match r {
                Ok(()) => ready.connected += 1,
                Err(e) => {
                    ready.failed += 1;
                    ready.first_error.get_or_insert(e);
                }
            }
            if last_print.elapsed() > Duration::from_secs(2) {
                last_print = Instant::now();
                eprintln!(
                    "  connecting: {} open, {} failed of {n}",
                    ready.connected, ready.failed
                );
            }
        }
        ready.seconds = started.elapsed().as_secs_f64();
        Ok((
            LocalPool {
                spec,
                conns,
                shared,
                stop,
                tasks,
                live,
            },
            ready,
        ))
    }

    /// Waits (up to `drain`) until every healthy open connection has received its user's
    /// events up to `expected[user]` (indexed from this pool's first user), then reads and
    /// resets the counters of the period.
    pub(crate) async fn snapshot(&self, expected: Option<&[u64]>, drain: Duration) -> Snapshot {
        let deadline = Instant::now() + drain;
        let mut drained = true;
        if let Some(expected) = expected {
            loop {
                let behind = self.conns.iter().any(|c| {
                    let c = lock(c);
                    c.open
                        && !c.slow
                        && c.last_seq < expected.get(c.user as usize).copied().unwrap_or(0)
                });
                if !behind {
                    break;
                }
                if Instant::now() >= deadline {
                    drained = false;
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        let mut s = Snapshot {
            connections: self.conns.len() as u64,
            drained,
            ..Snapshot::default()
        };
        for c in &self.conns {
            let c = lock(c);
            s.established += u64::from(c.established);
            s.open += u64::from(c.open);
            s.slow += u64::from(c.slow);
            if let Some(code) = &c.close {
                *s.closes.entry(code.clone()).or_default() += 1;
                if c.slow {
                    *s.closes_slow.entry(code.clone()).or_default() += 1;
                } else {
                    s.closed_unexpected += 1;
                }
            }
            if c.slow || !c.open {
                continue;
            }
            s.duplicates += c.duplicates;
            s.reordered += c.reordered;
            s.misrouted += c.misrouted;
            s.bad_ids += c.bad_ids;
            s.unreadable += c.unreadable;
            if let Some(expected) = expected {
                let want = expected.get(c.user as usize).copied().unwrap_or(0);
                s.lost +=
                    want.saturating_sub(c.last_seq) + c.missing.len() as u64 + c.lost_untracked;
            }
        }
        let mut sh = lock(&self.shared);
        s.received = std::mem::take(&mut sh.received);
        s.received_slow = std::mem::take(&mut sh.received_slow);
        s.healthy = std::mem::take(&mut sh.healthy);
        s.slow_tally = std::mem::take(&mut sh.slow);
        s.latency = sh
            .hist
            .iter_recorded()
            .map(|v| (v.value_iterated_to(), v.count_at_value()))
            .collect();
        sh.hist.reset();
        s
    }

    /// Closes every connection (a close frame, then the socket) and waits for the tasks.
    pub(crate) async fn close(self) {
        let _ = self.stop.send(true);
        for t in self.tasks {
            let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
        }
        drop(self.spec);
    }
}

struct ConnTask {
    server: SocketAddr,
    source: Ipv4Addr,
    uid: String,
    token: Arc<str>,
    transport: Transport,
    /// A slow connection's read rate in bytes a second (0: it stops reading).
    read_rate: u64,
    global_user: u32,
    state: Arc<Mutex<ConnState>>,
    shared: Arc<Mutex<Shared>>,
    live: Arc<Live>,
    stop: watch::Receiver<bool>,
    limit: Arc<Semaphore>,
    ready: tokio::sync::mpsc::UnboundedSender<Result<(), String>>,
}

/// A TCP connection to the connection's node from its source address; a slow one with a
/// small receive window, so that what it does not read backs up into the server's queue
/// within a short run.
async fn tcp(t: &ConnTask, slow: bool) -> anyhow::Result<TcpStream> {
    let sock = TcpSocket::new_v4()?;
    sock.bind(SocketAddr::new(t.source.into(), 0))
        .with_context(|| format!("bind {}", t.source))?;
    if slow {
        sock.set_recv_buffer_size(4 * 1024)?;
    }
    let stream = sock.connect(t.server).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

type Socket = Throttled<TcpStream>;

/// Checks the first frame: `connection_established` for this connection's user.
fn check_established(t: &ConnTask, text: &str) -> anyhow::Result<()> {
    let f = frame::parse(text)?;
    if f.ty != "connection_established" {
        bail!("first frame is {}", f.ty);
    }
    if f.user_id.as_deref() != Some(t.uid.as_str()) {
        bail!("connection_established names another user");
    }
    Ok(())
}

/// The WebSocket handshake on `/ws`, up to and including `connection_established`.
async fn open_ws(t: &ConnTask, stream: Socket) -> anyhow::Result<WsStream<Socket>> {
    let work = async {
        let mut ws = ws::connect(stream, t.server, "/ws", &t.token).await?;
        loop {
            match ws.next_message()? {
                Some(Msg::Text(text)) => {
                    check_established(t, text)?;
                    return Ok(ws);
                }
                Some(Msg::Binary) => bail!("first message is not text"),
                Some(Msg::Close(code)) => bail!("closed ({code:?}) before connection_established"),
                None => {}
            }
            ws.answer_ping().await?;
            if ws.fill().await? == 0 {
                bail!("closed before connection_established");
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(30), work)
        .await
        .context("no connection_established within 30 s")?
}

/// `GET /v1/stream` on `stream`, up to and including `connection_established`.
async fn open_sse(t: &ConnTask, stream: &mut Socket) -> anyhow::Result<sse::Reader> {
    let req = format!(
        "GET /v1/stream HTTP/1.1\r\nHost: {}\r\nAccept: text/event-stream\r\n\
         Authorization: Bearer {}\r\n\r\n",
        t.server, t.token
    );
    stream.write_all(req.as_bytes()).await?;
    let work = async {
        let mut raw = Vec::new();
        let mut buf = [0u8; 4096];
        let (status, chunked, len) = loop {
            if let Some(head) = sse::parse_head(&raw) {
                break head;
            }
            let n = stream.read(&mut buf).await?;
            if n == 0 {
                bail!("closed before answering");
            }
            raw.extend_from_slice(&buf[..n]);
        };
        if status != 200 {
            bail!(
                "refused with {status}: {}",
                String::from_utf8_lossy(&raw[len..])
            );
        }
        let mut reader = sse::Reader::new(chunked);
        reader.feed(&raw[len..]);
        loop {
            if let Some(m) = reader.next_message() {
                check_established(t, &m.data)?;
                return Ok(reader);
            }
            if reader.ended {
                bail!("the stream ended before connection_established");
            }
            let n = stream.read(&mut buf).await?;
            if n == 0 {
                bail!("closed before connection_established");
            }
            reader.feed(&buf[..n]);
        }
    };
    tokio::time::timeout(Duration::from_secs(30), work)
        .await
        .context("no connection_established within 30 s")?
}

/// An open connection of either transport.
enum Conn {
    Ws(Box<WsStream<Socket>>),
    Sse(Socket, sse::Reader),
}

async fn run_conn(t: ConnTask) {
    let slow = lock(&t.state).slow;
    let permit = t.limit.clone().acquire_owned().await;
    let rate = (slow && t.read_rate > 0).then_some(t.read_rate);
    let opened = async {
        let stream = Throttled::new(tcp(&t, slow).await?, rate);
        Ok::<_, anyhow::Error>(match t.transport {
            Transport::Ws => Conn::Ws(Box::new(open_ws(&t, stream).await?)),
            Transport::Sse => {
                let mut stream = stream;
                let reader = open_sse(&t, &mut stream).await?;
                Conn::Sse(stream, reader)
            }
        })
    }
    .await;
    let conn = match opened {
        Ok(c) => c,
        Err(e) => {
            lock(&t.state).close = Some("connect_failed".into());
            let _ = t.ready.send(Err(format!("{e:#}")));
            return;
        }
    };
    drop(permit);
    {
        let mut st = lock(&t.state);
        st.established = true;
        st.open = true;
    }
    let _ = t.ready.send(Ok(()));
    let mut stop = t.stop.clone();
    if slow && rate.is_none() {
        // Stops reading: the server's queue and write timeout must deal with it.
        stopped(&mut stop).await;
        lock(&t.state).open = false;
        drop(conn);
        return;
    }
    let end = match conn {
        Conn::Ws(ws) => serve_ws(&t, *ws, &mut stop).await,
        Conn::Sse(stream, reader) => serve_sse(&t, stream, reader, &mut stop).await,
    };
    let mut st = lock(&t.state);
    st.open = false;
    if let Some(code) = end {
        st.close = Some(code);
    }
}

/// Reads a WebSocket until it closes (its close code, or what broke it) or the pool stops
/// (`None`).
async fn serve_ws(
    t: &ConnTask,
    mut ws: WsStream<Socket>,
    stop: &mut watch::Receiver<bool>,
) -> Option<String> {
    // Each frame's arrival time is the end of the read that completed it.
    let mut now = now_us();
    // One wait for the stop for all reads, polled only when there is nothing to read (the
    // stop comes after the publisher's, when the frames have stopped).
    let stop = stopped(stop);
    tokio::pin!(stop);
    loop {
        let end = {
            let mut batch = Batch::new(t);
            loop {
                match ws.next_message() {
                    Ok(Some(Msg::Text(text))) => batch.frame(text, None, now),
                    Ok(Some(Msg::Binary)) => {}
                    Ok(Some(Msg::Close(code))) => break Some(Ok(code)),
                    Ok(None) => break None,
                    Err(e) => break Some(Err(e)),
                }
            }
        };
        match end {
            Some(Ok(code)) => {
                // Echoed, as the closing handshake asks.
                let _ = tokio::time::timeout(Duration::from_secs(2), ws.send_close(code)).await;
                return Some(code.map_or_else(|| "close".to_owned(), |c| c.to_string()));
            }
            Some(Err(e)) => return Some(format!("error: {e}")),
            None => {}
        }
        if let Err(e) = ws.answer_ping().await {
            return Some(format!("error: {}", ws::WsError::Io(e)));
        }
        tokio::select! {
            biased;
            r = ws.fill() => match r {
                Ok(0) => {
                    return Some("error: WebSocket protocol error: Connection reset without closing handshake".into());
                }
                Ok(_) => now = now_us(),
                Err(e) => return Some(format!("error: {}", ws::WsError::Io(e))),
            },
            () = &mut stop => {
                let _ = tokio::time::timeout(Duration::from_secs(2), ws.send_close(None)).await;
                return None;
            }
        }
    }
}

/// Reads an event stream until it ends (the code of its final `close` event, or what
/// ended it) or the pool stops (`None`).
async fn serve_sse(
    t: &ConnTask,
    mut stream: Socket,
    mut reader: sse::Reader,
    stop: &mut watch::Receiver<bool>,
) -> Option<String> {
    let mut buf = vec![0u8; 16 * 1024];
    let mut close = None;
    let mut now = now_us();
    let stop = stopped(stop);
    tokio::pin!(stop);
    loop {
        {
            let mut batch = Batch::new(t);
            while let Some(m) = reader.next_message() {
                if m.event.as_deref() == Some("close") {
                    let code = serde_json::from_str::<serde_json::Value>(&m.data)
                        .ok()
                        .and_then(|v| v["code"].as_u64());
                    close = Some(code.map_or_else(|| "close".to_owned(), |c| c.to_string()));
                } else {
                    batch.frame(&m.data, Some(m.id.as_deref()), now);
                }
            }
        }
        if reader.ended {
            break Some(close.unwrap_or_else(|| "eof".into()));
        }
        tokio::select! {
            biased;
            r = stream.read(&mut buf) => match r {
                Ok(0) => break Some(close.unwrap_or_else(|| "eof".into())),
                Ok(n) => {
                    now = now_us();
                    reader.feed(&buf[..n]);
                }
                Err(e) => break Some(format!("error: {e}")),
            },
            () = &mut stop => break None,
        }
    }
}

async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// The frames of one read, checked under one lock of the connection's counters and one
/// of the pool's.
struct Batch<'a> {
    t: &'a ConnTask,
    st: MutexGuard<'a, ConnState>,
    sh: MutexGuard<'a, Shared>,
    frames: u64,
    late: u64,
}

impl<'a> Batch<'a> {
    fn new(t: &'a ConnTask) -> Self {
        Batch {
            t,
            st: lock(&t.state),
            sh: lock(&t.shared),
            frames: 0,
            late: 0,
        }
    }

    /// One frame's text, arrived at `now` (µs since the epoch); `sse_id`: on an event
    /// stream, the message's `id:` (`Some(None)`: it had none).
    fn frame(&mut self, text: &str, sse_id: Option<Option<&str>>, now: u64) {
        let st = &mut *self.st;
        let Ok(f) = frame::parse(text) else {
            st.unreadable += 1;
            return;
        };
        let Some(seq) = f.seq else {
            return;
        };
        let first = f.from_seq.filter(|&from| from <= seq).unwrap_or(seq);
        st.received += 1;
        if let Some(id) = sse_id
            && id.and_then(sse::id_seq) != Some(seq)
        {
            st.bad_ids += 1;
        }
        if f.u != Some(self.t.global_user) {
            st.misrouted += 1;
        }
        // A merged delta stands for every seq from its `from_seq` on.
        if first == st.last_seq + 1 {
            st.last_seq = seq;
        } else if first > st.last_seq {
            let from = st.last_seq + 1;
            if first - from > MAX_TRACKED_GAP {
                st.lost_untracked += first - from;
            } else {
                st.missing.extend(from..first);
            }
            st.last_seq = seq;
        } else if st.missing.remove(&seq) {
            st.reordered += 1;
        } else {
            st.duplicates += 1;
        }
        let frame = Tally {
            frames: 1,
            bytes: text.len() as u64,
            merged_frames: u64::from(first < seq),
            events_covered: seq - first + 1,
        };
        let sh = &mut *self.sh;
        if st.slow {
            // A slow reader's latency is its own doing: it stays out of the histogram.
            sh.received_slow += 1;
            sh.slow.add(frame);
        } else {
            sh.received += 1;
            sh.healthy.add(frame);
            if let Some(sent) = f.sent_at_us {
                let latency = now.saturating_sub(sent).max(1);
                sh.hist.saturating_record(latency);
                self.late += u64::from(latency > Live::LATE_US);
            }
        }
        self.frames += 1;
    }
}

impl Drop for Batch<'_> {
    fn drop(&mut self) {
        if self.frames > 0 {
            self.t
                .live
                .received
                .fetch_add(self.frames, Ordering::Relaxed);
        }
        if self.late > 0 {
            self.t.live.late.fetch_add(self.late, Ordering::Relaxed);
        }
    }
}

/// A command to a worker process.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub(crate) enum Command {
    Snapshot {
        expected: Option<Vec<u64>>,
        drain_ms: u64,
    },
    Close,
}

/// The clients of one invocation: here, or in worker processes.
#[derive(Debug)]
pub(crate) enum Pool {
    Local(LocalPool),
    Workers(Vec<Worker>),
}

/// A worker process and the users it serves.
#[derive(Debug)]
pub(crate) struct Worker {
    child: tokio::process::Child,
    stdin: tokio::process::ChildStdin,
    lines: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
    first_user: u32,
    users: u32,
}

impl Worker {
    async fn send(&mut self, cmd: &Command) -> anyhow::Result<()> {
        let mut line = serde_json::to_vec(cmd)?;
        line.push(b'\n');
        self.stdin.write_all(&line).await?;
        self.stdin.flush().await?;
        Ok(())
    }

    async fn reply<T: for<'de> Deserialize<'de>>(&mut self) -> anyhow::Result<T> {
        let line = self
            .lines
            .next_line()
            .await?
            .context("worker exited without answering")?;
        Ok(serde_json::from_str(&line)?)
    }
}

impl Pool {
    /// Opens `spec`'s connections, in `workers` processes of this binary when `workers > 1`.
    pub(crate) async fn connect(spec: ClientSpec, workers: u32) -> anyhow::Result<(Pool, Ready)> {
        if workers <= 1 {
            let (p, r) = LocalPool::connect(spec).await?;
            return Ok((Pool::Local(p), r));
        }
        let exe = std::env::current_exe()?;
        let per = spec.users.div_ceil(workers);
        let mut ws = Vec::new();
        let mut first = 0;
        let mut ip_offset = 0;
        while first < spec.users {
            let users = per.min(spec.users - first);
            let sub = ClientSpec {
                first_user: spec.first_user + first,
                users,
                ip_offset,
                ..spec.clone()
            };
            ip_offset += users * spec.conns_per_user;
            let mut child = tokio::process::Command::new(&exe)
                .arg("worker")
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .kill_on_drop(true)
                .spawn()
                .context("spawn worker")?;
            let stdin = child.stdin.take().context("worker stdin")?;
            let stdout = child.stdout.take().context("worker stdout")?;
            let mut w = Worker {
                child,
                stdin,
                lines: BufReader::new(stdout).lines(),
                first_user: first,
                users,
            };
            let mut line = serde_json::to_vec(&sub)?;
            line.push(b'\n');
            w.stdin.write_all(&line).await?;
            w.stdin.flush().await?;
            ws.push(w);
            first += users;
        }
        let mut ready = Ready::default();
        for w in &mut ws {
            let r: Ready = w.reply().await?;
            ready.connected += r.connected;
            ready.failed += r.failed;
            if ready.first_error.is_none() {
                ready.first_error = r.first_error;
            }
            ready.seconds = ready.seconds.max(r.seconds);
        }
        Ok((Pool::Workers(ws), ready))
    }

    /// CPU seconds used by the worker processes so far (0 for a local pool).
    pub(crate) fn workers_cpu_s(&self) -> f64 {
        match self {
            Pool::Local(_) => 0.0,
            Pool::Workers(ws) => ws
                .iter()
                .filter_map(|w| w.child.id())
                .filter_map(|pid| crate::procstat::Probe::Pid(pid).sample())
                .map(|s| s.cpu_s)
                .sum(),
        }
    }

    /// See [`LocalPool::snapshot`]; `expected` is indexed by the spec's user index.
    pub(crate) async fn snapshot(
        &mut self,
        expected: Option<&[u64]>,
        drain: Duration,
    ) -> anyhow::Result<Snapshot> {
        match self {
            Pool::Local(p) => Ok(p.snapshot(expected, drain).await),
            Pool::Workers(ws) => {
                for w in ws.iter_mut() {
                    let slice = expected.map(|e| {
                        e[w.first_user as usize..(w.first_user + w.users) as usize].to_vec()
                    });
                    w.send(&Command::Snapshot {
                        expected: slice,
                        drain_ms: drain.as_millis() as u64,
                    })
                    .await?;
                }
                let mut total = Snapshot {
                    drained: true,
                    ..Snapshot::default()
                };
                for w in ws.iter_mut() {
                    total.merge(w.reply().await?);
                }
                Ok(total)
            }
        }
    }

    pub(crate) async fn close(self) -> anyhow::Result<()> {
        match self {
            Pool::Local(p) => p.close().await,
            Pool::Workers(ws) => {
                for mut w in ws {
                    w.send(&Command::Close).await?;
                    let _ = tokio::time::timeout(Duration::from_secs(20), w.child.wait()).await;
                }
            }
        }
        Ok(())
    }
}

/// The worker process: reads its [`ClientSpec`], opens the connections, answers
/// [`Command`]s with JSON lines on stdout until `close`.
pub(crate) async fn worker_main() -> anyhow::Result<()> {
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let spec: ClientSpec =
        serde_json::from_str(&lines.next_line().await?.context("no spec on stdin")?)?;
    let (pool, ready) = LocalPool::connect(spec).await?;
    let mut out = tokio::io::stdout();
    let write = |v: Vec<u8>| {
        let mut v = v;
        v.push(b'\n');
        v
    };
    out.write_all(&write(serde_json::to_vec(&ready)?)).await?;
    out.flush().await?;
    while let Some(line) = lines.next_line().await? {
        match serde_json::from_str::<Command>(&line)? {
            Command::Snapshot { expected, drain_ms } => {
                let s = pool
                    .snapshot(expected.as_deref(), Duration::from_millis(drain_ms))
                    .await;
                out.write_all(&write(serde_json::to_vec(&s)?)).await?;
                out.flush().await?;
            }
            Command::Close => break,
        }
    }
    pool.close().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(global_user: u32, slow: bool) -> (ConnTask, watch::Sender<bool>) {
        let (stop_tx, stop) = watch::channel(false);
        let (ready, _) = tokio::sync::mpsc::unbounded_channel();
        let t = ConnTask {
            server: "127.0.0.1:9".parse().expect("addr"),
            source: Ipv4Addr::LOCALHOST,
            uid: "p-u7".into(),
            token: "tok".into(),
            transport: Transport::Ws,
            read_rate: 0,
            global_user,
            state: Arc::new(Mutex::new(ConnState {
                slow,
                ..ConnState::default()
            })),
            shared: Arc::new(Mutex::new(Shared {
                hist: histogram(),
                received: 0,
                received_slow: 0,
                healthy: Tally::default(),
                slow: Tally::default(),
            })),
            live: Arc::new(Live::default()),
            stop,
            limit: Arc::new(Semaphore::new(1)),
            ready,
        };
        (t, stop_tx)
    }

    fn event(seq: u64, u: u32, sent_at_us: u64) -> String {
        format!(
            r#"{{"type":"agent_thinking","seq":{seq},"event_id":"e","ts":1,"thread_id":"t","run_id":"r","data":{{"thought":"x","sent_at_us":{sent_at_us},"u":{u},"k":{seq}}}}}"#
        )
    }

    #[test]
    fn every_check_counts_what_it_should() {
        let (t, _stop) = task(7, false);
        let mut frames: Vec<String> = [1, 2, 2, 5, 3]
            .into_iter()
            .map(|seq| event(seq, 7, 1_000))
            .collect();
        // Misrouted: another user's marker.
        frames.push(event(6, 8, 1_000));
        // Not a frame; a frame without a seq (ignored, as before).
        frames.push(r#"{"seq":7}"#.into());
        frames.push(r#"{"type":"replay_gap","from_seq":1,"to_seq":2}"#.into());
        // A merged delta for 7..=9, then 10 with its fields in another order.
        frames.push(
            r#"{"data":{"u":7,"sent_at_us":1000},"from_seq":7,"seq":9,"type":"message_delta"}"#
                .into(),
        );
        frames.push(r#"{"data":{"u":7},"type":"x","seq":10}"#.into());
        {
            let mut b = Batch::new(&t);
            for f in &frames {
                b.frame(f, None, 1_500);
            }
        }
        let st = lock(&t.state);
        assert_eq!(st.received, 8);
        assert_eq!(st.duplicates, 1);
        assert_eq!(st.reordered, 1);
        assert_eq!(st.missing.iter().copied().collect::<Vec<_>>(), [4]);
        assert_eq!(st.misrouted, 1);
        assert_eq!(st.unreadable, 1);
        assert_eq!(st.last_seq, 10);
        let sh = lock(&t.shared);
        assert_eq!(sh.received, 8);
        assert_eq!(sh.healthy.frames, 8);
        assert_eq!(sh.healthy.merged_frames, 1);
        assert_eq!(sh.healthy.events_covered, 10);
        // Every frame with a `sent_at_us` was 500 µs late.
        assert_eq!(sh.hist.len(), 7);
        assert_eq!(sh.hist.max(), 500);
        assert_eq!(t.live.received.load(Ordering::Relaxed), 8);
        assert_eq!(t.live.late.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn frames_later_than_ten_ms_are_counted_live_as_they_arrive() {
        let (t, _stop) = task(7, false);
        {
            let mut b = Batch::new(&t);
            // Sent at 1 ms: arriving at 11 ms is on the limit, at 11.001 ms past it.
            b.frame(&event(1, 7, 1_000), None, 11_000);
            b.frame(&event(2, 7, 1_000), None, 11_001);
            b.frame(&event(3, 7, 1_000), None, 50_000);
        }
        assert_eq!(t.live.received.load(Ordering::Relaxed), 3);
        assert_eq!(t.live.late.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn event_stream_ids_are_checked_and_slow_readers_stay_out_of_the_histogram() {
        let (t, _stop) = task(7, true);
        {
            let mut b = Batch::new(&t);
            b.frame(&event(1, 7, 10), Some(Some("e_1:1")), 20);
            b.frame(&event(2, 7, 10), Some(Some("e_1:3")), 20);
            b.frame(&event(3, 7, 10), Some(None), 20);
        }
        assert_eq!(lock(&t.state).bad_ids, 2);
        let sh = lock(&t.shared);
        assert_eq!((sh.received, sh.received_slow), (0, 3));
        assert_eq!(sh.hist.len(), 0);
    }
}
