//! `GET /ws`: the handshake (token, Origin, resume point) and, per connection, one reader
//! task and one batching writer.
//!
//! The writer is the only code that writes to the socket: it drains the connection's
//! queue in batches (each batch one vectored write, see [`crate::wire`]), sends protocol
//! pings and the pongs the reader asks for, and ends the connection with the close code
//! the manager decided — all under a write timeout, so a peer that stopped reading is
//! dropped even when no close frame can reach it. The reader answers client frames by
//! queueing control frames through the manager, never by writing itself.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};
use std::task::Poll;
use std::time::Duration;

use agentwire_manager::{ConnectOptions, Connection, Outbound, Resume};
use agentwire_protocol::{
    AUTH_SUBPROTOCOL_PREFIX, ClientFrame, CloseCode, DecodeError, Epoch, ErrorCode, ErrorFrame,
    SUBPROTOCOL, Seq, ServerFrame, Timestamp,
};
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::task::AtomicWaker;
use tokio::time::{Instant, timeout};
use tokio_tungstenite::tungstenite::{self, Message, protocol::WebSocketConfig};

use crate::auth::{AuthError, Verified};
use crate::http::json_error;
use crate::metrics::Rejection;
use crate::server::AppState;
use crate::wire::{FrameWriter, OpCode, UpgradeRejection, WsStream, WsUpgrade};

/// Per-connection settings of the WebSocket endpoint.
#[derive(Debug, Clone)]
pub(crate) struct WsSettings {
    pub(crate) write_timeout: Duration,
    pub(crate) close_timeout: Duration,
    pub(crate) write_batch_frames: usize,
    pub(crate) read_buffer_size: usize,
    pub(crate) max_message_size: usize,
    pub(crate) max_frame_size: usize,
    pub(crate) max_bad_frames: u32,
    pub(crate) resume_wait: Duration,
    pub(crate) allowed_origins: Vec<String>,
}

impl WsSettings {
    pub(crate) fn from_config(c: &crate::ServerConfig) -> Self {
        WsSettings {
            write_timeout: c.write_timeout.max(Duration::from_millis(1)),
            close_timeout: c.close_timeout,
            write_batch_frames: c.write_batch_frames.max(1),
            read_buffer_size: c.read_buffer_size.max(256),
            max_message_size: c.max_message_size.max(64),
            max_frame_size: c.max_frame_size.max(64),
            max_bad_frames: c.max_bad_frames,
            resume_wait: c.resume_wait,
            allowed_origins: c
                .allowed_origins
                .iter()
                .map(|o| o.trim().trim_end_matches('/').to_owned())
                .filter(|o| !o.is_empty())
                .collect(),
        }
    }

    fn origin_allowed(&self, origin: &HeaderValue) -> bool {
        if self.allowed_origins.is_empty() {
            return true;
        }
        let Ok(origin) = origin.to_str() else {
            return false;
        };
        self.allowed_origins
            .iter()
            .any(|o| o == "*" || o.eq_ignore_ascii_case(origin))
    }
}

/// The query string of `/ws`: `token`, `last_seq`, `epoch`. Other parameters are ignored.
#[derive(Default)]
struct WsQuery {
    token: Option<String>,
    last_seq: Option<String>,
    epoch: Option<String>,
}

fn parse_query(raw: Option<&str>) -> WsQuery {
    let mut q = WsQuery::default();
    for (k, v) in form_pairs(raw.unwrap_or("")) {
        match k.as_str() {
            "token" => q.token = Some(v),
            "last_seq" => q.last_seq = Some(v),
            "epoch" => q.epoch = Some(v),
            _ => {}
        }
    }
    q
}

/// Splits `a=1&b=x%20y` into decoded pairs (`+` is a space).
fn form_pairs(raw: &str) -> impl Iterator<Item = (String, String)> + '_ {
    raw.split('&').filter(|p| !p.is_empty()).map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (percent_decode(k), percent_decode(v))
    })
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = |b: u8| (b as char).to_digit(16);
                match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                    (Some(h), Some(l)) => {
                        out.push(u8::try_from(h * 16 + l).unwrap_or(b'?'));
                        i += 2;
                    }
                    _ => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Where the token came from.
