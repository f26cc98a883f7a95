//! The writer: the only code that writes to a connection's socket. It drains the queue in
//! batches, sends pings, the pongs the reader asks for and the close frame, each under the
//! write timeout, and closes with 4002 when the token expires.

use std::future::Future;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use agentwire_manager::{Connection, DirectSink, Outbound};
use agentwire_protocol::{CloseCode, Timestamp};
use bytes::Bytes;
use futures_util::StreamExt;
use tokio::time::{Instant, timeout};

use super::WsState;
use super::format::{Format, Projector};
use super::news::{NewsCell, ReaderEnd, Sink, Stream};
use super::wire::OpCode;
use crate::http::timer::{MAX_TIMER, after, first_ping, instant_at_unix};

/// Refuses a connection the manager never registered: a close frame, then a short wait
/// for the peer's.
pub(super) async fn close_unconnected(
    app: &WsState,
    sink: &mut Sink,
    mut stream: Stream,
    code: CloseCode,
) {
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

/// Why a connection's writer ended, for the `disconnected` log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum WriterEnd {
    /// The peer sent a close frame with this code (1005: none).
    PeerClosed(u16),
    /// The peer went away without a close frame, or reading failed.
    PeerGone,
    /// A write (a batch, a ping, a pong) failed or took longer than the write timeout.
    WriteFailed,
    /// The server closed it with this code.
    Closed(CloseCode),
}

impl std::fmt::Display for WriterEnd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WriterEnd::PeerClosed(code) => write!(f, "closed by the client ({code})"),
            WriterEnd::PeerGone => f.write_str("the client went away"),
            WriterEnd::WriteFailed => f.write_str("a write failed or timed out"),
            WriterEnd::Closed(code) => {
                write!(
                    f,
                    "closed by the server ({} {})",
                    code.code(),
                    code.reason()
                )
            }
        }
    }
}

#[derive(Debug)]
enum WriteFailed {
    TimedOut,
    Socket,
}

/// The socket in the writer's hands: taken back from the news cell if it was parked there
/// (lent), the rest of a frame a deliverer wrote to it in part written first, within the
/// write timeout. `None` when that write failed or timed out, which ends the connection.
async fn hold<'a>(
    app: &WsState,
    news: &NewsCell,
    held: &'a mut Option<Sink>,
) -> Option<&'a mut Sink> {
    if held.is_none() {
        let (sink, rest) = news.unpark();
        *held = sink;
        if let (Some(sink), Some(rest)) = (held.as_mut(), rest)
            && !Box::pin(write_rest(app, sink, rest)).await
        {
            return None;
        }
    }
    held.as_mut()
}

/// Writes the rest of a frame begun elsewhere, within the write timeout.
async fn write_rest(app: &WsState, sink: &mut Sink, rest: Bytes) -> bool {
    match timeout(app.ws.write_timeout, sink.write_raw(&rest)).await {
        Ok(r) => r.is_ok(),
        Err(_) => {
            app.metrics.write_timeout();
            false
        }
    }
}

