//! The stream's writer: drains the connection's queue into SSE messages, sends heartbeat
//! comments, ends the stream when the token expires, and writes the final `close` event —
//! each chunk handed to hyper within the write timeout, or the TCP connection is cut.

use std::sync::Arc;
use std::time::Duration;

use agentwire_manager::{Connection, Outbound};
use agentwire_protocol::sse::write_message;
use agentwire_protocol::{CloseCode, Timestamp};
use axum::body::Body;
use bytes::Bytes;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::SseState;
use super::encode::{HEARTBEAT, close_data, retry_hint, stream_position};
use crate::http::door::ConnSlot;
use crate::http::timer::{MAX_TIMER, after, first_ping, instant_at_unix};
use crate::ws::{Format, Projector, close_event};

/// Chunks waiting between the writer and hyper: one, so that hyper's own buffer and the
/// socket's are the only others, and a peer that stops reading stops the writer at once.
const CHANNEL_CHUNKS: usize = 1;

/// Starts the stream of `conn` and returns the answer's body. The writer runs in its own
/// task until the stream ends; dropping the body (hyper does when the peer is gone) ends
/// it, and with it the connection's registration.
pub(super) fn stream_events(
    app: Arc<SseState>,
    conn: Connection,
    expires_at: u64,
    slot: Option<ConnSlot>,
    format: Format,
) -> Body {
    let (tx, mut rx) = mpsc::channel::<Bytes>(CHANNEL_CHUNKS);
    tokio::spawn(async move {
        let writer = Writer {
            app: &app,
            conn: &conn,
            tx,
            slot,
            format,
        };
        writer.run(expires_at).await;
        conn.disconnect();
        tracing::debug!(connection = %conn.id(), "event stream ended");
    });
    Body::from_stream(futures_util::stream::poll_fn(move |cx| {
        rx.poll_recv(cx)
            .map(|chunk| chunk.map(Ok::<_, std::convert::Infallible>))
    }))
}

/// Why a chunk was not handed over.
#[derive(Debug)]
enum Stop {
    /// The body was dropped: the peer is gone.
    Gone,
    /// hyper did not take the chunk within the write timeout.
    TimedOut,
    /// The connection was abandoned (a slow consumer, an expired token) while waiting:
    /// the chunk is dropped and the close follows.
    Abandoned,
}

struct Writer<'a> {
    app: &'a SseState,
    conn: &'a Connection,
    tx: mpsc::Sender<Bytes>,
    slot: Option<ConnSlot>,
    format: Format,
}