fn find_token(headers: &HeaderMap, query: &WsQuery) -> Result<String, AuthError> {
    if let Some(value) = headers.get(header::AUTHORIZATION) {
        let value = value.to_str().map_err(|_| AuthError::Malformed)?;
        let (scheme, token) = value.split_once(' ').ok_or(AuthError::Malformed)?;
        if !scheme.eq_ignore_ascii_case("bearer") || token.trim().is_empty() {
            return Err(AuthError::Malformed);
        }
        return Ok(token.trim().to_owned());
    }
    for value in headers.get_all(header::SEC_WEBSOCKET_PROTOCOL) {
        let Ok(value) = value.to_str() else { continue };
        if let Some(token) = value
            .split(',')
            .map(str::trim)
            .find_map(|p| p.strip_prefix(AUTH_SUBPROTOCOL_PREFIX))
        {
            return Ok(token.to_owned());
        }
    }
    query.token.clone().ok_or(AuthError::Missing)
}

fn resume_from_query(q: &WsQuery) -> Result<Option<Resume>, (&'static str, String)> {
    match (&q.last_seq, &q.epoch) {
        (None, None) => Ok(None),
        (Some(_), None) => Err(("epoch", "is required with `last_seq`".into())),
        (None, Some(_)) => Err(("last_seq", "is required with `epoch`".into())),
        (Some(seq), Some(epoch)) => {
            let last_seq = seq
                .parse::<u64>()
                .map_err(|_| ("last_seq", "must be a non-negative integer".to_owned()))?;
            let epoch = Epoch::new(epoch).map_err(|e| ("epoch", format!("an epoch {e}")))?;
            Ok(Some(Resume::After {
                last_seq: Seq(last_seq),
                epoch,
            }))
        }
    }
}

/// `GET /ws`.
#[utoipa::path(get, path = "/ws", tag = "connect",
    security(("jwt" = [])),
    params(
        ("token" = Option<String>, Query, description = "The client token, when no header or subprotocol carries it"),
        ("last_seq" = Option<u64>, Query, description = "Resume after this seq (with `epoch`)"),
        ("epoch" = Option<String>, Query, description = "The epoch of the stream being resumed"),
    ),
    responses(
        (status = 101, description = "Upgraded to WebSocket (subprotocol agentwire.v1); frames as in docs/protocol.md"),
        (status = 400, description = "Not a WebSocket handshake, or a bad resume point", body = crate::openapi::AdminErrorDoc),
        (status = 401, description = "No token, or an invalid or expired one", body = crate::openapi::AdminErrorDoc),
        (status = 403, description = "The Origin is not allowed (--allowed-origins)", body = crate::openapi::AdminErrorDoc),
        (status = 503, description = "The server is shutting down", body = crate::openapi::AdminErrorDoc),
    ))]
pub(crate) async fn ws_handler(
    State(app): State<Arc<AppState>>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
    upgrade: Result<WsUpgrade, UpgradeRejection>,
) -> Response {
    if let Some(origin) = headers.get(header::ORIGIN)
        && !app.ws.origin_allowed(origin)
    {
        app.metrics.rejected(Rejection::ForbiddenOrigin);
        return json_error(StatusCode::FORBIDDEN, "forbidden", "origin not allowed");
    }
    if app.is_shutting_down() {
        app.metrics.rejected(Rejection::ShuttingDown);
        let mut r = json_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting_down",
            "the server is shutting down; connect again",
        );
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        return r;
    }
    let query = parse_query(raw.as_deref());
    let verified = match find_token(&headers, &query).and_then(|t| app.auth.verify(&t)) {
        Ok(v) => v,
        Err(e) => {
            app.metrics.rejected(Rejection::Unauthorized);
            tracing::debug!(reason = %e, "ws handshake unauthorized");
            let mut r = json_error(StatusCode::UNAUTHORIZED, "unauthorized", &e.to_string());
            r.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            return r;
        }
    };
    let resume = match resume_from_query(&query) {
        Ok(r) => r,
        Err((field, reason)) => {
            app.metrics.rejected(Rejection::BadRequest);
            return json_error(
                StatusCode::BAD_REQUEST,
                "bad_request",
                &format!("field `{field}`: {reason}"),
            );
        }
    };
    let upgrade = match upgrade {
        Ok(u) => u,
        Err(rejection) => {
            app.metrics.rejected(Rejection::BadRequest);
            return rejection.into_response();
        }
    };
    let s = &app.ws;
    // Reading only: the server writes its frames itself (crate::wire).
    let config = WebSocketConfig::default()
        .read_buffer_size(s.read_buffer_size)
        .max_message_size(Some(s.max_message_size))
        .max_frame_size(Some(s.max_frame_size));
    upgrade.accept(SUBPROTOCOL, config, move |stream, sink| {
        serve_socket(app, stream, sink, verified, resume)
    })
}

