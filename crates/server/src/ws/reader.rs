//! The reader: decodes client frames, answers them by queueing control frames through the
//! manager (never by writing), and tells the writer how reading ended.

use std::sync::Arc;

use agentwire_manager::Connection;
use agentwire_protocol::{
    ClientFrame, CloseCode, DecodeError, ErrorCode, ErrorFrame, Seq, ServerFrame,
};
use futures_util::StreamExt;
use tokio::io::AsyncReadExt;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::{self, Message};

use super::WsState;
use super::cooldown::Started;
use super::news::{NewsCell, ReaderEnd, Stream};

/// The close code a read error calls for; `None` when the peer is gone and nothing can be
/// sent.
pub(super) fn read_error_code(e: &tungstenite::Error) -> Option<CloseCode> {
    use tungstenite::Error as WsError;
    match e {
        WsError::ConnectionClosed | WsError::AlreadyClosed | WsError::Io(_) => None,
        WsError::Capacity(_) | WsError::WriteBufferFull(_) => Some(CloseCode::MessageTooBig),
        WsError::Utf8(_) => Some(CloseCode::InvalidPayload),
        _ => Some(CloseCode::ProtocolError),
    }
}

struct Reader {
    app: Arc<WsState>,
    conn: Arc<Connection>,
    news: Arc<NewsCell>,
    bad_frames: u32,
    rate: Option<FrameRate>,
    /// The newest `ack` read and not yet recorded, and whether the peer was heard from
    /// since the last record: a burst of frames already read is recorded once, when the
    /// socket has nothing more to give.
    pending_ack: Option<Seq>,
    heard: bool,
    /// Closed with 1008 for its frame rate: nothing more it sends is parsed.
    flooded: bool,
}

/// Bytes read at a time from a connection closed for flooding, discarded unparsed.
const DISCARD_READ_BYTES: usize = 64 * 1024;

/// The client-frame rate limit of one connection: a token bucket of `burst` frames
/// refilled at `per_second`, allowed to go into debt by as much again. A frame that finds
/// the bucket empty is dropped unread (the first of a run is answered with a
/// `rate_limited` error frame); a client that keeps sending until the debt reaches a
/// whole burst is closed with 1008. A client that stays under the rate is never limited;
/// one at twice the rate is closed within about `2 × burst / per_second`.
#[derive(Debug)]
struct FrameRate {
    per_second: f64,
    burst: f64,
    tokens: f64,
    at: Instant,
    /// The last frame was dropped: the `rate_limited` frame was sent for this run.
    limited: bool,
}

/// What [`FrameRate::take`] decided about one frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Admit {
    Read,
    /// Dropped; `first` of a run of dropped frames.
    Drop {
        first: bool,
    },
    /// The client kept sending too fast: close with 1008.
    Close,
}

impl FrameRate {
    /// `None` when `per_second` is 0 (no limit).
    fn new(per_second: u32, burst: u32, now: Instant) -> Option<FrameRate> {
        (per_second > 0).then(|| FrameRate {
            per_second: f64::from(per_second),
            burst: f64::from(burst.max(1)),
            tokens: f64::from(burst.max(1)),
            at: now,
            limited: false,
        })
    }

    fn take(&mut self, now: Instant) -> Admit {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.at = now;
        self.tokens = (self.tokens + elapsed * self.per_second).min(self.burst) - 1.0;
        if self.tokens >= 0.0 {
            self.limited = false;
            return Admit::Read;
        }
        if self.tokens < -self.burst {
            return Admit::Close;
        }
        let first = !std::mem::replace(&mut self.limited, true);
        Admit::Drop { first }
    }
}

/// Reads until the connection ends, then tells the writer how.
pub(super) async fn read_loop(
    app: Arc<WsState>,
    conn: Arc<Connection>,
    stream: Stream,
    first: Option<Box<Message>>,
    news: Arc<NewsCell>,
) {
    let rate = FrameRate::new(
        app.ws.client_frame_rate,
        app.ws.client_frame_burst,
        Instant::now(),
    );
    let mut reader = Reader {
        app,
        conn,
        news,
        bad_frames: 0,
        rate,
        pending_ack: None,
        heard: false,
        flooded: false,
    };
    let end = reader.read(stream, first).await;
    reader.news.update(|n| n.end = Some(end));
}

impl Drop for Reader {
    /// A reader stopped any other way (aborted with its task) still tells the writer.
    fn drop(&mut self) {
        if self.news.lock().news.end.is_none() {
            self.news.update(|n| n.end = Some(ReaderEnd::PeerGone));
        }
    }
}

impl Reader {
    /// What a connection closed for flooding still sends is read and thrown away
    /// unparsed (no frame decoding, no unmasking, 64 KiB a read instead of
    /// `--read-buffer-size`) until the client hangs up, or until the writer, done with the
    /// close frame and its `--close-timeout` wait, aborts this task. The client's close
    /// frame goes unseen with the rest, so the writer closes the server's side after its
    /// close frame and the client hangs up at once. Reading on rather than dropping the
    /// socket: a socket closed with bytes unread answers with a reset, which can destroy
    /// the close frame before the client reads its 1008.
    async fn discard(&mut self, mut stream: Stream) -> ReaderEnd {
        self.news.update(|n| n.discarding = true);
        let mut buf = vec![0u8; DISCARD_READ_BYTES];
        let raw = stream.get_mut();
        while let Ok(n) = raw.read(&mut buf).await {
            if n == 0 {
                break;
            }
        }
        ReaderEnd::Failed
    }

