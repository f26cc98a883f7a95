//! The hub's state: each connected user's `seq` counter and open connections, and each
//! connection's outbox (the queue its writer drains).
//!
//! One lock over the user map, taken once per publish request and once per connect and
//! disconnect. Each event is serialized once, into a [`Bytes`] every connection of its
//! user shares; pushing it is a reference-count increment and a wake-up.

use std::future::poll_fn;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Poll, Waker};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use serde::Serialize;
use serde_json::value::RawValue;

/// A connection's batch buffer keeps at most this many slots between batches, so a burst
/// leaves no large allocation behind on an idle connection.
const KEEP_SLOTS: usize = 4;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Milliseconds since the Unix epoch.
fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Counters `/metrics` shows (under the names the load generator reads).
#[derive(Debug, Default)]
pub(crate) struct Stats {
    pub(crate) connections: AtomicU64,
    pub(crate) users: AtomicU64,
    pub(crate) frames_written: AtomicU64,
    pub(crate) queued_bytes: AtomicU64,
    pub(crate) slow_consumer_closes: AtomicU64,
}

/// What the hub is bounded by.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// Most open connections; further handshakes get 503.
    pub(crate) max_connections: u64,
    /// Most bytes waiting in one connection's outbox; past it the connection is closed
    /// with 1013 (a slow consumer).
    pub(crate) queue_max_bytes: usize,
}

/// A connected user.
#[derive(Debug, Default)]
struct User {
    /// The last `seq` given to an event of this user.
    seq: u64,
    conns: Vec<Arc<Outbox>>,
}

/// The shared state.
#[derive(Debug)]
pub(crate) struct Hub {
    users: Mutex<foldhash::HashMap<Box<str>, User>>,
    epoch: String,
    next_conn: AtomicU64,
    pub(crate) limits: Limits,
    pub(crate) stats: Stats,
}

/// One event of a publish body: the fields agentwire's publish API takes. `data` is kept
/// as the raw JSON text it arrived as and copied into the frame unchanged.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct InEvent<'a> {
    #[serde(borrow)]
    pub(crate) user_id: std::borrow::Cow<'a, str>,
    #[serde(rename = "type", borrow)]
    pub(crate) ty: std::borrow::Cow<'a, str>,
    #[serde(default, borrow)]
    pub(crate) event_id: Option<std::borrow::Cow<'a, str>>,
    #[serde(default, borrow)]
    pub(crate) thread_id: Option<std::borrow::Cow<'a, str>>,
    #[serde(default, borrow)]
    pub(crate) run_id: Option<std::borrow::Cow<'a, str>>,
    #[serde(default, borrow)]
    pub(crate) data: Option<&'a RawValue>,
}

/// A delivered event frame, field for field in agentwire's order.
#[derive(Serialize)]
struct OutEvent<'a> {
    #[serde(rename = "type")]
    ty: &'a str,
    seq: u64,
    event_id: &'a str,
    ts: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    thread_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    run_id: Option<&'a str>,
    data: &'a RawValue,
}

#[derive(Serialize)]
struct Established<'a> {
    #[serde(rename = "type")]
    ty: &'static str,
    connection_id: &'a str,
    user_id: &'a str,
    epoch: &'a str,
    /// 0: the hub never pings.
    heartbeat_interval_ms: u64,
    last_seq: u64,
    resumed: bool,
}

/// What a publish answers for one event.
#[derive(Debug, Serialize)]
pub(crate) struct Accepted {
    pub(crate) seq: u64,
    pub(crate) event_id: String,
    pub(crate) ts: u64,
}

/// The hub is at its connection bound.
#[derive(Debug)]
pub(crate) struct Full;

fn empty_data() -> &'static RawValue {
    static EMPTY: std::sync::OnceLock<Box<RawValue>> = std::sync::OnceLock::new();
    EMPTY.get_or_init(|| RawValue::from_string("{}".to_owned()).expect("valid JSON"))
}

impl Hub {
    pub(crate) fn new(limits: Limits) -> Hub {
        Hub {
            users: Mutex::new(foldhash::HashMap::default()),
            epoch: format!("e_{}", uuid::Uuid::now_v7().simple()),
            next_conn: AtomicU64::new(1),
            limits,
            stats: Stats::default(),
        }
    }

    pub(crate) fn is_full(&self) -> bool {
        self.stats.connections.load(Ordering::Relaxed) >= self.limits.max_connections
    }

    /// Registers a connection of `user` and queues its `connection_established`.
    pub(crate) fn connect(&self, user: &str) -> Result<Arc<Outbox>, Full> {
        if self.is_full() {
            return Err(Full);
        }
        let id = self.next_conn.fetch_add(1, Ordering::Relaxed);
        let outbox = Arc::new(Outbox {
            id,
            state: Mutex::new(OutState::default()),
        });
        let connection_id = format!("c_{}", uuid::Uuid::now_v7().simple());
        let mut users = lock(&self.users);
        let entry = match users.get_mut(user) {
            Some(u) => u,
            None => {
                self.stats.users.fetch_add(1, Ordering::Relaxed);
                users.entry(user.into()).or_default()
            }
        };
        let first = serde_json::to_vec(&Established {
            ty: "connection_established",
            connection_id: &connection_id,
            user_id: user,
            epoch: &self.epoch,
            heartbeat_interval_ms: 0,
            last_seq: entry.seq,
            resumed: false,
        })
        .expect("serializes");
        // Queued under the lock: no event of this user can be queued before it.
        outbox.push(&Bytes::from(first), self);
        entry.conns.push(outbox.clone());
        self.stats.connections.fetch_add(1, Ordering::Relaxed);
        Ok(outbox)
    }