type Sink = FrameWriter;
type Stream = Box<WsStream>;

/// How the reader ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReaderEnd {
    /// The peer sent a close frame (with this code, if any): the writer answers it.
    PeerClosed(Option<u16>),
    /// The connection broke: nothing more can be sent.
    PeerGone,
    /// The reader asked the manager to close the connection with a code (1009, 1007,
    /// 1002); the writer sends it.
    Failed,
}

async fn serve_socket(
    app: Arc<AppState>,
    mut stream: Stream,
    mut sink: Sink,
    verified: Verified,
    query_resume: Option<Resume>,
) {
    let mut first = None;
    let resume = match query_resume {
        Some(r) => r,
        None if !app.ws.resume_wait.is_zero() => {
            match Box::pin(timeout(app.ws.resume_wait, stream.next())).await {
                Err(_) => Resume::FromHistoryStart,
                Ok(None) => return,
                Ok(Some(Err(e))) => {
                    if let Some(code) = read_error_code(&e) {
                        Box::pin(close_unconnected(&app, &mut sink, stream, code)).await;
                    }
                    return;
                }
                Ok(Some(Ok(Message::Text(text)))) => match ClientFrame::decode(text.as_bytes()) {
                    Ok(ClientFrame::Resume { last_seq, epoch }) => {
                        Resume::After { last_seq, epoch }
                    }
                    _ => {
                        first = Some(Message::Text(text));
                        Resume::FromHistoryStart
                    }
                },
                Ok(Some(Ok(other))) => {
                    first = Some(other);
                    Resume::FromHistoryStart
                }
            }
        }
        None => Resume::FromHistoryStart,
    };
    if app.is_shutting_down() {
        Box::pin(close_unconnected(
            &app,
            &mut sink,
            stream,
            CloseCode::GoingAway,
        ))
        .await;
        return;
    }
    // The futures awaited once, before or after the writer's long life, are boxed: a
    // task's future is as large as its largest state, and every idle connection holds
    // this one.
    let conn = match Box::pin(
        app.manager
            .connect_user(verified.user.clone(), ConnectOptions { resume }),
    )
    .await
    {
        Ok(c) => Arc::new(c),
        Err(e) => {
            tracing::debug!(user = %verified.user, error = %e, "connection refused");
            Box::pin(close_unconnected(&app, &mut sink, stream, e.close_code())).await;
            return;
        }
    };
    tracing::debug!(user = %verified.user, connection = %conn.id(), "connected");
    let news = Arc::new(NewsCell::new(verified.expires_at));
    let reader = tokio::spawn(read_loop(
        app.clone(),
        conn.clone(),
        stream,
        first,
        news.clone(),
    ));
    write_loop(&app, &conn, &mut sink, &news).await;
    // However the writer ended, the reader must not keep the socket open.
    reader.abort();
    conn.disconnect();
    tracing::debug!(connection = %conn.id(), "disconnected");
}

/// What the reader tells the writer: the token's expiry (moved by `refresh_token`), the
/// newest protocol ping to answer, and how reading ended. A ping not yet answered when a
/// newer one arrives is answered only by the newer one's pong (RFC 6455 §5.5.3 allows
/// it).
#[derive(Debug)]
struct PeerNews {
    expires_at: u64,
    /// The payload of the newest ping not yet answered (the writer takes it).
    ping: Option<Bytes>,
    /// Set once the reader is done.
    end: Option<ReaderEnd>,
}

