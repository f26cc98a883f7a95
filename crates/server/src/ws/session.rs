//! One connection's life after the upgrade: the resume point (query or first frame), the
//! manager's registration, then a reader task and the writer until either ends.

use std::sync::Arc;

use agentwire_manager::{ConnectOptions, Resume};
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
    mut stream: Stream,
    mut sink: Sink,
    verified: Verified,
    query_resume: Option<Resume>,
    format: Format,
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
            tracing::info!(user = %verified.user, reason = %e, "connection refused");
            Box::pin(close_unconnected(&app, &mut sink, stream, e.close_code())).await;
            return;
        }
    };
    tracing::info!(user = %verified.user, connection = %conn.id(), "connected");
    let news = Arc::new(NewsCell::new(verified.expires_at));
    let reader = tokio::spawn(read_loop(
        app.clone(),
        conn.clone(),
        stream,
        first,
        news.clone(),
    ));
    let end = write_loop(&app, &conn, &mut sink, &news, format).await;
    // However the writer ended, the reader must not keep the socket open.
    reader.abort();
    conn.disconnect();
    tracing::info!(user = %verified.user, connection = %conn.id(), reason = %end, "disconnected");
}
