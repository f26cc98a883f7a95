//! One connection as the manager sees it: a bounded outbound queue and the bookkeeping
//! that keeps its stream gap-free and duplicate-free. The socket belongs to the server,
//! which drains the queue with [`Connection::next_frames`], and may lend it
//! ([`DirectSink`]) while it waits.

use std::cell::Cell;
use std::collections::VecDeque;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::Poll;
use std::time::Duration;

use agentwire_protocol::{
    CloseCode, ConnectionId, Epoch, EventData, EventEnvelope, EventType, Seq, ServerFrame,
    Timestamp, UserId,
};
use bytes::Bytes;
use futures_util::task::AtomicWaker;
use tokio::sync::Notify;
use tokio::time::Instant;

use super::receipts::{Moved, ReceiptHandle};
use super::{Counters, UnifiedWebSocketManager};
use crate::broker::StoredEvent;
use crate::config::QueueLimits;

/// Slots a drained queue keeps; beyond it, the capacity a burst grew is given back. Four
/// is the least a queue grows to, so a connection that receives a few frames at a time
/// never reallocates its queue; with the writer's batch handing its buffer back (see
/// [`Connection::next_frames`]), this one buffer, and as many slots of the queued events'
/// marks, are all an idle connection keeps.
const QUEUE_KEEP_CAPACITY: usize = 4;

/// Largest frame that merging `message_delta`s in a busy queue may build (256 KiB, the
/// default event size). A delta that would grow the frame past it is queued as it is
/// instead, so the frame the writer takes, and encodes then, never holds more than this.
pub const MAX_MERGED_DELTA_BYTES: usize = 256 * 1024;

/// What the newest frame in the queue is, as far as merging goes.
#[derive(Debug)]
enum Tail {
    /// Not a live `message_delta` (or nothing): nothing merges into it.
    Other,
    /// A live `message_delta`, still as the broker's shared frame.
    Delta,
    /// A `message_delta` that merged others: its decoded form, so the next merge decodes
    /// only the newcomer.
    Merged(Box<Merged>),
}

/// A merged `message_delta` at the queue's tail. A merge changes only this decoded form
/// and works out the encoded frame's length from the newcomer alone; the frame itself is
/// encoded when it is needed ([`State::settle_tail`]): when the writer takes it, or a
/// frame is queued behind it. So a merge costs what the newcomer holds, not what the
/// merged frame has grown to, and a reader that stopped reading while an answer streams
/// does not cost a re-encoding of the whole frame for every delta.
#[derive(Debug)]
struct Merged {
    event: EventEnvelope,
    /// The length of `event` encoded: what `queued_bytes` counts for the tail.
    frame_len: usize,
    /// How many bytes the text of the delta takes encoded (inside its quotes).
    text_len: usize,
    /// The queue's newest slot still holds the frame as it was before the latest merges.
    stale: bool,
}

impl Merged {
    /// The tail a queued delta's frame `frame` becomes once something merges into it.
    fn decode(frame: &[u8]) -> Option<Box<Merged>> {
        let event = event_in(frame)?;
        let EventData::MessageDelta(d) = &event.event.data else {
            return None;
        };
        let text_len = encoded_len(d.delta.as_str()).saturating_sub(2);
        Some(Box::new(Merged {
            event,
            frame_len: frame.len(),
            text_len,
            stale: false,
        }))
    }

    /// The encoded lengths of the frame and of its text once `next` (a delta of the same
    /// message, right after it) has merged. Every field of a merged delta but its text and
    /// `from_seq` is the newest delta's (`EventEnvelope::merge_delta`), so the frame is
    /// `next` with `from_seq` set and the two texts joined, and JSON escapes the joined
    /// text as it escapes each part. Reads `next` and nothing of the merged text.
    fn lengths_with(&self, next: &mut EventEnvelope) -> Option<(usize, usize)> {
        let EventData::MessageDelta(d) = &mut next.event.data else {
            return None;
        };
        let text = std::mem::take(&mut d.delta);
        let their_text = encoded_len(text.as_str()).saturating_sub(2);
        let from_seq = next
            .from_seq
            .replace(self.event.from_seq.unwrap_or(self.event.seq));
        let rest = encoded_len(&*next);
        next.from_seq = from_seq;
        if let EventData::MessageDelta(d) = &mut next.event.data {
            d.delta = text;
        }
        let text_len = self.text_len + their_text;
        Some((rest + text_len, text_len))
    }
}

/// The event a queued frame carries, if it is an event's.
fn event_in(frame: &[u8]) -> Option<EventEnvelope> {
    match ServerFrame::decode(frame) {
        Ok(ServerFrame::Event(event)) => Some(event),
        _ => None,
    }
}

/// How many bytes `value` takes as JSON, counted as the encoder writes it.
fn encoded_len<T: serde::Serialize + ?Sized>(value: &T) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    // Writing to a counter cannot fail, and these values always encode.
    let _ = serde_json::to_writer(&mut count, value);
    count.0
}

impl Tail {
    /// The tail a live event's own frame makes.
    fn for_event(event: &StoredEvent) -> Tail {
        if event.event_type == EventType::MessageDelta {
            Tail::Delta
        } else {
            Tail::Other
        }
    }
}

/// What the connection's stream is doing.
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
enum Phase {
    /// Replaying history; live events wait in `pending`.
    CatchingUp,
    /// Live events go straight to the queue.
    Live,
}

#[derive(Debug)]
struct State {
    queue: VecDeque<Bytes>,
    queued_bytes: usize,
    pending: VecDeque<StoredEvent>,
    pending_bytes: usize,
    /// The newest `seq` queued for this connection.
    last_sent: Seq,
    /// Frames ever queued, and ever taken by the writer (or dropped with the queue).
    pushed: u64,
    taken: u64,
    /// Each queued event frame, oldest first.
    marks: VecDeque<Mark>,
    /// The newest `seq` the writer took: written once its batch is flushed.
    taken_seq: Seq,
    /// The newest queued frame, for merging deltas into it.
    tail: Tail,
    epoch: Option<Epoch>,
    phase: Phase,
    closing: Option<CloseCode>,
    /// A catch-up is waiting for room in the queue.
    replay_waiting: bool,
    /// The broker may have missed deliveries: the running catch-up reads history once
    /// more before it goes live.
    read_again: bool,
    /// The user's receipt, kept from the first write or ack on.
    receipt: ReceiptHandle,
    /// The writer's socket, while the writer waits for frames
    /// ([`Connection::next_frames_lending`]).
    lent: Option<Arc<dyn DirectSink>>,
    /// The frames at the front of the queue were held back from the lent socket by
    /// deliveries inside a [`HeldWrites`](super::held::HeldWrites) scope, which writes
    /// them when it ends: the writer was not woken for them.
    held: bool,
}

impl State {
    /// Writes a merged tail's frame into the queue's newest slot when merges since it was
    /// last written changed it ([`Merged`]). Before anything reads the queue's frames or
    /// queues one behind it.
    #[inline]
    fn settle_tail(&mut self) {
        if matches!(&self.tail, Tail::Merged(merged) if merged.stale) {
            self.write_merged_tail();
        }
    }

    /// [`settle_tail`](Self::settle_tail)'s encoding, off the path of every other frame.
    #[cold]
    fn write_merged_tail(&mut self) {
        if let Tail::Merged(merged) = &mut self.tail {
            let frame = Bytes::from(agentwire_protocol::to_json(&merged.event));
            debug_assert_eq!(frame.len(), merged.frame_len, "a merged frame's length");
            self.queued_bytes = self.queued_bytes - merged.frame_len + frame.len();
            merged.frame_len = frame.len();
            merged.stale = false;
            if let Some(slot) = self.queue.back_mut() {
                *slot = frame;
            }
        }
    }

    /// Queues `frame` behind the newest one; `tail` says what it is for merging.
    #[inline]
    fn queue_frame(&mut self, frame: Bytes, tail: Tail) {
        self.settle_tail();
        self.queued_bytes += frame.len();
        self.queue.push_back(frame);
        self.tail = tail;
    }

    /// The buffers of the queue and of its marks when a burst grew them past
    /// `QUEUE_KEEP_CAPACITY` and they are empty again, taken out to be freed once the lock
    /// is let go: an idle connection does not keep a burst's worth of room.
    fn take_grown_queue(&mut self) -> (VecDeque<Bytes>, VecDeque<Mark>) {
        let grown = |cap: usize, empty: bool| empty && cap > QUEUE_KEEP_CAPACITY;
        let queue = if grown(self.queue.capacity(), self.queue.is_empty()) {
            std::mem::take(&mut self.queue)
        } else {
            VecDeque::new()
        };
        let marks = if grown(self.marks.capacity(), self.marks.is_empty()) {
            std::mem::take(&mut self.marks)
        } else {
            VecDeque::new()
        };
        (queue, marks)
    }