/// The reader's [`PeerNews`], shared with the writer. The writer looks at it on every
/// wake-up, so looking costs two atomic operations: a version number and a waker (a
/// `watch` channel would build and drop a waiter each time).
#[derive(Debug)]
struct NewsCell {
    news: std::sync::Mutex<PeerNews>,
    version: AtomicU64,
    waker: AtomicWaker,
}

impl NewsCell {
    fn new(expires_at: u64) -> Self {
        NewsCell {
            news: std::sync::Mutex::new(PeerNews {
                expires_at,
                ping: None,
                end: None,
            }),
            version: AtomicU64::new(0),
            waker: AtomicWaker::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, PeerNews> {
        // Every update is a plain field assignment: a poisoned lock holds whole data.
        self.news
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn update(&self, change: impl FnOnce(&mut PeerNews)) {
        change(&mut self.lock());
        self.version.fetch_add(1, AtomicOrdering::Release);
        self.waker.wake();
    }

    fn expires_at(&self) -> u64 {
        self.lock().expires_at
    }

    /// The news, taking the ping to answer so that it is answered once.
    fn take(&self) -> PeerNews {
        let mut news = self.lock();
        PeerNews {
            expires_at: news.expires_at,
            ping: news.ping.take(),
            end: news.end,
        }
    }

    /// Resolves with the current version once it differs from `seen`.
    fn changed(&self, seen: u64) -> impl Future<Output = u64> + '_ {
        std::future::poll_fn(move |cx| {
            self.waker.register(cx.waker());
            let v = self.version.load(AtomicOrdering::Acquire);
            if v == seen {
                Poll::Pending
            } else {
                Poll::Ready(v)
            }
        })
    }

    /// Resolves once the reader is done.
    async fn ended(&self) {
        let mut seen = u64::MAX;
        while self.lock().end.is_none() {
            seen = self.changed(seen).await;
        }
    }
}

/// Refuses a connection the manager never registered: a close frame, then a short wait
/// for the peer's.
async fn close_unconnected(app: &AppState, sink: &mut Sink, mut stream: Stream, code: CloseCode) {
    app.metrics.closed(code);
    if timeout(app.ws.write_timeout, send_close(sink, code))
        .await
        .is_err()
    {
        app.metrics.write_timeout();
        return;
    }
    let _ = timeout(app.ws.close_timeout, async {
        while let Some(Ok(_)) = stream.next().await {}
    })
    .await;
}

async fn send_close(sink: &mut Sink, code: CloseCode) -> std::io::Result<()> {
    sink.write_close(code.code(), code.reason()).await
}

/// The longest single timer armed; a later deadline is re-armed when this one fires, so
/// a far-future `exp` or a huge interval cannot overflow an `Instant`.
const MAX_TIMER: Duration = Duration::from_secs(30 * 24 * 3600);

/// `d` from now, capped at [`MAX_TIMER`].
fn after(d: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(d.min(MAX_TIMER)).unwrap_or(now)
}

/// Seconds since the Unix epoch → the `Instant` it falls on (capped at [`MAX_TIMER`]).
fn instant_at_unix(secs: u64) -> Instant {
    let now_ms = Timestamp::now().as_millis();
    let at_ms = secs.saturating_mul(1_000);
    after(Duration::from_millis(at_ms.saturating_sub(now_ms)))
}

/// When a connection's first heartbeat ping is due: somewhere in the interval's second
/// half, so connections that arrived together (a restart, a load test) do not ping all
/// at once, interval after interval.
fn first_ping(interval: Duration) -> Instant {
    let spread = interval / 2;
    let jitter = spread.mul_f64(rand::random::<f64>());
    after(spread + jitter)
}

/// Slots of the write batch a connection keeps between batches.
const BATCH_KEEP_CAPACITY: usize = 1;

#[derive(Debug)]
enum WriteFailed {
    TimedOut,
    Socket,
}

async fn write_loop(app: &AppState, conn: &Connection, sink: &mut Sink, news: &NewsCell) {
    let settings = &app.ws;
    let heartbeat = app.manager.config().heartbeat;
    let leeway = app.auth.leeway().as_secs();
    let mut batch: Vec<Bytes> = Vec::new();
    let interval = heartbeat
        .interval
        .clamp(Duration::from_millis(10), MAX_TIMER);
    let expires_at = |exp: u64| instant_at_unix(exp.saturating_add(leeway));
    // One timer for both deadlines: the next heartbeat ping and the token's expiry.
    let mut next_ping = first_ping(interval);
    let mut token_at = Some(expires_at(news.expires_at()));
    let next_deadline = |ping: Instant, token: Option<Instant>| token.map_or(ping, |t| t.min(ping));
    let timer = tokio::time::sleep_until(next_deadline(next_ping, token_at));
    tokio::pin!(timer);
    let mut seen = 0u64;
    let mut reader_end = None;

    loop {
        tokio::select! {
            biased;
            out = conn.next_frames(&mut batch, settings.write_batch_frames) => match out {
                Outbound::Frames => {
                    if let Err(e) = write_batch(app, sink, &mut batch).await {
                        if matches!(e, WriteFailed::TimedOut) {
                            app.metrics.write_timeout();
                            tracing::debug!(connection = %conn.id(), "write timed out; dropping");
                        }
                        return;
                    }
                    // A burst grew the batch; an idle connection keeps only a few slots.
                    batch.shrink_to(BATCH_KEEP_CAPACITY);
                }
                Outbound::Close(code) => {
                    app.metrics.closed(code);
                    match Box::pin(timeout(settings.write_timeout, send_close(sink, code))).await {
                        Err(_) => app.metrics.write_timeout(),
                        Ok(Err(_)) => {}
                        Ok(Ok(())) => {
                            if reader_end.is_none() {
                                // The peer's close frame ends the reader.
                                let _ = Box::pin(timeout(settings.close_timeout, news.ended())).await;
                            }
                        }
                    }
                    return;
                }
            },
            () = &mut timer => {
                let now = Instant::now();
                if now >= next_ping {
                    next_ping = after(interval);
                    if heartbeat.is_expired(conn.silent_for()) {
                        conn.heartbeat_timed_out();
                    } else if !Box::pin(write_control(app, sink, OpCode::Ping, &[])).await {
                        return;
                    }
                }
                if token_at.is_some_and(|t| now >= t) {
                    let exp = news.expires_at();
                    if Timestamp::now().as_millis() >= exp.saturating_add(leeway).saturating_mul(1_000) {
                        token_at = None;
                        tracing::debug!(connection = %conn.id(), "token expired");
                        conn.close(CloseCode::TokenExpired);
                    } else {
                        token_at = Some(expires_at(exp));
                    }
                }
                timer.as_mut().reset(next_deadline(next_ping, token_at));
            }
            version = news.changed(seen), if reader_end.is_none() => {
                seen = version;
                let current = news.take();
                if token_at.is_some() {
                    token_at = Some(expires_at(current.expires_at));
                    timer.as_mut().reset(next_deadline(next_ping, token_at));
                }
                if let Some(payload) = current.ping
                    && !Box::pin(write_control(app, sink, OpCode::Pong, &payload)).await
                {
                    return;
                }
                match current.end {
                    None | Some(ReaderEnd::Failed) => reader_end = current.end,
                    Some(ReaderEnd::PeerClosed(code)) => {
                        // Completes the close handshake the peer started.
                        let code = code.unwrap_or(1000);
                        let _ = Box::pin(timeout(settings.close_timeout, sink.write_close(code, ""))).await;
                        return;
                    }
                    Some(ReaderEnd::PeerGone) => return,
                }
            }
        }
    }
}

/// Writes a ping or pong under the write timeout; `false` when the connection is done.
async fn write_control(app: &AppState, sink: &mut Sink, opcode: OpCode, payload: &[u8]) -> bool {
    match timeout(app.ws.write_timeout, sink.write_control(opcode, payload)).await {
        Ok(Ok(())) => true,
        Ok(Err(_)) => false,
        Err(_) => {
            app.metrics.write_timeout();
            false
        }
    }
}

/// Writes a batch: every frame in one vectored write where the socket takes it all, all
/// within the write timeout.
async fn write_batch(
    app: &AppState,
    sink: &mut Sink,
    batch: &mut Vec<Bytes>,
) -> Result<(), WriteFailed> {
    let now = Timestamp::now();
    for frame in batch.iter() {
        app.metrics.frame_written(frame, now);
    }
    let result = {
        let work = sink.write_text(batch);
        // Almost every batch fits the socket's send buffer and completes on its first
        // poll: arm the write timeout's timer only when it does not, rather than
        // inserting and cancelling a timer for every batch.
        let mut work = std::pin::pin!(work);
        match std::future::poll_fn(|cx| Poll::Ready(work.as_mut().poll(cx))).await {
            Poll::Ready(r) => r.map_err(|_| WriteFailed::Socket),
            // Rare (the socket's buffer is full): the timer lives on the heap meanwhile.
            Poll::Pending => match Box::pin(timeout(app.ws.write_timeout, work)).await {
                Ok(r) => r.map_err(|_| WriteFailed::Socket),
                Err(_) => Err(WriteFailed::TimedOut),
            },
        }
    };
    batch.clear();
    result
}

/// The close code a read error calls for; `None` when the peer is gone and nothing can be
/// sent.
fn read_error_code(e: &tungstenite::Error) -> Option<CloseCode> {
    use tungstenite::Error as WsError;
    match e {
        WsError::ConnectionClosed | WsError::AlreadyClosed | WsError::Io(_) => None,
        WsError::Capacity(_) | WsError::WriteBufferFull(_) => Some(CloseCode::MessageTooBig),
        WsError::Utf8(_) => Some(CloseCode::InvalidPayload),
        _ => Some(CloseCode::ProtocolError),
    }
}

struct Reader {
    app: Arc<AppState>,
    conn: Arc<Connection>,
    news: Arc<NewsCell>,
    bad_frames: u32,
}

/// Reads until the connection ends, then tells the writer how.
async fn read_loop(
    app: Arc<AppState>,
    conn: Arc<Connection>,
    stream: Stream,
    first: Option<Message>,
    news: Arc<NewsCell>,
) {
    let mut reader = Reader {
        app,
        conn,
        news,
        bad_frames: 0,
    };
    let end = reader.read(stream, first).await;
    reader.news.update(|n| n.end = Some(end));
}

impl Drop for Reader {
    /// A reader stopped any other way (aborted with its task) still tells the writer.
    fn drop(&mut self) {
        if self.news.lock().end.is_none() {
            self.news.update(|n| n.end = Some(ReaderEnd::PeerGone));
        }
    }
}

impl Reader {
    async fn read(&mut self, mut stream: Stream, first: Option<Message>) -> ReaderEnd {
        let reader = self;
        if let Some(msg) = first
            && let Some(end) = reader.on_message(msg)
        {
            return end;
        }
        while let Some(item) = stream.next().await {
            match item {
                Ok(msg) => {
                    reader.conn.touch();
                    if let Some(end) = reader.on_message(msg) {
                        return end;
                    }
                }
                Err(e) => {
                    return match read_error_code(&e) {
                        Some(code) => {
                            tracing::debug!(connection = %reader.conn.id(), %code, "read error");
                            reader.conn.close(code);
                            ReaderEnd::Failed
                        }
                        None => ReaderEnd::PeerGone,
                    };
                }
            }
        }
        ReaderEnd::PeerGone
    }

    /// Handles one message; `Some` when it ends the connection (the peer's close frame).
    fn on_message(&mut self, msg: Message) -> Option<ReaderEnd> {
        if let Message::Close(frame) = msg {
            return Some(ReaderEnd::PeerClosed(frame.map(|f| u16::from(f.code))));
        }
        if let Message::Ping(payload) = msg {
            self.news.update(|news| news.ping = Some(payload));
            return None;
        }
        if self.conn.closing().is_some() {
            return None;
        }
        match msg {
            Message::Text(text) => self.on_text(text.as_bytes()),
            Message::Binary(_) => self.bad(
                ErrorCode::BadRequest,
                "binary frames are not accepted; send JSON text frames".into(),
            ),
            Message::Ping(_) | Message::Pong(_) | Message::Close(_) | Message::Frame(_) => {}
        }
        None
    }

    fn on_text(&mut self, bytes: &[u8]) {
        match ClientFrame::decode(bytes) {
            Ok(ClientFrame::Ping) => {
                self.conn.send_control(&ServerFrame::Pong);
            }
            Ok(ClientFrame::Ack { seq }) => self.conn.ack(seq),
            Ok(ClientFrame::Resume { .. }) => self.bad(
                ErrorCode::ResumeNotFirst,
                "`resume` is accepted only as the first frame, right after connecting; \
                 or resume with `?last_seq=N&epoch=E`"
                    .into(),
            ),
            Ok(ClientFrame::RefreshToken { token }) => match self.app.auth.verify(&token) {
                Ok(v) if v.user == *self.conn.user_id() => {
                    self.news.update(|news| news.expires_at = v.expires_at);
                    self.app.metrics.token_refreshed();
                }
                Ok(_) => self.bad(
                    ErrorCode::InvalidToken,
                    "field `token`: the token is for another user".into(),
                ),
                Err(e) => self.bad(ErrorCode::InvalidToken, format!("field `token`: {e}")),
            },
            Err(e) => {
                let code = match &e {
                    DecodeError::UnknownType { .. } => ErrorCode::UnknownType,
                    DecodeError::TooLarge { .. } => ErrorCode::TooLarge,
                    _ => ErrorCode::BadRequest,
                };
                self.bad(code, e.to_string());
            }
        }
    }

    /// Answers a bad frame with an `error` frame; past the limit, closes with 1008.
    fn bad(&mut self, code: ErrorCode, message: String) {
        self.app.metrics.bad_frame();
        self.bad_frames = self.bad_frames.saturating_add(1);
        if self.bad_frames > self.app.ws.max_bad_frames {
            tracing::debug!(connection = %self.conn.id(), "too many bad frames");
            self.conn.close(CloseCode::PolicyViolation);
            return;
        }
        self.conn
            .send_control(&ServerFrame::Error(ErrorFrame { code, message }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_pairs_are_decoded() {
        let q = parse_query(Some("token=a%2Eb.c&last_seq=5&epoch=e_1&x=y+z"));
        assert_eq!(q.token.as_deref(), Some("a.b.c"));
        assert_eq!(q.last_seq.as_deref(), Some("5"));
        assert_eq!(q.epoch.as_deref(), Some("e_1"));
        assert_eq!(percent_decode("%zz%4"), "%zz%4");
        assert_eq!(percent_decode("a%20b"), "a b");
    }

    #[test]
    fn resume_needs_both_fields_and_a_number() {
        let q = |s| parse_query(Some(s));
        assert_eq!(resume_from_query(&q("")), Ok(None));
        assert!(matches!(
            resume_from_query(&q("last_seq=4&epoch=e_1")),
            Ok(Some(Resume::After {
                last_seq: Seq(4),
                ..
            }))
        ));
        assert_eq!(
            resume_from_query(&q("last_seq=4")).map_err(|e| e.0),
            Err("epoch")
        );
        assert_eq!(
            resume_from_query(&q("epoch=e")).map_err(|e| e.0),
            Err("last_seq")
        );
        assert_eq!(
            resume_from_query(&q("last_seq=-1&epoch=e")).map_err(|e| e.0),
            Err("last_seq")
        );
    }

    #[test]
    fn tokens_come_from_header_subprotocol_or_query() {
        let mut h = HeaderMap::new();
        let q = parse_query(Some("token=q"));
        assert_eq!(find_token(&h, &q), Ok("q".into()));
        h.insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static("agentwire.v1, agentwire.auth.s"),
        );
        assert_eq!(find_token(&h, &q), Ok("s".into()));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer b"));
        assert_eq!(find_token(&h, &q), Ok("b".into()));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic b"));
        assert_eq!(find_token(&h, &q), Err(AuthError::Malformed));
        assert_eq!(
            find_token(&HeaderMap::new(), &WsQuery::default()),
            Err(AuthError::Missing)
        );
    }
}
