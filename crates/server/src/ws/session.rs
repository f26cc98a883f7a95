//! One connection's life after the upgrade: the resume point (query or first frame), the
//! manager's registration, then a reader task and the writer until either ends.

use std::sync::Arc;

use agentwire_manager::{ConnectOptions, Connection, Resume};
use agentwire_protocol::{ClientFrame, CloseCode};
use futures_util::StreamExt;
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::Message;

use super::WsState;
use super::format::Format;
use super::news::{NewsCell, Sink, Stream};
use super::reader::{read_error_code, read_loop};
use super::writer::{close_unconnected, write_loop};
use crate::auth::Verified;

pub(super) async fn serve_socket(
    app: Arc<WsState>,
    stream: Stream,
    mut sink: Sink,
    verified: Verified,
    query_resume: Option<Resume>,
    format: Format,
) {
    // What runs once before the writer's long life is boxed: a task's future is as large
    // as its largest state, and every idle connection holds this one.
    let Some((conn, news, stream, first)) =
        Box::pin(open(&app, &mut sink, stream, verified, query_resume)).await
    else {
        return;
    };
    let reader = tokio::spawn(read_loop(
        app.clone(),
        conn.clone(),
        stream,
        first,
        news.clone(),
    ));
    let end = write_loop(&app, &conn, sink, &news, format).await;
    // However the writer ended, nothing more is written by the connection, and the socket
    // closes with this task (if it was parked).
    conn.stop_lending();
    drop(news.unpark());
    // However the writer ended, the reader must not keep the socket open.
    reader.abort();
    conn.disconnect();
    tracing::info!(user = %conn.user_id(), connection = %conn.id(), reason = %end, "disconnected");
}

/// A connection's opening: the resume point (the query's, or the first frame's within
/// `--resume-wait`), then the manager's registration. `None` when the connection ended
/// first (its close frame, if any, sent); otherwise the connection, the news cell its
/// reader and writer share (holding the token's expiry), the stream, and a first frame
/// that was not a resume, for the reader.
async fn open(
    app: &Arc<WsState>,
    sink: &mut Sink,
    mut stream: Stream,
    verified: Verified,
    query_resume: Option<Resume>,
) -> Option<(Arc<Connection>, Arc<NewsCell>, Stream, Option<Box<Message>>)> {
    let mut first = None;
    let resume = match query_resume {
        Some(r) => r,
        None if !app.ws.resume_wait.is_zero() => {
            match timeout(app.ws.resume_wait, stream.next()).await {
                Err(_) => Resume::FromHistoryStart,
                Ok(None) => return None,
                Ok(Some(Err(e))) => {
                    if let Some(code) = read_error_code(&e) {
                        close_unconnected(app, sink, stream, code).await;
                    }
                    return None;
                }
                Ok(Some(Ok(Message::Text(text)))) => match ClientFrame::decode(text.as_bytes()) {
                    Ok(ClientFrame::Resume { last_seq, epoch }) => {
                        Resume::After { last_seq, epoch }
                    }
                    _ => {
                        first = Some(Box::new(Message::Text(text)));
                        Resume::FromHistoryStart
                    }
                },
                Ok(Some(Ok(other))) => {
                    first = Some(Box::new(other));
                    Resume::FromHistoryStart
                }
            }
        }
        None => Resume::FromHistoryStart,
    };
    if app.is_shutting_down() {
        close_unconnected(app, sink, stream, CloseCode::GoingAway).await;
        return None;
    }
    match app
        .manager
        .connect_user(verified.user.clone(), ConnectOptions { resume })
        .await
    {
        Ok(c) => {
            tracing::info!(user = %verified.user, connection = %c.id(), "connected");
            let news = Arc::new(NewsCell::new(app.clone(), verified.expires_at));
            Some((Arc::new(c), news, stream, first))
        }
        Err(e) => {
            tracing::info!(user = %verified.user, reason = %e, "connection refused");
            close_unconnected(app, sink, stream, e.close_code()).await;
            None
        }
    }
}