impl Writer<'_> {
    async fn run(&self, expires_at: u64) {
        let settings = &self.app.conn.ws;
        let heartbeat = self.app.conn.manager.config().heartbeat;
        let leeway = self.app.conn.auth.leeway().as_secs();
        let interval = heartbeat
            .interval
            .clamp(Duration::from_millis(10), MAX_TIMER);
        let token_deadline = |exp: u64| instant_at_unix(exp.saturating_add(leeway));
        let mut next_ping = first_ping(interval);
        let mut token_at = Some(token_deadline(expires_at));
        let next_deadline =
            |ping: Instant, token: Option<Instant>| token.map_or(ping, |t| t.min(ping));
        let timer = tokio::time::sleep_until(next_deadline(next_ping, token_at));
        tokio::pin!(timer);
        let epoch = self
            .conn
            .epoch()
            .map(|e| e.as_str().to_owned())
            .unwrap_or_default();
        let mut batch: Vec<Bytes> = Vec::new();
        let mut projector = Projector::for_format(self.format);
        if self.hand_over(retry_hint(), false).await.is_err() {
            return;
        }
        loop {
            tokio::select! {
                biased;
                () = self.tx.closed() => return,
                () = &mut timer => {
                    let now = Instant::now();
                    if now >= next_ping {
                        next_ping = after(interval);
                        match self.hand_over(Bytes::from_static(HEARTBEAT), true).await {
                            // Abandoned: the close event comes next, from the queue.
                            Ok(()) | Err(Stop::Abandoned) => {}
                            Err(Stop::Gone | Stop::TimedOut) => return,
                        }
                    }
                    if token_at.is_some_and(|t| now >= t) {
                        if Timestamp::now().as_millis()
                            >= expires_at.saturating_add(leeway).saturating_mul(1_000)
                        {
                            token_at = None;
                            tracing::debug!(connection = %self.conn.id(), "token expired");
                            self.conn.close(CloseCode::TokenExpired);
                        } else {
                            token_at = Some(token_deadline(expires_at));
                        }
                    }
                    timer.as_mut().reset(next_deadline(next_ping, token_at));
                }
                out = self.conn.next_frames(&mut batch, settings.write_batch_frames) => match out {
                    Outbound::Frames => {
                        let mut chunk = Vec::new();
                        let mut messages = 0;
                        for frame in &batch {
                            let id = stream_position(frame).map(|seq| (epoch.as_str(), seq));
                            match projector.as_mut() {
                                None => {
                                    write_message(&mut chunk, None, id, frame);
                                    messages += 1;
                                }
                                Some(projector) => {
                                    // The frame's id goes on its last event: a stream cut
                                    // inside the group resumes with the whole group.
                                    let events = projector.project(frame, &self.app.conn.metrics);
                                    let last = events.len().saturating_sub(1);
                                    for (i, event) in events.iter().enumerate() {
                                        let id = if i == last { id } else { None };
                                        write_message(&mut chunk, None, id, event);
                                    }
                                    messages += events.len();
                                }
                            }
                        }
                        batch.clear();
                        match self.hand_over(Bytes::from(chunk), true).await {
                            Ok(()) => {
                                self.app.metrics.written(messages);
                                // Handed to the HTTP connection whole: the user's delivery
                                // receipt moves (docs/protocol.md §8.5).
                                self.conn.written();
                            }
                            Err(Stop::Abandoned) => {}
                            Err(Stop::Gone | Stop::TimedOut) => return,
                        }
                        tokio::task::consume_budget().await;
                    }
                    Outbound::Close(code) => {
                        self.app.metrics.closed(code);
                        let mut chunk = Vec::new();
                        match self.format {
                            Format::Agentwire => write_message(
                                &mut chunk,
                                Some("close"),
                                None,
                                close_data(code).as_bytes(),
                            ),
                            // AG-UI clients read every message's data as an event.
                            Format::AgUi => write_message(&mut chunk, None, None, &close_event(code)),
                        }
                        let _ = self.hand_over(Bytes::from(chunk), false).await;
                        return;
                    }
                },
            }
        }
    }

    /// Hands `chunk` to hyper within the write timeout; a timeout cuts the connection.
    /// While `abandonable`, a connection the manager abandons meanwhile stops the wait.
    /// A chunk taken counts as the peer being alive (it cannot answer heartbeats).
    async fn hand_over(&self, chunk: Bytes, abandonable: bool) -> Result<(), Stop> {
        let chunk = match self.tx.try_send(chunk) {
            Ok(()) => {
                self.conn.touch();
                return Ok(());
            }
            Err(mpsc::error::TrySendError::Closed(_)) => return Err(Stop::Gone),
            Err(mpsc::error::TrySendError::Full(chunk)) => chunk,
        };
        // Rare (hyper's buffer and the socket's are full): only now is a timer armed.
        let deadline = Instant::now() + self.app.conn.ws.write_timeout;
        let conn = self.conn;
        let result = Box::pin(async {
            tokio::select! {
                biased;
                sent = self.tx.send(chunk) => sent.map_err(|_| Stop::Gone),
                _ = conn.abandoned(), if abandonable => Err(Stop::Abandoned),
                () = tokio::time::sleep_until(deadline) => Err(Stop::TimedOut),
            }
        })
        .await;
        match &result {
            Ok(()) => self.conn.touch(),
            Err(Stop::TimedOut) => {
                self.app.metrics.write_timeout();
                tracing::debug!(connection = %self.conn.id(), "event stream write timed out; cutting");
                if let Some(slot) = &self.slot {
                    slot.cut();
                }
            }
            Err(_) => {}
        }
        result
    }
}