    /// Forgets a connection; a user without connections is forgotten too, `seq` included.
    pub(crate) fn disconnect(&self, user: &str, outbox: &Outbox) {
        let mut users = lock(&self.users);
        let Some(u) = users.get_mut(user) else {
            return;
        };
        let before = u.conns.len();
        u.conns.retain(|c| c.id != outbox.id);
        if u.conns.len() < before {
            self.stats.connections.fetch_sub(1, Ordering::Relaxed);
        }
        if u.conns.is_empty() {
            users.remove(user);
            self.stats.users.fetch_sub(1, Ordering::Relaxed);
        }
        drop(users);
        let left = std::mem::take(&mut lock(&outbox.state).bytes);
        self.stats
            .queued_bytes
            .fetch_sub(left as u64, Ordering::Relaxed);
    }

    /// Gives each event its user's next `seq`, serializes it once and queues it on every
    /// connection of the user. An event for a user with no connection is answered with
    /// seq 0 and dropped: the hub keeps no streams.
    pub(crate) fn publish(&self, events: &[InEvent<'_>]) -> Vec<Accepted> {
        let mut out = Vec::with_capacity(events.len());
        let mut frame = Vec::new();
        let mut users = lock(&self.users);
        for e in events {
            let ts = now_ms();
            let event_id = match &e.event_id {
                Some(id) => id.to_string(),
                None => uuid::Uuid::now_v7().hyphenated().to_string(),
            };
            let Some(user) = users.get_mut(e.user_id.as_ref()) else {
                out.push(Accepted {
                    seq: 0,
                    event_id,
                    ts,
                });
                continue;
            };
            user.seq += 1;
            let data: &RawValue = match e.data {
                Some(d) => d,
                None => empty_data(),
            };
            frame.clear();
            serde_json::to_writer(
                &mut frame,
                &OutEvent {
                    ty: &e.ty,
                    seq: user.seq,
                    event_id: &event_id,
                    ts,
                    thread_id: e.thread_id.as_deref(),
                    run_id: e.run_id.as_deref(),
                    data,
                },
            )
            .expect("serializes");
            let shared = Bytes::copy_from_slice(&frame);
            for c in &user.conns {
                c.push(&shared, self);
            }
            out.push(Accepted {
                seq: user.seq,
                event_id,
                ts,
            });
        }
        out
    }
}

/// How a connection's writer should end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum End {
    /// Send a close frame with this code, then stop.
    Close(u16),
    /// Stop at once (the reader saw the connection end).
    Gone,
}

#[derive(Debug, Default)]
struct OutState {
    frames: Vec<Bytes>,
    bytes: usize,
    pong: Option<Bytes>,
    end: Option<End>,
    waker: Option<Waker>,
}

/// A connection's queue of frames to write.
#[derive(Debug)]
pub(crate) struct Outbox {
    id: u64,
    state: Mutex<OutState>,
}

/// What the writer has to do next, besides the frames it was handed.
#[derive(Debug, Default)]
pub(crate) struct Next {
    pub(crate) pong: Option<Bytes>,
    pub(crate) end: Option<End>,
}

impl Outbox {
    fn push(&self, frame: &Bytes, hub: &Hub) {
        let mut s = lock(&self.state);
        if s.end.is_some() {
            return;
        }
        if s.bytes + frame.len() > hub.limits.queue_max_bytes {
            // A slow consumer: what it has not taken is dropped, and it is closed.
            hub.stats
                .queued_bytes
                .fetch_sub(s.bytes as u64, Ordering::Relaxed);
            hub.stats
                .slow_consumer_closes
                .fetch_add(1, Ordering::Relaxed);
            s.frames = Vec::new();
            s.bytes = 0;
            s.end = Some(End::Close(1013));
        } else {
            s.frames.push(frame.clone());
            s.bytes += frame.len();
            hub.stats
                .queued_bytes
                .fetch_add(frame.len() as u64, Ordering::Relaxed);
        }
        let waker = s.waker.take();
        drop(s);
        if let Some(w) = waker {
            w.wake();
        }
    }

    /// Asks the writer to answer a ping.
    pub(crate) fn pong(&self, payload: Bytes) {
        self.update(|s| s.pong = Some(payload));
    }

    /// Asks the writer to end (the first request wins).
    pub(crate) fn end(&self, end: End) {
        self.update(|s| {
            s.end.get_or_insert(end);
        });
    }

    fn update(&self, f: impl FnOnce(&mut OutState)) {
        let mut s = lock(&self.state);
        f(&mut s);
        let waker = s.waker.take();
        drop(s);
        if let Some(w) = waker {
            w.wake();
        }
    }

    /// Waits until there is something to write, then moves every queued frame into
    /// `batch` (which must be empty) and returns what else to do.
    pub(crate) async fn next(&self, batch: &mut Vec<Bytes>, hub: &Hub) -> Next {
        poll_fn(|cx| {
            let mut s = lock(&self.state);
            if s.frames.is_empty() && s.pong.is_none() && s.end.is_none() {
                s.waker = Some(cx.waker().clone());
                return Poll::Pending;
            }
            std::mem::swap(&mut s.frames, batch);
            let bytes = std::mem::take(&mut s.bytes);
            hub.stats
                .queued_bytes
                .fetch_sub(bytes as u64, Ordering::Relaxed);
            Poll::Ready(Next {
                pong: s.pong.take(),
                end: s.end,
            })
        })
        .await
    }
}

/// Empties a written batch, giving back a burst's capacity.
pub(crate) fn recycle(batch: &mut Vec<Bytes>) {
    batch.clear();
    if batch.capacity() > KEEP_SLOTS {
        *batch = Vec::new();
    }
}
