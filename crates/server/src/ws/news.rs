//! What one connection's reader and writer share: the socket's two halves, and the cell
//! through which the reader tells the writer what it saw (token refreshes, pings to
//! answer, how reading ended).

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};
use std::task::Poll;

use bytes::Bytes;
use futures_util::task::AtomicWaker;

use super::wire::{FrameWriter, WsStream};

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
    /// 1002, or 1008 for a flood, whose later bytes it discarded); the writer sends it and
    /// waits for no close frame from the peer.
    Failed,
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
    /// The reader throws away what the peer sends (closed with 1008 for a flood), so the
    /// peer's close frame will not end it.
    pub(super) discarding: bool,
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
                discarding: false,
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
            discarding: news.discarding,
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

    /// Resolves once the reader is done (`false`) or discards what the peer sends
    /// (`true`).
    pub(super) async fn ended_or_discarding(&self) -> bool {
        let mut seen = u64::MAX;
        loop {
            {
                let news = self.lock();
                if news.end.is_some() {
                    return false;
                }
                if news.discarding {
                    return true;
                }
            }
            seen = self.changed(seen).await;
        }
    }

    /// Resolves once the reader is done.
    pub(super) async fn ended(&self) {
        let mut seen = u64::MAX;
        while self.lock().end.is_none() {
            seen = self.changed(seen).await;
        }
    }
}