    /// Moves the user's receipt by `delivered` and `acked`, in the connection's epoch,
    /// through the receipt the connection keeps: nothing before the stream began, or
    /// when neither is given. The caller passes what it returns to
    /// `receipt_moved` once the lock is let go.
    fn move_receipt(
        &mut self,
        manager: &UnifiedWebSocketManager,
        user: &UserId,
        delivered: Option<Seq>,
        acked: Option<Seq>,
        at: Instant,
    ) -> Option<Moved> {
        let State { epoch, receipt, .. } = self;
        match epoch {
            Some(epoch) if delivered.is_some() || acked.is_some() => {
                manager.record_receipt_in(receipt, user, epoch, delivered, acked, at)
            }
            _ => None,
        }
    }
}

/// A connection's socket, as its writer lends it while it waits for frames
/// ([`Connection::next_frames_lending`]): a live event delivered meanwhile to a connection
/// with nothing queued is written at once by the task that delivers it, instead of being
/// queued for the writer to wake up and write.
///
/// The manager calls [`DirectSink::send_now`] only under the connection's lock, only for
/// the next event of the connection's stream, and only while nothing is queued ahead of
/// it and the writer holds no frames it took: so the stream keeps its order, and a frame
/// the sink takes is the one the client must see next. Inside one poll of a publish, the
/// frames of its deliveries are held in the queue (the writer not woken) and given to the
/// sink one after the other when the poll ends, so they leave in one burst. The writer
/// takes the lend back (under the same lock) each time it takes frames or a close;
/// whatever else it writes meanwhile (a ping, a pong), the sink must keep from
/// interleaving with a frame it was given.
///
/// It calls it not at all while direct writes are paused
/// ([`UnifiedWebSocketManager::direct_writes_paused`]: a saturated runtime, where queuing
/// for the writers was found to cost less): the frame is queued, lent or not.
pub trait DirectSink: Send + Sync + std::fmt::Debug {
    /// Writes `frame`, an event frame whose envelope's `ts` is `ts_ms` (milliseconds),
    /// without waiting. `true`: the sink took the whole frame, which then counts as
    /// written (delivered); a socket that takes only part of it at once leaves the rest
    /// to the sink, which writes it before anything else. `false`: the sink took none of
    /// it (the socket is busy or full, or failed), and the frame is queued for the writer.
    /// Never waits, and never takes the connection's lock. `now` is the time the frame
    /// is written at, for the sink's own metrics.
    fn send_now(&self, frame: &Bytes, ts_ms: u64, now: &FanOutTime) -> bool;
}

/// The time of one event's fan-out to a user's connections, each clock read at most once
/// however many of them the event is written to: the connections are written to within
/// microseconds of each other, and a clock read is not free at tens of thousands of
/// writes a second.
#[derive(Debug, Default)]
pub struct FanOutTime {
    wall: Cell<Option<Timestamp>>,
    monotonic: Cell<Option<Instant>>,
}

impl FanOutTime {
    /// The wall-clock time, read at the first call.
    pub fn wall(&self) -> Timestamp {
        read_once(&self.wall, Timestamp::now)
    }

    /// The monotonic time, read at the first call.
    pub(crate) fn monotonic(&self) -> Instant {
        read_once(&self.monotonic, Instant::now)
    }
}

fn read_once<T: Copy>(cell: &Cell<Option<T>>, read: impl FnOnce() -> T) -> T {
    if let Some(t) = cell.get() {
        return t;
    }
    let t = read();
    cell.set(Some(t));
    t
}

/// A queued event frame: its place (the `pushed` count when it was queued), the newest
/// `seq` it carries and its envelope's `ts` in milliseconds (for a merged delta, the
/// newest delta's, as its envelope says).
#[derive(Debug, Clone, Copy)]
struct Mark {
    at: u64,
    seq: Seq,
    ts_ms: u64,
}

/// Why a push did not queue a frame.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Pushed {
    Queued,
    /// Already sent (a repeat), or the connection is closing.
    Skipped,
    /// A live event arrived with a gap before it; a catch-up must run.
    NeedsCatchUp,
    /// Queued for the lent socket without waking the writer, inside a
    /// [`HeldWrites`](super::held::HeldWrites) scope: the scope must be told
    /// ([`super::held::hold`]), and writes it when it ends.
    Held,
}

/// How a catch-up's attempt to go live ended.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum GoLive {
    /// Live (or closing): the catch-up is done.
    Done,
    /// History is to be read again: a resync asked for it, or the live events held aside
    /// were let go ([`ConnShared::read_pending_again`]).
    ReadAgain,
    /// Pending live events start past what was replayed: history is behind them.
    Behind,
}

/// The shared state of one connection.
#[derive(Debug)]
pub(crate) struct ConnShared {
    pub(crate) id: ConnectionId,
    pub(crate) user: UserId,
    pub(crate) connected_at: Instant,
    limits: QueueLimits,
    state: Mutex<State>,
    /// Wakes the connection's writer (the one task that drains the queue): cheaper than a
    /// `Notify` on the path every delivery takes.
    readable: AtomicWaker,
    /// Wakes a catch-up waiting for room in the queue.
    writable: Notify,
    /// Milliseconds after `connected_at` when the peer was last heard from.
    last_seen_ms: AtomicU64,
    acked: AtomicU64,
    pub(crate) registered: AtomicBool,
}