    /// `first`, a frame read before the reader started, is boxed, as what runs once is: the
    /// reader's future is as large as its largest state, and every idle connection holds
    /// it.
    async fn read(&mut self, mut stream: Stream, first: Option<Box<Message>>) -> ReaderEnd {
        let reader = self;
        if let Some(msg) = first {
            if let Some(end) = reader.on_message(*msg) {
                return end;
            }
            if reader.flooded {
                return Box::pin(reader.discard(stream)).await;
            }
        }
        loop {
            let next = std::future::poll_fn(|cx| {
                let polled = stream.poll_next_unpin(cx);
                if polled.is_pending() {
                    // Everything already read is handled: record it once.
                    reader.record();
                }
                polled
            });
            let Some(item) = next.await else { break };
            match item {
                Ok(msg) => {
                    reader.heard = true;
                    if let Some(end) = reader.on_message(msg) {
                        reader.record();
                        return end;
                    }
                    if reader.flooded {
                        reader.record();
                        return Box::pin(reader.discard(stream)).await;
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
        reader.record();
        ReaderEnd::PeerGone
    }

    /// Records what a burst of frames left pending: that the peer was heard from, and its
    /// newest `ack`.
    fn record(&mut self) {
        if std::mem::take(&mut self.heard) {
            self.conn.touch();
        }
        if let Some(seq) = self.pending_ack.take() {
            self.conn.ack(seq);
        }
    }

    /// Whether the rate limit lets `msg` be read; otherwise it is dropped (and the
    /// connection closed when the client keeps on).
    fn within_rate(&mut self) -> bool {
        let Some(rate) = &mut self.rate else {
            return true;
        };
        match rate.take(Instant::now()) {
            Admit::Read => true,
            Admit::Drop { first } => {
                self.app.metrics.rate_limited();
                if first {
                    self.conn.send_control(&ServerFrame::Error(ErrorFrame {
                        code: ErrorCode::RateLimited,
                        message: format!(
                            "more than {} frames per second (bursts of {}): this frame and \
                             the next ones sent too fast are dropped; keep on and the \
                             connection is closed with 1008",
                            self.app.ws.client_frame_rate, self.app.ws.client_frame_burst
                        ),
                    }));
                }
                false
            }
            Admit::Close => {
                self.app.metrics.rate_limited();
                self.app.metrics.rate_limit_closed();
                let user = self.conn.user_id();
                let cooldown = self.app.cooldowns.start(user);
                if let Some(started) = cooldown {
                    self.app
                        .metrics
                        .cooldown_started(started == Started::CutAnother);
                }
                // Once per flood and user: the handshakes it then retries are refused
                // without a line each.
                tracing::info!(
                    user = %user,
                    connection = %self.conn.id(),
                    cooldown = ?cooldown.map(|_| self.app.ws.client_frame_cooldown),
                    "client frames too fast: closed with 1008"
                );
                self.conn.close(CloseCode::PolicyViolation);
                self.flooded = true;
                false
            }
        }
    }

    /// Handles one message; `Some` when it ends the connection (the peer's close frame).
    fn on_message(&mut self, msg: Message) -> Option<ReaderEnd> {
        if let Message::Close(frame) = msg {
            return Some(ReaderEnd::PeerClosed(frame.map(|f| u16::from(f.code))));
        }
        if let Message::Ping(payload) = msg {
            if self.within_rate() {
                self.news
                    .update(|news| news.ping = Some(payload[..].into()));
            }
            return None;
        }
        if self.conn.closing().is_some() || !self.within_rate() {
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
            Ok(ClientFrame::Ack { seq }) => {
                self.pending_ack = Some(self.pending_ack.map_or(seq, |p| p.max(seq)));
            }
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
                Ok(_) => {
                    self.app.metrics.token_refresh_refused("token_other_user");
                    self.bad(
                        ErrorCode::InvalidToken,
                        "field `token`: the token is for another user".into(),
                    );
                }
                Err(e) => {
                    self.app.metrics.token_refresh_refused(e.reason());
                    self.bad(ErrorCode::InvalidToken, format!("field `token`: {e}"));
                }
            },
            Err(e) => {
                let code = match &e {
                    DecodeError::UnknownType { .. } => ErrorCode::UnknownType,
                    DecodeError::TooLarge { .. } | DecodeError::TooDeep { .. } => {
                        ErrorCode::TooLarge
                    }
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
    use std::time::Duration;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_client_under_the_rate_is_never_limited() {
        let mut rate = FrameRate::new(10, 20, Instant::now()).expect("limited");
        for _ in 0..20 {
            assert_eq!(rate.take(Instant::now()), Admit::Read);
        }
        for _ in 0..1_000 {
            tokio::time::advance(Duration::from_millis(100)).await;
            assert_eq!(rate.take(Instant::now()), Admit::Read);
        }
        assert!(FrameRate::new(0, 20, Instant::now()).is_none());
    }

    /// Issue 14: one client sending frames in a loop held a core.
    #[tokio::test(start_paused = true)]
    async fn a_flood_is_dropped_then_closed_and_a_pause_forgives_it() {
        let mut rate = FrameRate::new(10, 20, Instant::now()).expect("limited");
        let now = Instant::now();
        let admits: Vec<Admit> = (0..41).map(|_| rate.take(now)).collect();
        assert!(admits[..20].iter().all(|a| *a == Admit::Read));
        assert_eq!(admits[20], Admit::Drop { first: true });
        assert!(
            admits[21..40]
                .iter()
                .all(|a| *a == Admit::Drop { first: false })
        );
        assert_eq!(admits[40], Admit::Close, "a whole burst of debt");

        let mut rate = FrameRate::new(10, 20, Instant::now()).expect("limited");
        for _ in 0..30 {
            rate.take(Instant::now());
        }
        // Four seconds repay the debt and refill the bucket.
        tokio::time::advance(Duration::from_secs(4)).await;
        assert_eq!(rate.take(Instant::now()), Admit::Read);
        assert!(!rate.limited);
    }
}
