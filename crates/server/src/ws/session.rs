//! One connection's life after the upgrade: the resume point (query or first frame), the
//! manager's registration, then a reader task and the writer until either ends; and the
//! cell through which the reader tells the writer what it saw.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};
use std::task::Poll;

use agentwire_manager::{ConnectOptions, Resume};
use agentwire_protocol::{ClientFrame, CloseCode};
use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::task::AtomicWaker;
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::Message;

use super::WsState;
use super::reader::{read_error_code, read_loop};
use super::wire::{FrameWriter, WsStream};
use super::writer::{close_unconnected, write_loop};
use crate::auth::Verified;

pub(super) type Sink = FrameWriter;
pub(super) type Stream = Box<WsStream>;

/// How the reader ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ReaderEnd {
    /// The peer sent a close frame (with this code, if any): the writer answers it.
    PeerClosed(Option<u16>),
    /// The connection broke: nothing more can be sent.
    PeerGone,
    /// The reader asked the manager to close the connection with a code (1009, 1007,
    /// 1002); the writer sends it.
    Failed,
}

pub(super) async fn serve_socket(
    app: Arc<WsState>,
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
pub(super) struct PeerNews {
    pub(super) expires_at: u64,
    /// The payload of the newest ping not yet answered (the writer takes it).
    pub(super) ping: Option<Bytes>,
    /// Set once the reader is done.
    pub(super) end: Option<ReaderEnd>,
}

/// The reader's [`PeerNews`], shared with the writer. The writer looks at it on every
/// wake-up, so looking costs two atomic operations: a version number and a waker (a
/// `watch` channel would build and drop a waiter each time).
#[derive(Debug)]
pub(super) struct NewsCell {
    news: std::sync::Mutex<PeerNews>,
    version: AtomicU64,
    waker: AtomicWaker,
}

impl NewsCell {
    pub(super) fn new(expires_at: u64) -> Self {
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

    pub(super) fn lock(&self) -> std::sync::MutexGuard<'_, PeerNews> {
        // Every update is a plain field assignment: a poisoned lock holds whole data.
        self.news
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(super) fn update(&self, change: impl FnOnce(&mut PeerNews)) {
        change(&mut self.lock());
        self.version.fetch_add(1, AtomicOrdering::Release);
        self.waker.wake();
    }

    pub(super) fn expires_at(&self) -> u64 {
        self.lock().expires_at
    }

    /// The news, taking the ping to answer so that it is answered once.
    pub(super) fn take(&self) -> PeerNews {
        let mut news = self.lock();
        PeerNews {
            expires_at: news.expires_at,
            ping: news.ping.take(),
            end: news.end,
        }
    }

    /// Resolves with the current version once it differs from `seen`.
    pub(super) fn changed(&self, seen: u64) -> impl Future<Output = u64> + '_ {
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
    pub(super) async fn ended(&self) {
        let mut seen = u64::MAX;
        while self.lock().end.is_none() {
            seen = self.changed(seen).await;
        }
    }
}