impl ConnShared {
    pub(crate) fn new(user: UserId, limits: QueueLimits) -> Self {
        ConnShared {
            id: ConnectionId::generate(),
            user,
            connected_at: Instant::now(),
            limits,
            state: Mutex::new(State {
                queue: VecDeque::new(),
                queued_bytes: 0,
                pending: VecDeque::new(),
                pending_bytes: 0,
                last_sent: Seq::ZERO,
                pushed: 0,
                taken: 0,
                marks: VecDeque::new(),
                taken_seq: Seq::ZERO,
                tail: Tail::Other,
                epoch: None,
                phase: Phase::CatchingUp,
                closing: None,
                replay_waiting: false,
                read_again: false,
                receipt: None,
                lent: None,
                held: false,
            }),
            readable: AtomicWaker::new(),
            writable: Notify::new(),
            last_seen_ms: AtomicU64::new(0),
            acked: AtomicU64::new(0),
            registered: AtomicBool::new(true),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // Every mutation of `State` completes before anything that can panic, so a
        // poisoned lock still guards consistent data.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn fits(&self, st: &State, len: usize) -> bool {
        st.queue.is_empty()
            || (st.queue.len() < self.limits.max_frames
                && st.queued_bytes + len <= self.limits.max_bytes)
    }

    /// Whether the queue holds half its bound or more (by frames or by bytes): from there
    /// on a live `message_delta` merges into the delta of its message queued just before
    /// it, so a stream of deltas stops growing the queue and leaves room for the events
    /// that follow it.
    fn under_pressure(&self, st: &State) -> bool {
        st.queue.len() * 2 >= self.limits.max_frames || st.queued_bytes * 2 >= self.limits.max_bytes
    }

    /// Marks the connection for closing; the first code wins. The queue of a slow consumer
    /// or of an expired token is dropped (see [`drops_queue`]); any other close lets the
    /// writer flush what is queued first.
    pub(crate) fn close(&self, code: CloseCode) -> bool {
        let mut st = self.state();
        if st.closing.is_some() {
            return false;
        }
        st.closing = Some(code);
        st.pending.clear();
        st.pending_bytes = 0;
        if drops_queue(code) {
            st.queue.clear();
            st.queued_bytes = 0;
            st.marks.clear();
            st.taken = st.pushed;
            st.tail = Tail::Other;
        }
        drop(st);
        self.readable.wake();
        self.writable.notify_waiters();
        true
    }

    pub(crate) fn closing(&self) -> Option<CloseCode> {
        self.state().closing
    }

    /// Queues a frame that is not an event (control frames). Over the bounds the
    /// connection becomes a slow consumer.
    pub(crate) fn push_control(&self, frame: Bytes, counters: &Counters) -> bool {
        let mut st = self.state();
        if st.closing.is_some() {
            return false;
        }
        if !self.fits(&st, frame.len()) {
            drop(st);
            self.slow_consumer(counters);
            return false;
        }
        st.queue_frame(frame, Tail::Other);
        st.pushed += 1;
        drop(st);
        self.readable.wake();
        true
    }

    /// Records the frame of `event` queued with it.
    #[inline]
    fn pushed_event(st: &mut State, event: &StoredEvent) {
        st.marks.push_back(Mark {
            at: st.pushed,
            seq: event.seq,
            ts_ms: event.ts.as_millis(),
        });
        st.pushed += 1;
    }

    fn slow_consumer(&self, counters: &Counters) {
        if self.close(CloseCode::TryAgainLater) {
            counters
                .slow_consumer_closes
                .fetch_add(1, Ordering::Relaxed);
            tracing::debug!(connection = %self.id, user = %self.user, "slow consumer closed");
        }
    }

    /// Starts the stream at `after` in `epoch`; events up to `after` count as sent.
    pub(crate) fn begin(&self, epoch: Epoch, after: Seq) {
        let mut st = self.state();
        st.epoch = Some(epoch);
        st.last_sent = after;
    }

    pub(crate) fn last_sent(&self) -> Seq {
        self.state().last_sent
    }

    pub(crate) fn epoch(&self) -> Option<Epoch> {
        self.state().epoch.clone()
    }

    /// A live event from the broker subscription. Never waits. With nothing queued and
    /// the writer's socket lent ([`DirectSink`]), the frame is written here and now.
    pub(crate) fn deliver_live(
        &self,
        event: &StoredEvent,
        manager: &UnifiedWebSocketManager,
        now: &FanOutTime,
        hold: bool,
    ) -> Pushed {
        let counters = &manager.inner.counters;
        let mut st = self.state();
        if st.closing.is_some() {
            return Pushed::Skipped;
        }
        if st
            .epoch
            .as_ref()
            .is_some_and(|e| !same_epoch(e, &event.epoch))
        {
            // The stream restarted under a live connection: its seqs mean nothing now.
            // Closing makes the client resume, and the resume reports the gap.
            drop(st);
            self.close(CloseCode::TryAgainLater);
            return Pushed::Skipped;
        }
        match st.phase {
            Phase::CatchingUp => {
                if event.seq <= st.last_sent {
                    return Pushed::Skipped;
                }
                if st.pending.len() >= self.limits.max_frames
                    || st.pending_bytes + event.frame.len() > self.limits.max_bytes
                {
                    // A reader whose queue is backed up is slow, as it would be live. One
                    // that keeps up is only early: its catch-up has not caught up yet (or not
                    // even started), and reads these events from history instead.
                    if self.under_pressure(&st) {
                        drop(st);
                        self.slow_consumer(counters);
                    } else {
                        Self::read_pending_again(&mut st, counters);
                    }
                    return Pushed::Skipped;
                }
                st.pending_bytes += event.frame.len();
                st.pending.push_back(event.clone());
                Pushed::Queued
            }
            Phase::Live => {
                if event.seq <= st.last_sent {
                    return Pushed::Skipped;
                }
                if event.seq != st.last_sent.next() {
                    st.phase = Phase::CatchingUp;
                    st.pending_bytes += event.frame.len();
                    st.pending.push_back(event.clone());
                    return Pushed::NeedsCatchUp;
                }
                if self.under_pressure(&st)
                    && merge_into_tail(&mut st, event, self.limits.max_bytes)
                {
                    drop(st);
                    counters.delivered.fetch_add(1, Ordering::Relaxed);
                    counters.deltas_merged.fetch_add(1, Ordering::Relaxed);
                    self.readable.wake();
                    return Pushed::Queued;
                }
                if !self.fits(&st, event.frame.len()) {
                    drop(st);
                    self.slow_consumer(counters);
                    return Pushed::Skipped;
                }
                // A socket lent with nothing queued (or only frames held back in this
                // scope) takes the frame from the deliverer: at once, or when the scope
                // of `hold` ends.
                let direct = st.lent.is_some()
                    && (st.queue.is_empty() || st.held)
                    && !manager.inner.load.paused();
                let held = direct && hold;
                if direct
                    && !held
                    && st.queue.is_empty()
                    && st
                        .lent
                        .as_ref()
                        .is_some_and(|sink| sink.send_now(&event.frame, event.ts.as_millis(), now))
                {
                    st.last_sent = event.seq;
                    st.taken_seq = event.seq;
                    let at = now.monotonic();
                    let moved = st.move_receipt(manager, &self.user, Some(event.seq), None, at);
                    drop(st);
                    counters.delivered.fetch_add(1, Ordering::Relaxed);
                    manager.receipt_moved(&self.user, moved);
                    return Pushed::Queued;
                }
                st.held |= held;
                st.last_sent = event.seq;
                st.queue_frame(event.frame.clone(), Tail::for_event(event));
                Self::pushed_event(&mut st, event);
                drop(st);
                counters.delivered.fetch_add(1, Ordering::Relaxed);
                if held {
                    // The scope writes it; the writer sleeps on.
                    return Pushed::Held;
                }
                self.readable.wake();
                Pushed::Queued
            }
        }
    }

    /// Writes the frames held back for the lent socket ([`Pushed::Held`]), front to back,
    /// as a direct write would have: each one the socket takes counts as written and moves
    /// the receipt. What it does not take, and anything queued behind them that is not an
    /// event frame, is left to the writer, which is woken for it; so is everything when the
    /// writer took its socket back meanwhile, the connection is closing or direct writes
    /// paused. A connection with nothing held is left alone. `now` is the time the writes
    /// are stamped with.
    pub(crate) fn write_held(&self, manager: &UnifiedWebSocketManager, now: &FanOutTime) {
        let mut st = self.state();
        if !std::mem::take(&mut st.held) {
            return;
        }
        let mut written = false;
        st.settle_tail();
        if st.closing.is_none() && !manager.inner.load.paused() {
            while let (Some(frame), Some(sink), Some(&Mark { at, seq, ts_ms })) =
                (st.queue.front(), st.lent.as_ref(), st.marks.front())
            {
                // The front frame is an event's only when its mark is the next taken.
                if at != st.taken || !sink.send_now(frame, ts_ms, now) {
                    break;
                }
                let len = frame.len();
                st.queue.pop_front();
                st.marks.pop_front();
                st.queued_bytes -= len;
                st.taken += 1;
                st.taken_seq = st.taken_seq.max(seq);
                written = true;
            }
        }
        let left = !st.queue.is_empty();
        if !left {
            st.tail = Tail::Other;
        }
        // What a burst of held frames grew is given back, as the writer gives it back.
        let unkept = st.take_grown_queue();
        let moved = if written {
            let delivered = Some(st.taken_seq);
            st.move_receipt(manager, &self.user, delivered, None, now.monotonic())
        } else {
            None
        };
        drop(st);
        drop(unkept);
        if written {
            manager.receipt_moved(&self.user, moved);
        }
        if left {
            self.readable.wake();
        }
    }

    /// A replayed event, pushed by a catch-up. Waits for room in the queue.
    /// Returns `false` when the connection closed meanwhile.
    pub(crate) async fn push_replayed(&self, event: &StoredEvent, counters: &Counters) -> bool {
        loop {
            let room = self.writable.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            {
                let mut st = self.state();
                if st.closing.is_some() {
                    return false;
                }
                if event.seq <= st.last_sent {
                    return true;
                }
                if self.fits(&st, event.frame.len()) {
                    st.last_sent = event.seq;
                    st.queue_frame(event.frame.clone(), Tail::Other);
                    Self::pushed_event(&mut st, event);
                    drop(st);
                    counters.replayed.fetch_add(1, Ordering::Relaxed);
                    self.readable.wake();
                    return true;
                }
                st.replay_waiting = true;
            }
            room.await;
        }
    }

    /// Queues a `replay_gap` frame. The caller moves the stream past the gap.
    pub(crate) fn push_gap(&self, from: Seq, to: Seq, counters: &Counters) {
        let frame = ServerFrame::ReplayGap(agentwire_protocol::ReplayGap {
            from_seq: from,
            to_seq: to,
        });
        if self.push_control(Bytes::from(frame.to_json()), counters) {
            counters.replay_gaps.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Counts everything up to `seq` as sent.
    pub(crate) fn skip_to(&self, seq: Seq) {
        let mut st = self.state();
        st.last_sent = st.last_sent.max(seq);
    }

    /// The broker may have missed deliveries to this connection. Returns `true` when a
    /// catch-up must be started (the connection was live); a catch-up under way reads
    /// history once more before it goes live instead, so one connection never has two.
    pub(crate) fn request_resync(&self) -> bool {
        let mut st = self.state();
        if st.closing.is_some() {
            return false;
        }
        match st.phase {
            Phase::Live => {
                st.phase = Phase::CatchingUp;
                true
            }
            Phase::CatchingUp => {
                st.read_again = true;
                false
            }
        }
    }

    /// Ends a catch-up: queues the pending live events that continue the stream and goes
    /// live, unless a resync asked for another read or pending events start past a gap.
    pub(crate) fn try_go_live(&self, counters: &Counters) -> GoLive {
        let mut st = self.state();
        if st.closing.is_some() {
            return GoLive::Done;
        }
        if std::mem::take(&mut st.read_again) {
            return GoLive::ReadAgain;
        }
        let mut queued = 0u64;
        while let Some(next) = st.pending.front() {
            if next.seq <= st.last_sent {
                let dropped = st.pending.pop_front().map_or(0, |e| e.frame.len());
                st.pending_bytes -= dropped;
                continue;
            }
            if next.seq != st.last_sent.next() {
                break;
            }
            if !self.fits(&st, next.frame.len()) {
                drop(st);
                self.slow_consumer(counters);
                return GoLive::Done;
            }
            let Some(event) = st.pending.pop_front() else {
                break;
            };
            st.pending_bytes -= event.frame.len();
            st.last_sent = event.seq;
            Self::pushed_event(&mut st, &event);
            st.queue_frame(event.frame, Tail::Other);
            queued += 1;
        }
        let live = st.pending.is_empty();
        if live {
            st.phase = Phase::Live;
        }
        drop(st);
        if queued > 0 {
            counters.delivered.fetch_add(queued, Ordering::Relaxed);
            self.readable.wake();
        }
        if live { GoLive::Done } else { GoLive::Behind }
    }

    /// Lets go of the live events held aside while catching up, more than the queue's
    /// bounds, of a reader that keeps up (its queue less than half full), and has the
    /// catch-up read them from history instead, which holds every delivered event (rule 3
    /// of [`crate::Broker`]), paced by the writer like the rest of the replay.
    fn read_pending_again(st: &mut State, counters: &Counters) {
        st.pending.clear();
        st.pending_bytes = 0;
        st.read_again = true;
        counters.catch_up_rereads.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn touch(&self) {
        let ms = u64::try_from(self.connected_at.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_seen_ms.store(ms, Ordering::Relaxed);
    }

    pub(crate) fn silent_for(&self, now: Instant) -> Duration {
        let seen =
            self.connected_at + Duration::from_millis(self.last_seen_ms.load(Ordering::Relaxed));
        now.saturating_duration_since(seen)
    }

    pub(crate) fn queued(&self) -> (usize, usize) {
        let st = self.state();
        (st.queue.len(), st.queued_bytes)
    }

    pub(crate) fn acked(&self) -> Seq {
        Seq(self.acked.load(Ordering::Relaxed))
    }
}

/// Merges `event`, a live event that continues the stream, into the queue's newest frame
/// when both are `message_delta`s of one message: the merged frame replaces the newest
/// one (same place, one frame), carrying both texts, `event`'s seq and `from_seq`
/// (docs/protocol.md §6.5). Returns whether it merged; a merge that would take the queue
/// past `max_bytes` or build a frame larger than [`MAX_MERGED_DELTA_BYTES`] does not
/// happen. When it returns `false` nothing changed: the caller queues `event` as it is
/// (writing out a merged tail first) or closes the connection.
fn merge_into_tail(st: &mut State, event: &StoredEvent, max_bytes: usize) -> bool {
    if event.event_type != EventType::MessageDelta || event.seq != st.last_sent.next() {
        return false;
    }
    let Some(newest) = st.queue.back() else {
        return false;
    };
    let mut merged = match std::mem::replace(&mut st.tail, Tail::Other) {
        Tail::Other => return false,
        Tail::Merged(m) => m,
        Tail::Delta => match Merged::decode(newest) {
            Some(m) => m,
            None => return false,
        },
    };
    // Measured before the merge changes anything: a merge that does not happen leaves
    // the tail's text and frame as they were (the frame possibly still to be written).
    let lengths = event_in(&event.frame)
        .and_then(|mut next| merged.lengths_with(&mut next).map(|l| (next, l)));
    let Some((next, (frame_len, text_len))) = lengths else {
        st.tail = Tail::Merged(merged);
        return false;
    };
    let queued_bytes = st.queued_bytes - merged.frame_len + frame_len;
    if frame_len > MAX_MERGED_DELTA_BYTES
        || queued_bytes > max_bytes
        || !merged.event.merge_delta(&next)
    {
        st.tail = Tail::Merged(merged);
        return false;
    }
    st.queued_bytes = queued_bytes;
    merged.frame_len = frame_len;
    merged.text_len = text_len;
    merged.stale = true;
    st.last_sent = event.seq;
    // The newest queued frame is the newest queued event: its mark moves with it.
    if let Some(mark) = st.marks.back_mut() {
        mark.seq = event.seq;
        mark.ts_ms = merged.event.ts.as_millis();
    }
    st.tail = Tail::Merged(merged);
    true
}

/// Whether two epochs are one. The broker hands every event of a stream the epoch it
/// gave the connection (one shared string), so the text is compared only when the two
/// are not the same string in memory: a delivery usually skips reading it.
#[inline]
fn same_epoch(a: &Epoch, b: &Epoch) -> bool {
    let (a, b) = (a.as_str(), b.as_str());
    std::ptr::eq(a, b) || a == b
}

/// Whether a close with `code` drops what is queued rather than flushing it first: a slow
/// consumer (`1013`: it fell behind, and resumes from what it received) and an expired
/// token (`4002`: nothing more may reach it, however much is queued).
fn drops_queue(code: CloseCode) -> bool {
    matches!(code, CloseCode::TryAgainLater | CloseCode::TokenExpired)
}

/// What [`Connection::next_frames`] hands the writer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outbound {
    /// Frames were appended to the buffer: write them all, then flush once.
    Frames,
    /// Nothing more will come: send a close frame with this code.
    Close(CloseCode),
}

/// A live connection of one user, as the server holds it: the receiving end of the
/// connection's outbound queue. Dropping it (or [`Connection::disconnect`]) removes the
/// connection from the manager; doing so twice is harmless.
#[derive(Debug)]
pub struct Connection {
    pub(crate) shared: Arc<ConnShared>,
    pub(crate) manager: UnifiedWebSocketManager,
}

impl Connection {
    /// This connection's id.
    pub fn id(&self) -> &ConnectionId {
        &self.shared.id
    }

    /// The authenticated user.
    pub fn user_id(&self) -> &UserId {
        &self.shared.user
    }

    /// The epoch of the user's stream this connection follows.
    pub fn epoch(&self) -> Option<Epoch> {
        self.shared.epoch()
    }

    /// Waits until frames are queued or the connection must close, then moves up to
    /// `max_frames` queued frames into `out`. Frames left queued when a close is requested
    /// come out first (except for a slow consumer or an expired token, whose queue is
    /// dropped).
    ///
    /// An empty `out` trades buffers with the queue rather than taking frames one by one:
    /// it receives the queue's buffer when every queued frame fits `max_frames`, and its own
    /// spare capacity goes to the queue (up to a few slots; more is freed). So a writer
    /// that passes the same cleared `Vec` each time allocates nothing from batch to batch,
    /// and keeps no buffer of its own while it waits.
    ///
    /// One task drains a connection (its writer): a second task waiting at the same time
    /// may not be woken.
    ///
    /// # Cancel safety
    /// Cancel safe: frames are moved into `out` only when the call returns.
    pub async fn next_frames(&self, out: &mut Vec<Bytes>, max_frames: usize) -> Outbound {
        self.take_frames(out, None, max_frames, None).await
    }

    /// [`Connection::next_frames`], also telling each frame's `ts`: `stamps` follows `out`
    /// slot for slot (it is cut or padded to `out`'s length first), an event frame's slot
    /// holding its envelope's `ts` in milliseconds and any other frame's `None`. So a
    /// writer that measures how old the frames it writes are does not read the `ts` back
    /// out of each frame.
    ///
    /// While the connection waits, `stamps` keeps at most `QUEUE_KEEP_CAPACITY` (4) slots
    /// (a larger buffer, grown by a burst, is freed), as the queue does.
    ///
    /// # Cancel safety
    /// Cancel safe, as [`Connection::next_frames`].
    pub async fn next_frames_stamped(
        &self,
        out: &mut Vec<Bytes>,
        stamps: &mut Vec<Option<u64>>,
        max_frames: usize,
    ) -> Outbound {
        self.take_frames(out, Some(stamps), max_frames, None).await
    }

    /// [`Connection::next_frames_stamped`] for a writer that lends its socket while it
    /// waits: `sink` (if any) is lent to the connection each time the call finds nothing
    /// to take ([`DirectSink`]), and a live event delivered while nothing is queued is
    /// then written by the task that delivers it, which saves waking the writer for it.
    /// The lend ends when the call returns frames or a close, and with
    /// [`Connection::stop_lending`].
    ///
    /// # Cancel safety
    /// Cancel safe, as [`Connection::next_frames`]. Dropped while it waits, it leaves the
    /// sink lent.
    pub fn next_frames_lending<'a>(
        &'a self,
        out: &'a mut Vec<Bytes>,
        stamps: &'a mut Vec<Option<u64>>,
        max_frames: usize,
        sink: Option<&'a Arc<dyn DirectSink>>,
    ) -> impl Future<Output = Outbound> + 'a {
        self.take_frames(out, Some(stamps), max_frames, sink)
    }

    /// Ends the lend of [`Connection::next_frames_lending`], if any: once this returns,
    /// nothing more is written to the sink by the connection.
    pub fn stop_lending(&self) {
        let lent = self.shared.state().lent.take();
        drop(lent);
    }

    fn take_frames<'a>(
        &'a self,
        out: &'a mut Vec<Bytes>,
        mut stamps: Option<&'a mut Vec<Option<u64>>>,
        max_frames: usize,
        lend: Option<&'a Arc<dyn DirectSink>>,
    ) -> impl Future<Output = Outbound> + 'a {
        std::future::poll_fn(move |cx| {
            // Registered before the queue is looked at, so a frame pushed after the look
            // wakes this task.
            self.shared.readable.register(cx.waker());
            let mut st = self.shared.state();
            if lend.is_some() && (!st.queue.is_empty() || st.closing.is_some()) {
                // The writer writes what it takes: nothing is written past it. (Never the
                // last reference: the writer holds one.)
                st.lent = None;
            }
            if !st.queue.is_empty() {
                // Whatever was held back for the socket, the writer writes now.
                st.held = false;
                st.settle_tail();
                let n = st.queue.len().min(max_frames.max(1));
                let before = out.len();
                let mut bytes = 0;
                if n == st.queue.len() && out.is_empty() {
                    // The whole queue: its buffer becomes the batch, and the batch's empty
                    // buffer the queue's.
                    let spare = VecDeque::from(std::mem::take(out));
                    *out = Vec::from(std::mem::replace(&mut st.queue, spare));
                    bytes = out.iter().map(Bytes::len).sum();
                } else {
                    for frame in st.queue.drain(..n) {
                        bytes += frame.len();
                        out.push(frame);
                    }
                }
                st.queued_bytes -= bytes;
                if st.queue.is_empty() {
                    st.tail = Tail::Other;
                }
                // Freed once the lock is let go.
                let unkept = st.take_grown_queue();
                let taken_before = st.taken;
                st.taken += n as u64;
                if let Some(stamps) = stamps.as_deref_mut() {
                    stamps.truncate(before);
                    stamps.resize(before + n, None);
                }
                while let Some(&Mark { at, seq, ts_ms }) = st.marks.front() {
                    if at >= st.taken {
                        break;
                    }
                    st.taken_seq = st.taken_seq.max(seq);
                    st.marks.pop_front();
                    if let Some(stamps) = stamps.as_deref_mut()
                        && let Some(slot) = at
                            .checked_sub(taken_before)
                            .and_then(|i| usize::try_from(i).ok())
                            .and_then(|i| stamps.get_mut(before + i))
                    {
                        *slot = Some(ts_ms);
                    }
                }
                let room_wanted = std::mem::take(&mut st.replay_waiting);
                drop(st);
                drop(unkept);
                if room_wanted {
                    self.shared.writable.notify_waiters();
                }
                return Poll::Ready(Outbound::Frames);
            }
            if let Some(code) = st.closing {
                return Poll::Ready(Outbound::Close(code));
            }
            // The batch written last hands its buffer to the queue that has none, for the
            // next frames: then the connection holds one buffer while it waits.
            let mut unkept = Vec::new();
            if out.is_empty() && out.capacity() > 0 {
                if st.queue.capacity() == 0 && out.capacity() <= QUEUE_KEEP_CAPACITY {
                    st.queue = VecDeque::from(std::mem::take(out));
                } else {
                    unkept = std::mem::take(out);
                }
            }
            // The marks of queued events give back what a burst grew, as the queue does.
            let grown = st.take_grown_queue();
            if let Some(sink) = lend
                && st.lent.is_none()
            {
                st.lent = Some(sink.clone());
            }
            drop(st);
            drop(unkept);
            drop(grown);
            if let Some(stamps) = stamps.as_deref_mut()
                && stamps.is_empty()
                && stamps.capacity() > QUEUE_KEEP_CAPACITY
            {
                *stamps = Vec::new();
            }
            Poll::Pending
        })
    }