/// The connection's writer, until the connection ends. While it waits for frames on a
/// plain TCP socket whose frames it does not project, its socket is parked in `news` and
/// lent to the connection ([`Connection::next_frames_lending`]); the caller ends the lend
/// ([`Connection::stop_lending`]) once it returns.
pub(super) async fn write_loop(
    app: &WsState,
    conn: &Connection,
    sink: Sink,
    news: &Arc<NewsCell>,
    format: Format,
) -> WriterEnd {
    let settings = &app.ws;
    let heartbeat = app.manager.config().heartbeat;
    let leeway = app.auth.leeway().as_secs();
    let mut batch: Vec<Bytes> = Vec::new();
    // Each frame's `ts` (for an event frame), as the manager knows it: the latency metric
    // reads it from here rather than from the frame.
    let mut stamps: Vec<Option<u64>> = Vec::new();
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
    // Whether the timer holds this task's waker for its current deadline (see `due`).
    let mut timer_armed = false;
    let mut seen = 0u64;
    let mut reader_end = None;
    let mut projector = Projector::for_format(format);
    let lend: Option<Arc<dyn DirectSink>> =
        (projector.is_none() && sink.is_tcp()).then(|| Arc::clone(news) as Arc<dyn DirectSink>);
    let mut held = Some(sink);
    let max_frames = settings.write_batch_frames;

    // Biased, the queue last: what the peer said (its close, a ping to answer, a new
    // token) and the timer (heartbeat pings, the token's expiry) are served between any
    // two batches, however long the queue stays full. Looking at both costs two polls per
    // batch.
    loop {
        // Nothing is lent while direct writes are paused (a saturated node): frames queue,
        // and each wake-up writes as many as have queued meanwhile.
        let lending = lend
            .as_ref()
            .filter(|_| !app.manager.direct_writes_paused());
        if lending.is_some()
            && let Some(sink) = held.take()
        {
            news.park(sink);
        }
        tokio::select! {
            biased;
            version = news.changed(seen), if reader_end.is_none() => {
                seen = version;
                // Woken to write the rest of a frame, or with news that may need the socket.
                let Some(sink) = hold(app, news, &mut held).await else {
                    return WriterEnd::WriteFailed;
                };
                let current = news.take();
                if token_at.is_some() {
                    token_at = Some(expires_at(current.expires_at));
                    timer.as_mut().reset(next_deadline(next_ping, token_at));
                    timer_armed = false;
                }
                if let Some(payload) = current.ping
                    && !Box::pin(write_control(app, sink, OpCode::Pong, &payload)).await
                {
                    return WriterEnd::WriteFailed;
                }
                match current.end {
                    None | Some(ReaderEnd::Failed) => reader_end = current.end,
                    Some(ReaderEnd::PeerClosed(code)) => {
                        // Completes the close handshake the peer started.
                        let _ = Box::pin(timeout(settings.close_timeout, sink.write_close(code.unwrap_or(1000), ""))).await;
                        return WriterEnd::PeerClosed(code.unwrap_or(1005));
                    }
                    Some(ReaderEnd::PeerGone) => return WriterEnd::PeerGone,
                }
            }
            () = due(timer.as_mut(), &mut timer_armed) => {
                let now = Instant::now();
                if now >= next_ping {
                    next_ping = after(interval);
                    if heartbeat.is_expired(conn.silent_for()) {
                        conn.heartbeat_timed_out();
                    } else {
                        let Some(sink) = hold(app, news, &mut held).await else {
                            return WriterEnd::WriteFailed;
                        };
                        if !Box::pin(write_control(app, sink, OpCode::Ping, &[])).await {
                            return WriterEnd::WriteFailed;
                        }
                    }
                }
                if token_at.is_some_and(|t| now >= t) {
                    let exp = news.expires_at();
                    if Timestamp::now().as_millis() >= exp.saturating_add(leeway).saturating_mul(1_000) {
                        token_at = None;
                        tracing::debug!(connection = %conn.id(), "token expired");
                        // Its queue is dropped: the close frame is next.
                        conn.close(CloseCode::TokenExpired);
                    } else {
                        token_at = Some(expires_at(exp));
                    }
                }
                timer.as_mut().reset(next_deadline(next_ping, token_at));
                timer_armed = false;
            }
            out = conn.next_frames_lending(&mut batch, &mut stamps, max_frames, lending) => match out {
                Outbound::Frames => {
                    let Some(sink) = hold(app, news, &mut held).await else {
                        return WriterEnd::WriteFailed;
                    };
                    if let Some(projector) = projector.as_mut() {
                        projector.project_batch(&mut batch, &app.metrics);
                        // Projected frames are other frames: the metric reads them as
                        // they are.
                        stamps.clear();
                    }
                    match write_batch(app, conn, sink, &mut batch, &mut stamps).await {
                        Err(e) => {
                            if matches!(e, WriteFailed::TimedOut) {
                                app.metrics.write_timeout();
                                tracing::debug!(connection = %conn.id(), "write timed out; dropping");
                            }
                            return WriterEnd::WriteFailed;
                        }
                        // Written whole and flushed: the user's delivery receipt moves.
                        Ok(true) => conn.written(),
                        // Cut at a frame boundary (the connection was abandoned).
                        Ok(false) => {}
                    }
                    // The emptied batch goes back to `next_frames`, which hands its buffer
                    // to the queue (or frees a large one), so a writer waiting for frames
                    // keeps no buffer of its own.
                    // A queue that never empties must not keep this worker from its other
                    // tasks, nor the timer from being looked at: yield once the task's
                    // budget is spent.
                    tokio::task::consume_budget().await;
                }
                Outbound::Close(code) => {
                    app.metrics.closed(code);
                    let Some(sink) = hold(app, news, &mut held).await else {
                        return WriterEnd::Closed(code);
                    };
                    match Box::pin(timeout(settings.write_timeout, send_close(sink, code))).await {
                        Err(_) => app.metrics.write_timeout(),
                        Ok(Err(_)) => {}
                        Ok(Ok(())) => {
                            if reader_end.is_none() {
                                // The peer's close frame ends the reader, unless the reader
                                // discards what a flooder sends: then the server closes its
                                // side first, and the peer hanging up ends the reader.
                                let _ = Box::pin(timeout(settings.close_timeout, async {
                                    if news.ended_or_discarding().await {
                                        let _ = sink.shutdown().await;
                                        news.ended().await;
                                    }
                                }))
                                .await;
                            }
                        }
                    }
                    return WriterEnd::Closed(code);
                }
            },
        }
    }
}

