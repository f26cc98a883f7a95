//! The reader: decodes client frames, answers them by queueing control frames through the
//! manager (never by writing), and tells the writer how reading ended.

use std::sync::Arc;

use agentwire_manager::Connection;
use agentwire_protocol::{ClientFrame, CloseCode, DecodeError, ErrorCode, ErrorFrame, ServerFrame};
use futures_util::StreamExt;
use tokio_tungstenite::tungstenite::{self, Message};

use super::WsState;
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
}

/// Reads until the connection ends, then tells the writer how.
pub(super) async fn read_loop(
    app: Arc<WsState>,
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