    /// Resolves once the connection is closing with a code whose queue is dropped (a slow
    /// consumer, `1013`; an expired token, `4002`), with that code: the frames the writer
    /// holds are dropped too, so it may stop the batch it is writing at the next frame
    /// boundary and send the close frame.
    ///
    /// Meant for the connection's writer, while it waits on a socket that takes no more:
    /// it shares the writer's wake-ups with [`Connection::next_frames`] (one task).
    ///
    /// # Cancel safety
    /// Cancel safe.
    pub async fn abandoned(&self) -> CloseCode {
        std::future::poll_fn(|cx| {
            self.shared.readable.register(cx.waker());
            match self.shared.state().closing {
                Some(code) if drops_queue(code) => Poll::Ready(code),
                _ => Poll::Pending,
            }
        })
        .await
    }

    /// Queues a control frame (`pong`, `error`). Returns `false` when the connection is
    /// closing, or became a slow consumer with this frame.
    pub fn send_control(&self, frame: &ServerFrame) -> bool {
        self.shared
            .push_control(Bytes::from(frame.to_json()), &self.manager.inner.counters)
    }

    /// Records that the peer was heard from (any frame, or a pong).
    pub fn touch(&self) {
        self.shared.touch();
    }

    /// How long the peer has been silent.
    pub fn silent_for(&self) -> Duration {
        self.shared.silent_for(Instant::now())
    }

