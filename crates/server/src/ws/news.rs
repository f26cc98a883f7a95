//! What one connection's reader and writer share: the socket's two halves, and the cell
//! through which the reader tells the writer what it saw (token refreshes, pings to
//! answer, how reading ended), which also holds the writer's socket while the writer
//! lends it to the connection.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};
use std::task::Poll;

use agentwire_manager::{DirectSink, FanOutTime};
use bytes::Bytes;
use futures_util::task::AtomicWaker;

use super::WsState;
use super::wire::{FrameWriter, WsStream, text_rest};

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
    /// The payload of the newest ping not yet answered (the writer takes it). Boxed
    /// rather than shared bytes: rare, and every connection holds the room.
    pub(super) ping: Option<Box<[u8]>>,
    /// Set once the reader is done.
    pub(super) end: Option<ReaderEnd>,
    /// The reader throws away what the peer sends (closed with 1008 for a flood), so the
    /// peer's close frame will not end it.
    pub(super) discarding: bool,
}

/// What the cell's lock guards: the news, and the writer's socket while the writer waits
/// for frames ([`NewsCell::park`]) with the rest of a frame a deliverer wrote to it in
/// part. One lock for both: the cell is held by every connection, and what each takes is
/// short.
#[derive(Debug)]
pub(super) struct Guarded {
    pub(super) news: PeerNews,
    sink: Option<Sink>,
    /// The bytes still to write of a frame the socket took in part: the writer writes
    /// them before anything else.
    rest: Option<Bytes>,
}

/// The reader's [`PeerNews`], shared with the writer. The writer looks at it on every
/// wake-up, so looking costs two atomic operations: a version number and a waker (a
/// `watch` channel would build and drop a waiter each time).
///
/// It also holds the writer's socket while the writer waits for frames, lent to the
/// connection as its [`DirectSink`]: it lives as long as the connection, so lending it
/// allocates nothing.
#[derive(Debug)]
pub(super) struct NewsCell {
    guarded: std::sync::Mutex<Guarded>,
    version: AtomicU64,
    waker: AtomicWaker,
    /// For the metrics of the frames written while the socket is parked.
    app: Arc<WsState>,
}

impl NewsCell {
    pub(super) fn new(app: Arc<WsState>, expires_at: u64) -> Self {
        NewsCell {
            guarded: std::sync::Mutex::new(Guarded {
                news: PeerNews {
                    expires_at,
                    ping: None,
                    end: None,
                    discarding: false,
                },
                sink: None,
                rest: None,
            }),
            version: AtomicU64::new(0),
            waker: AtomicWaker::new(),
            app,
        }
    }

    fn guarded(&self) -> std::sync::MutexGuard<'_, Guarded> {
        // Every update is a plain field assignment or moves a whole value: a poisoned
        // lock holds whole data.
        self.guarded
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Leaves the writer's socket here while the writer waits for frames: a frame the
    /// connection gives [`DirectSink::send_now`] meanwhile is written to it.
    pub(super) fn park(&self, sink: Sink) {
        self.guarded().sink = Some(sink);
    }

    /// Takes the socket back from [`NewsCell::park`] (`None` if it is not here), with the
    /// bytes still to write of a frame written to it in part, which go before anything
    /// else.
    pub(super) fn unpark(&self) -> (Option<Sink>, Option<Bytes>) {
        let mut guarded = self.guarded();
        (guarded.sink.take(), guarded.rest.take())
    }

    /// Wakes the writer as news does, with no news: to write the rest of a frame.
    fn nudge(&self) {
        self.version.fetch_add(1, AtomicOrdering::Release);
        self.waker.wake();
    }

    pub(super) fn lock(&self) -> std::sync::MutexGuard<'_, Guarded> {
        self.guarded()
    }

    pub(super) fn update(&self, change: impl FnOnce(&mut PeerNews)) {
        change(&mut self.lock().news);
        self.nudge();
    }

    pub(super) fn expires_at(&self) -> u64 {
        self.lock().news.expires_at
    }

    /// The news, taking the ping to answer so that it is answered once.
    pub(super) fn take(&self) -> PeerNews {
        let mut guarded = self.lock();
        let news = &mut guarded.news;
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
                let news = &self.lock().news;
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
        while self.lock().news.end.is_none() {
            seen = self.changed(seen).await;
        }
    }
}

impl DirectSink for NewsCell {
    /// Writes the frame to the parked socket, as far as it takes it without waiting. A
    /// socket that takes part of it keeps the rest here and wakes the writer, which
    /// writes the rest before anything else; until then, the next frames are queued.
    fn send_now(&self, frame: &Bytes, ts_ms: u64, now: &FanOutTime) -> bool {
        let mut guarded = self.guarded();
        let Guarded { sink, rest, .. } = &mut *guarded;
        let Some(sink) = sink.as_ref().filter(|_| rest.is_none()) else {
            return false;
        };
        let frames = std::slice::from_ref(frame);
        let mut sent = 0;
        // A failure is the writer's to find, when it writes next.
        let all = sink.write_text_now(frames, &mut sent).unwrap_or(false);
        if !all {
            if sent == 0 {
                return false;
            }
            *rest = Some(text_rest(frame, sent));
        }
        drop(guarded);
        let metrics = &self.app.metrics;
        metrics.frames_written(frames, &[Some(ts_ms)], now.wall());
        metrics.direct_frame(!all);
        if !all {
            self.nudge();
        }
        true
    }
}