/// Resolves when `timer` fires, polling it only when it may have: once after each reset
/// (which hands it this task's waker; `armed` records that), then only once it reports
/// itself elapsed. The writer looks at its timer on every wake-up, and a poll that finds
/// nothing costs more than that look. The poll is not charged to the task's budget, so a
/// timer that was polled and is pending always holds the waker (`consume_budget` in the
/// loop keeps a busy writer yielding).
fn due<'a>(
    mut timer: std::pin::Pin<&'a mut tokio::time::Sleep>,
    armed: &'a mut bool,
) -> impl Future<Output = ()> + 'a {
    std::future::poll_fn(move |cx| {
        if *armed && !timer.is_elapsed() {
            return Poll::Pending;
        }
        let polled = std::pin::pin!(tokio::task::unconstrained(timer.as_mut())).poll(cx);
        *armed = polled.is_pending();
        polled
    })
}

/// Writes a ping or pong under the write timeout; `false` when the connection is done.
async fn write_control(app: &WsState, sink: &mut Sink, opcode: OpCode, payload: &[u8]) -> bool {
    match timeout(app.ws.write_timeout, sink.write_control(opcode, payload)).await {
        Ok(Ok(())) => true,
        Ok(Err(_)) => false,
        Err(_) => {
            app.metrics.write_timeout();
            false
        }
    }
}

/// How a batch write that had to wait ended.
enum Waited {
    Done(std::io::Result<()>),
    TimedOut,
    /// The connection was abandoned (a slow consumer, an expired token) while the socket
    /// took no more: the write stops at the next frame boundary, by the same deadline.
    Cut,
}

/// Writes a batch: every frame in one vectored write where the socket takes it all, all
/// within the write timeout. Almost every batch fits the socket's send buffer and is
/// written at once, here; only a batch that must wait (or is longer than a stack batch, or
/// goes to a transport other than plain TCP) has its waiting future allocated, so the
/// writer's own future — which every idle connection holds, and which is as large as its
/// largest state — has no room for it.
async fn write_batch(
    app: &WsState,
    conn: &Connection,
    sink: &mut Sink,
    batch: &mut Vec<Bytes>,
    stamps: &mut Vec<Option<u64>>,
) -> Result<bool, WriteFailed> {
    app.metrics.frames_written(batch, stamps, Timestamp::now());
    stamps.clear();
    let mut sent = 0;
    let result = match sink.write_text_now(batch, &mut sent) {
        Ok(true) => Ok(true),
        Ok(false) => Box::pin(write_batch_waiting(app, conn, sink, batch, sent)).await,
        Err(_) => Err(WriteFailed::Socket),
    };
    batch.clear();
    result
}

/// Writes what is left of a batch after its first `sent` bytes, within the write timeout.
/// While the socket takes no more, a connection the manager abandons (its queue dropped: a
/// slow consumer, an expired token) stops the batch at the end of the frame in progress,
/// so its close frame can follow as soon as the peer reads that far (instead of the write
/// timeout cutting it with no close frame). The timeout's timer is armed only if the
/// write waits (a biased select polls it last).
async fn write_batch_waiting(
    app: &WsState,
    conn: &Connection,
    sink: &mut Sink,
    batch: &[Bytes],
    mut sent: usize,
) -> Result<bool, WriteFailed> {
    let deadline = Instant::now() + app.ws.write_timeout;
    let waited = tokio::select! {
        biased;
        r = sink.write_text_rest(batch, &mut sent) => Waited::Done(r),
        _ = conn.abandoned() => Waited::Cut,
        () = tokio::time::sleep_until(deadline) => Waited::TimedOut,
    };
    match waited {
        Waited::Done(r) => r.map(|()| true).map_err(|_| WriteFailed::Socket),
        Waited::TimedOut => Err(WriteFailed::TimedOut),
        Waited::Cut => {
            match tokio::time::timeout_at(deadline, sink.finish_frame(batch, sent)).await {
                Ok(r) => r.map(|()| false).map_err(|_| WriteFailed::Socket),
                Err(_) => Err(WriteFailed::TimedOut),
            }
        }
    }
}