    /// Records the client's `ack`: it has processed every event up to `seq`. Acks only
    /// move forward. The user's receipt (`UnifiedWebSocketManager::receipt`) takes it
    /// too, never past what the connection was sent.
    pub fn ack(&self, seq: Seq) {
        self.shared.acked.fetch_max(seq.get(), Ordering::Relaxed);
        self.record_receipt(|st| (None, Some(seq.min(st.last_sent))));
    }

    /// Records that the writer wrote and flushed every frame it has taken so far: the
    /// newest event among them is delivered (`delivered_seq` of the user's receipt).
    pub fn written(&self) {
        self.record_receipt(|st| (Some(st.taken_seq).filter(|&seq| seq > Seq::ZERO), None));
    }

    /// Moves the user's receipt by what `what` reads of the connection's state (delivered,
    /// acked), in the connection's epoch, through the receipt the connection keeps. The
    /// receipt's lock is taken under the state's; nothing takes a connection's state
    /// under a receipt's.
    fn record_receipt(&self, what: impl FnOnce(&State) -> (Option<Seq>, Option<Seq>)) {
        let moved = {
            let mut st = self.shared.state();
            let (delivered, acked) = what(&st);
            let user = &self.shared.user;
            st.move_receipt(&self.manager, user, delivered, acked, Instant::now())
        };
        self.manager.receipt_moved(&self.shared.user, moved);
    }

    /// The newest `seq` the client acknowledged.
    pub fn acked(&self) -> Seq {
        self.shared.acked()
    }

    /// Asks the writer to close the connection with `code` once it has flushed what is
    /// queued — at once for `1013` and `4002`, whose queue is dropped. Closing twice keeps
    /// the first code.
    pub fn close(&self, code: CloseCode) {
        self.shared.close(code);
    }

    /// Closes the connection because its peer stopped answering heartbeats, and counts it.
    pub fn heartbeat_timed_out(&self) {
        if self.shared.close(CloseCode::GoingAway) {
            self.manager
                .inner
                .counters
                .heartbeat_timeouts
                .fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Why the connection is closing, once it is.
    pub fn closing(&self) -> Option<CloseCode> {
        self.shared.closing()
    }

    /// Removes the connection from the manager now. Idempotent; dropping does the same.
    pub fn disconnect(&self) {
        self.manager.remove(&self.shared);
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.manager.remove(&self.shared);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::Ordering;
    use std::time::Duration;

    use agentwire_protocol::{Custom, Event, ServerFrame, UserId};
    use proptest::prelude::*;

    use bytes::Bytes;

    use super::{Outbound, QUEUE_KEEP_CAPACITY};
    use crate::manager::{ConnectOptions, Resume, UnifiedWebSocketManager};
    use crate::{InMemoryBroker, ManagerConfig};

    #[test]
    fn same_epoch_compares_the_text_of_distinct_strings() {
        use agentwire_protocol::Epoch;
        let a = Epoch::new("e_one").unwrap();
        assert!(super::same_epoch(&a, &a.clone()));
        assert!(super::same_epoch(&a, &Epoch::new("e_one").unwrap()));
        assert!(!super::same_epoch(&a, &Epoch::new("e_two").unwrap()));
        assert!(!super::same_epoch(&a, &Epoch::new("e_on").unwrap()));
    }

    /// A fan-out reads each clock once: every connection it writes to gets the time of
    /// the first read, however long after it is asked again.
    #[test]
    fn a_fan_out_reads_each_clock_once() {
        let now = super::FanOutTime::default();
        let (wall, monotonic) = (now.wall(), now.monotonic());
        std::thread::sleep(Duration::from_millis(3));
        assert!(agentwire_protocol::Timestamp::now() > wall);
        assert!(tokio::time::Instant::now() > monotonic);
        assert_eq!((now.wall(), now.monotonic()), (wall, monotonic));
    }

    /// What a connection's writer received, in order: an event's seq, or a pong.
    #[derive(Debug, Clone, PartialEq, Eq)]
    enum Got {
        Event(u64),
        Pong,
    }

    fn decode(frame: &[u8]) -> Option<Got> {
        match ServerFrame::decode(frame).expect("a frame the manager wrote") {
            ServerFrame::Event(e) => Some(Got::Event(e.seq.get())),
            ServerFrame::Pong => Some(Got::Pong),
            _ => None,
        }
    }

    /// One step: events and a pong queued, then one `next_frames` taking up to
    /// `max_frames`, into a batch kept from before or emptied first.
    type Step = (usize, bool, usize, bool);

    /// A custom event `n` carrying the number `n`.
    fn numbered(n: usize) -> Event {
        Event::new(
            None,
            None,
            Custom {
                name: "n".into(),
                value: serde_json::Value::from(n),
                extra: Default::default(),
            },
        )
    }

    async fn emit(m: &UnifiedWebSocketManager, user: &UserId, n: usize) -> u64 {
        m.emit_critical_event(user, numbered(n))
            .await
            .expect("emit")
            .seq
            .get()
    }

    /// A manager on an in-memory broker, and user `u` connected to it, live only.
    async fn connected() -> (UnifiedWebSocketManager, UserId, super::Connection) {
        let m = UnifiedWebSocketManager::new(
            ManagerConfig::default(),
            Arc::new(InMemoryBroker::default()),
        );
        let user: UserId = "u".parse().expect("user id");
        let conn = connect_live(&m, &user).await;
        (m, user, conn)
    }

    /// A connection of `user` to `m`, live only.
    async fn connect_live(m: &UnifiedWebSocketManager, user: &UserId) -> super::Connection {
        m.connect_user(
            user.clone(),
            ConnectOptions {
                resume: Resume::LiveOnly,
            },
        )
        .await
        .expect("connect")
    }

    /// `early` events are emitted before the connection goes live: they reach it through
    /// its catch-up.
    async fn run(early: usize, steps: Vec<Step>) {
        let (m, user, conn) = connected().await;
        let mut expected = Vec::new();
        for n in 0..early {
            expected.push(Got::Event(emit(&m, &user, n).await));
        }
        // Live before the next event (until then events wait behind the catch-up).
        tokio::time::sleep(Duration::from_millis(1)).await;
        let mut out = Vec::new();
        let mut stamps = Vec::new();
        let mut got = Vec::new();
        let mut newest_event = 0;
        for (events, pong, max_frames, keep) in steps {
            for n in 0..events {
                let seq = emit(&m, &user, n).await;
                expected.push(Got::Event(seq));
            }
            if pong {
                assert!(conn.send_control(&ServerFrame::Pong));
                expected.push(Got::Pong);
            }
            if !keep {
                out.clear();
                stamps.clear();
            }
            // Lets the tasks the connect and the emits started run first (the clock is
            // paused: the sleep ends once they all wait).
            tokio::time::sleep(Duration::from_millis(1)).await;
            let before = out.len();
            let queued = conn.shared.queued().0;
            let next = conn.next_frames_stamped(&mut out, &mut stamps, max_frames);
            match tokio::time::timeout(Duration::ZERO, next).await {
                Ok(Outbound::Frames) => {
                    let taken = out.len() - before;
                    assert_eq!(taken, queued.min(max_frames));
                    // Each frame's stamp is its envelope's `ts`; a control frame has none.
                    assert_eq!(stamps.len(), out.len());
                    for (frame, stamp) in out[before..].iter().zip(&stamps[before..]) {
                        let ts = match ServerFrame::decode(frame).expect("a frame") {
                            ServerFrame::Event(e) => Some(e.ts.as_millis()),
                            _ => None,
                        };
                        assert_eq!(*stamp, ts);
                    }
                    got.extend(out[before..].iter().filter_map(|f| decode(f)));
                    let (left, left_bytes) = conn.shared.queued();
                    assert_eq!(left, queued - taken);
                    let st = conn.shared.state();
                    assert_eq!(left_bytes, st.queue.iter().map(Bytes::len).sum::<usize>());
                    drop(st);
                    conn.written();
                    newest_event = got.iter().fold(newest_event, |n, g| match g {
                        Got::Event(s) => n.max(*s),
                        Got::Pong => n,
                    });
                    assert_eq!(m.receipt(&user).delivered_seq.get(), newest_event);
                }
                Ok(Outbound::Close(code)) => panic!("closed with {code:?}"),
                Err(_) => {
                    assert_eq!(queued, 0);
                    // Waiting, the connection holds at most the queue's few slots.
                    if out.is_empty() {
                        assert_eq!(out.capacity(), 0);
                    }
                    if stamps.is_empty() {
                        assert!(stamps.capacity() <= QUEUE_KEEP_CAPACITY);
                    }
                    assert!(conn.shared.state().queue.capacity() <= QUEUE_KEEP_CAPACITY);
                    assert!(conn.shared.state().marks.capacity() <= QUEUE_KEEP_CAPACITY);
                }
            }
        }
        out.clear();
        while let Ok(Outbound::Frames) =
            tokio::time::timeout(Duration::ZERO, conn.next_frames(&mut out, 256)).await
        {
            got.extend(out.drain(..).filter_map(|f| decode(&f)));
        }
        assert_eq!(got, expected);
        assert_eq!(conn.shared.queued(), (0, 0));
        assert_eq!(out.capacity(), 0);
        assert!(conn.shared.state().queue.capacity() <= QUEUE_KEEP_CAPACITY);
    }

    proptest! {
        /// Whether `next_frames` trades its buffer with the queue (an empty batch taking
        /// every queued frame) or moves frames one by one (a batch kept from before, or a
        /// queue longer than `max_frames`), every frame comes out once, in order; the
        /// queue's byte count, the delivery receipt, each frame's stamp and what an idle
        /// connection keeps follow, for events queued live and by the catch-up alike.
        #[test]
        fn frames_come_out_in_order_whichever_way_a_batch_is_taken(
            early in 0usize..4,
            steps in proptest::collection::vec((0usize..7, any::<bool>(), 1usize..6, any::<bool>()), 1..30)
        ) {
            tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .start_paused(true)
                .build()
                .expect("runtime")
                .block_on(run(early, steps));
        }
    }

    /// Events that arrived while a catch-up ran wait in `pending` and are queued as it
    /// goes live; each of them is marked for the delivery receipt like any queued event,
    /// so a writer that has taken only those frames does not report a later event as
    /// delivered.
    #[tokio::test(start_paused = true)]
    async fn events_queued_on_going_live_count_toward_the_receipt_in_their_place() {
        let (m, user, conn) = connected().await;
        tokio::time::sleep(Duration::from_millis(1)).await;
        // What the connect queued (its first frame) is written first.
        let mut out = Vec::new();
        while let Ok(Outbound::Frames) =
            tokio::time::timeout(Duration::ZERO, conn.next_frames(&mut out, 256)).await
        {
            out.clear();
        }
        // As a resync does: the connection catches up, and live events wait meanwhile.
        conn.shared.state().phase = super::Phase::CatchingUp;
        let first = emit(&m, &user, 1).await;
        let second = emit(&m, &user, 2).await;
        assert_eq!(conn.shared.state().pending.len(), 2);
        assert!(matches!(
            conn.shared.try_go_live(&m.inner.counters),
            super::GoLive::Done
        ));
        let third = emit(&m, &user, 3).await;
        assert_eq!(conn.shared.queued().0, 3);

        let next = conn.next_frames(&mut out, 2);
        assert!(matches!(
            tokio::time::timeout(Duration::ZERO, next).await,
            Ok(Outbound::Frames)
        ));
        let got: Vec<Got> = out.drain(..).filter_map(|f| decode(&f)).collect();
        assert_eq!(got, vec![Got::Event(first), Got::Event(second)]);
        conn.written();
        assert_eq!(m.receipt(&user).delivered_seq.get(), second);

        let next = conn.next_frames(&mut out, 2);
        assert!(matches!(
            tokio::time::timeout(Duration::ZERO, next).await,
            Ok(Outbound::Frames)
        ));
        let got: Vec<Got> = out.drain(..).filter_map(|f| decode(&f)).collect();
        assert_eq!(got, vec![Got::Event(third)]);
        conn.written();
        assert_eq!(m.receipt(&user).delivered_seq.get(), third);
    }

    /// A socket as a writer lends it: it takes every frame it is given (and records it),
    /// or none.
    #[derive(Debug, Default)]
    struct TestSink {
        wrote: std::sync::Mutex<Vec<Bytes>>,
        takes: bool,
        /// Deliveries the manager had counted at each write, when set to its manager.
        delivered_at_writes: std::sync::Mutex<Vec<u64>>,
        manager: std::sync::OnceLock<UnifiedWebSocketManager>,
        /// The monotonic time each write was stamped with.
        stamps: std::sync::Mutex<Vec<tokio::time::Instant>>,
        /// How long each write takes.
        pause: Duration,
    }

    impl super::DirectSink for TestSink {
        fn send_now(&self, frame: &Bytes, _: u64, now: &super::FanOutTime) -> bool {
            if self.takes {
                std::thread::sleep(self.pause);
                self.stamps.lock().expect("lock").push(now.monotonic());
                self.wrote.lock().expect("lock").push(frame.clone());
                if let Some(m) = self.manager.get() {
                    let delivered = m.inner.counters.delivered.load(Ordering::Relaxed);
                    self.delivered_at_writes
                        .lock()
                        .expect("lock")
                        .push(delivered);
                }
            }
            self.takes
        }
    }

    impl TestSink {
        fn wrote(&self) -> Vec<Got> {
            let wrote = self.wrote.lock().expect("lock");
            wrote.iter().filter_map(|f| decode(f)).collect()
        }
    }

    /// A live connection whose writer has taken what the connect queued, and waits with
    /// a [`TestSink`] lent.
    async fn lending(
        takes: bool,
    ) -> (
        UnifiedWebSocketManager,
        UserId,
        super::Connection,
        Arc<TestSink>,
    ) {
        let (m, user, conn) = connected().await;
        let sink = lend(&conn, takes).await;
        (m, user, conn, sink)
    }

    /// Lends a new [`TestSink`] to `conn` once the connect's catch-up has run and the
    /// writer has taken what it queued.
    async fn lend(conn: &super::Connection, takes: bool) -> Arc<TestSink> {
        let sink = TestSink {
            takes,
            ..TestSink::default()
        };
        lend_sink(conn, sink).await
    }

    /// Lends `sink` to `conn` as [`lend`] does.
    async fn lend_sink(conn: &super::Connection, sink: TestSink) -> Arc<TestSink> {
        // Live once the connect's catch-up task has run.
        tokio::time::sleep(Duration::from_millis(1)).await;
        let sink = Arc::new(sink);
        let lent: Arc<dyn super::DirectSink> = sink.clone();
        loop {
            match take_lending(conn, Some(&lent)).await {
                Some((Outbound::Frames, _)) => {}
                Some((Outbound::Close(code), _)) => panic!("closed: {code:?}"),
                None => break,
            }
        }
        sink
    }

    /// One poll of `next_frames_lending`: what it returned and the frames it took, or
    /// `None` if it waits (dropped then, which leaves `sink` lent).
    async fn take_lending(
        conn: &super::Connection,
        sink: Option<&Arc<dyn super::DirectSink>>,
    ) -> Option<(Outbound, Vec<Got>)> {
        let (mut out, mut stamps) = (Vec::new(), Vec::new());
        let next = conn.next_frames_lending(&mut out, &mut stamps, 256, sink);
        let got = tokio::time::timeout(Duration::ZERO, next).await.ok()?;
        Some((got, out.iter().filter_map(|f| decode(f)).collect()))
    }

    /// With the writer waiting and nothing queued, the deliverer writes each live event's
    /// frame itself, in order: nothing is queued, the receipt moves; once the lend
    /// ends, events are queued for the writer again.
    #[tokio::test(start_paused = true)]
    async fn a_live_event_to_a_waiting_writer_is_written_by_the_deliverer() {
        let (m, user, conn, sink) = lending(true).await;
        let first = emit(&m, &user, 1).await;
        let second = emit(&m, &user, 2).await;
        assert_eq!(sink.wrote(), vec![Got::Event(first), Got::Event(second)]);
        assert_eq!(conn.shared.queued(), (0, 0));
        assert_eq!(m.receipt(&user).delivered_seq.get(), second);
        conn.stop_lending();
        let third = emit(&m, &user, 3).await;
        assert_eq!(conn.shared.queued().0, 1);
        assert_eq!(
            take_lending(&conn, None).await,
            Some((Outbound::Frames, vec![Got::Event(third)]))
        );
        assert_eq!(sink.wrote().len(), 2);
    }

    /// A frame queued first (a pong) keeps its place: while anything is queued, a live
    /// event is queued behind it, not written past it; and while the writer holds what it
    /// took, the next event is queued too (the lend ended when it took them).
    #[tokio::test(start_paused = true)]
    async fn nothing_is_written_past_a_frame_queued_or_taken() {
        let (m, user, conn, sink) = lending(true).await;
        assert!(conn.send_control(&ServerFrame::Pong));
        let first = emit(&m, &user, 1).await;
        assert!(sink.wrote().is_empty());
        let lent: Arc<dyn super::DirectSink> = sink.clone();
        assert_eq!(
            take_lending(&conn, Some(&lent)).await,
            Some((Outbound::Frames, vec![Got::Pong, Got::Event(first)]))
        );
        let second = emit(&m, &user, 2).await;
        assert!(sink.wrote().is_empty());
        assert_eq!(
            take_lending(&conn, Some(&lent)).await,
            Some((Outbound::Frames, vec![Got::Event(second)]))
        );
        // Waiting again: lent again.
        assert_eq!(take_lending(&conn, Some(&lent)).await, None);
        let third = emit(&m, &user, 3).await;
        assert_eq!(sink.wrote(), vec![Got::Event(third)]);
    }

    /// A frame the sink does not take is queued for the writer, and the receipt moves
    /// only once the writer has written it.
    #[tokio::test(start_paused = true)]
    async fn a_frame_the_sink_does_not_take_is_queued() {
        let (m, user, conn, sink) = lending(false).await;
        let seq = emit(&m, &user, 1).await;
        assert_eq!(conn.shared.queued().0, 1);
        assert!(m.receipt(&user).delivered_seq.get() < seq);
        let lent: Arc<dyn super::DirectSink> = sink.clone();
        assert_eq!(
            take_lending(&conn, Some(&lent)).await,
            Some((Outbound::Frames, vec![Got::Event(seq)]))
        );
        conn.written();
        assert_eq!(m.receipt(&user).delivered_seq.get(), seq);
    }

    /// While direct writes are paused (a saturated runtime), a live event is queued for
    /// the writer although its socket is lent; once they resume, the deliverer writes
    /// again.
    #[tokio::test(start_paused = true)]
    async fn paused_direct_writes_queue_for_the_writer() {
        let (m, user, conn, sink) = lending(true).await;
        m.inner.load.set_paused(true);
        assert!(m.direct_writes_paused());
        let first = emit(&m, &user, 1).await;
        assert!(sink.wrote().is_empty());
        assert_eq!(conn.shared.queued().0, 1);
        let lent: Arc<dyn super::DirectSink> = sink.clone();
        assert_eq!(
            take_lending(&conn, Some(&lent)).await,
            Some((Outbound::Frames, vec![Got::Event(first)]))
        );
        assert_eq!(take_lending(&conn, Some(&lent)).await, None);
        m.inner.load.set_paused(false);
        let second = emit(&m, &user, 2).await;
        assert_eq!(sink.wrote(), vec![Got::Event(second)]);
    }

    /// A closing connection writes nothing more through the sink: its writer takes the
    /// close.
    #[tokio::test(start_paused = true)]
    async fn a_closing_connection_writes_nothing_directly() {
        let (m, user, conn, sink) = lending(true).await;
        conn.close(agentwire_protocol::CloseCode::GoingAway);
        let _ = emit(&m, &user, 1).await;
        assert!(sink.wrote().is_empty());
        let lent: Arc<dyn super::DirectSink> = sink.clone();
        assert_eq!(
            take_lending(&conn, Some(&lent)).await,
            Some((
                Outbound::Close(agentwire_protocol::CloseCode::GoingAway),
                vec![]
            ))
        );
    }

    /// Inside a held-writes scope a live event for a lent socket is queued, the writer
    /// not woken and the receipt not moved; the scope's end writes the frames in order,
    /// as direct writes, and moves the receipt.
    #[tokio::test(start_paused = true)]
    async fn held_writes_go_out_in_order_when_the_scope_ends() {
        let (m, user, conn, sink) = lending(true).await;
        let woken = woken_writer(&conn);
        let scope = super::super::held::HeldWrites::enter();
        let first = emit(&m, &user, 1).await;
        let second = emit(&m, &user, 2).await;
        assert!(sink.wrote().is_empty());
        assert_eq!(conn.shared.queued().0, 2);
        assert!(m.receipt(&user).delivered_seq.get() < first);
        drop(scope);
        assert_eq!(sink.wrote(), vec![Got::Event(first), Got::Event(second)]);
        assert_eq!(conn.shared.queued(), (0, 0));
        assert_eq!(m.receipt(&user).delivered_seq.get(), second);
        assert!(
            !woken.get(),
            "the writer was woken for frames written for it"
        );
        // The writer, still lending, finds nothing to take.
        let lent: Arc<dyn super::DirectSink> = sink.clone();
        assert_eq!(take_lending(&conn, Some(&lent)).await, None);

        // A burst held in one scope grows the queue; its end gives the room back, as the
        // writer does, with nobody taking frames.
        let scope = super::super::held::HeldWrites::enter();
        for n in 0..64 {
            emit(&m, &user, n).await;
        }
        assert!(conn.shared.state().queue.capacity() > QUEUE_KEEP_CAPACITY);
        drop(scope);
        assert_eq!(sink.wrote().len(), 66);
        let st = conn.shared.state();
        assert!(st.queue.capacity() <= QUEUE_KEEP_CAPACITY);
        assert!(st.marks.capacity() <= QUEUE_KEEP_CAPACITY);
    }

    /// A scope's end writes its connections under one reading of the clocks for each
    /// `WRITES_PER_CLOCK_READ` of them in a row: the stamp a write gets changes with each
    /// such group, and only then. (Real time: each write takes 2 ms of it.)
    #[tokio::test]
    async fn held_writes_read_the_clocks_once_for_each_group_of_connections() {
        use super::super::held::{HeldWrites, WRITES_PER_CLOCK_READ};
        let m = UnifiedWebSocketManager::new(
            ManagerConfig::default(),
            Arc::new(InMemoryBroker::default()),
        );
        let mut lent = Vec::new();
        for i in 0..2 * WRITES_PER_CLOCK_READ + 3 {
            let user: UserId = format!("u{i}").parse().expect("user id");
            let conn = connect_live(&m, &user).await;
            let sink = TestSink {
                takes: true,
                pause: Duration::from_millis(2),
                ..TestSink::default()
            };
            let sink = lend_sink(&conn, sink).await;
            lent.push((user, conn, sink));
        }
        let scope = HeldWrites::enter();
        for (user, _, _) in &lent {
            emit(&m, user, 1).await;
        }
        drop(scope);
        let stamps: Vec<_> = lent
            .iter()
            .map(|(_, _, sink)| {
                let stamps = sink.stamps.lock().expect("lock");
                assert_eq!(stamps.len(), 1, "one write each");
                stamps[0]
            })
            .collect();
        for (i, pair) in stamps.windows(2).enumerate() {
            let write = i + 1;
            if write % WRITES_PER_CLOCK_READ == 0 {
                assert!(pair[1] > pair[0], "write {write} did not read the clock");
            } else {
                assert_eq!(pair[1], pair[0], "write {write} read the clock");
            }
        }
    }

    /// A writer that takes the held frames itself (woken for something else) writes
    /// them; the scope's end then writes nothing twice.
    #[tokio::test(start_paused = true)]
    async fn held_frames_the_writer_took_are_not_written_again() {
        let (m, user, conn, sink) = lending(true).await;
        let scope = super::super::held::HeldWrites::enter();
        let first = emit(&m, &user, 1).await;
        let lent: Arc<dyn super::DirectSink> = sink.clone();
        assert_eq!(
            take_lending(&conn, Some(&lent)).await,
            Some((Outbound::Frames, vec![Got::Event(first)]))
        );
        drop(scope);
        assert!(sink.wrote().is_empty());
        conn.written();
        assert_eq!(m.receipt(&user).delivered_seq.get(), first);
    }

    /// What the scope's end cannot write — frames the socket refuses, a control frame
    /// queued behind the held ones and what follows it, everything while direct writes
    /// are paused — stays queued in order, and the writer is woken for it.
    #[tokio::test(start_paused = true)]
    async fn held_frames_left_unwritten_wake_the_writer() {
        // Refused by the socket.
        let (m, user, conn, sink) = lending(false).await;
        let woken = woken_writer(&conn);
        let scope = super::super::held::HeldWrites::enter();
        let first = emit(&m, &user, 1).await;
        drop(scope);
        assert!(woken.get());
        let lent: Arc<dyn super::DirectSink> = sink.clone();
        assert_eq!(
            take_lending(&conn, Some(&lent)).await,
            Some((Outbound::Frames, vec![Got::Event(first)]))
        );

        // A pong queued between two held events: the first is written, the rest is the
        // writer's, in order.
        let (m, user, conn, sink) = lending(true).await;
        let scope = super::super::held::HeldWrites::enter();
        let first = emit(&m, &user, 1).await;
        assert!(conn.send_control(&ServerFrame::Pong));
        let second = emit(&m, &user, 2).await;
        let woken = woken_writer(&conn);
        drop(scope);
        assert!(woken.get());
        assert_eq!(sink.wrote(), vec![Got::Event(first)]);
        let lent: Arc<dyn super::DirectSink> = sink.clone();
        assert_eq!(
            take_lending(&conn, Some(&lent)).await,
            Some((Outbound::Frames, vec![Got::Pong, Got::Event(second)]))
        );

        // Direct writes paused before the scope ends.
        let (m, user, conn, sink) = lending(true).await;
        let woken = woken_writer(&conn);
        let scope = super::super::held::HeldWrites::enter();
        let first = emit(&m, &user, 1).await;
        m.inner.load.set_paused(true);
        drop(scope);
        assert!(woken.get());
        assert!(sink.wrote().is_empty());
        let lent: Arc<dyn super::DirectSink> = sink.clone();
        assert_eq!(
            take_lending(&conn, Some(&lent)).await,
            Some((Outbound::Frames, vec![Got::Event(first)]))
        );
    }

    /// A publish of several users' events writes to their lent sockets only once every
    /// event of it is delivered: each write sees all of the publish's deliveries counted.
    #[tokio::test(start_paused = true)]
    async fn a_publish_of_several_users_writes_once_all_are_delivered() {
        let (m, u, conn_u) = connected().await;
        let v: UserId = "v".parse().expect("user id");
        let conn_v = connect_live(&m, &v).await;
        let (sink_u, sink_v) = (lend(&conn_u, true).await, lend(&conn_v, true).await);
        for sink in [&sink_u, &sink_v] {
            sink.manager.set(m.clone()).expect("set once");
        }
        let before = m.inner.counters.delivered.load(Ordering::Relaxed);
        let event = |user: &UserId| m.prepare_event(user, &numbered(1), None).expect("prepare");
        let answers = m
            .emit_prepared_many(&[event(&u), event(&v), event(&u)])
            .await;
        assert!(answers.iter().all(Result::is_ok), "{answers:?}");
        assert_eq!(sink_u.wrote(), vec![Got::Event(1), Got::Event(2)]);
        assert_eq!(sink_v.wrote(), vec![Got::Event(1)]);
        for sink in [&sink_u, &sink_v] {
            let seen = sink.delivered_at_writes.lock().expect("lock").clone();
            assert!(
                seen.iter().all(|&d| d == before + 3),
                "a write saw {seen:?} deliveries, not all {}",
                before + 3
            );
        }
        assert_eq!(m.receipt(&u).delivered_seq.get(), 2);
        assert_eq!(m.receipt(&v).delivered_seq.get(), 1);
    }

    /// A waker that remembers being woken.
    #[derive(Debug, Default)]
    struct Woken(std::sync::atomic::AtomicBool);

    impl Woken {
        fn get(&self) -> bool {
            self.0.load(Ordering::Relaxed)
        }
    }

    impl futures_util::task::ArcWake for Woken {
        fn wake_by_ref(arc_self: &Arc<Self>) {
            arc_self.0.store(true, Ordering::Relaxed);
        }
    }

    /// A waker registered as the connection's writer's, as a writer waiting for frames
    /// registers its own.
    fn woken_writer(conn: &super::Connection) -> Arc<Woken> {
        let woken = Arc::new(Woken::default());
        conn.shared
            .readable
            .register(&futures_util::task::waker(woken.clone()));
        woken
    }
}
