//! Helpers shared by the manager's tests: a client that drains a `Connection` and decodes
//! what it gets, event builders, and managers over each broker.

#![allow(dead_code, unreachable_pub)] // each test file uses a different part

use std::sync::Arc;
use std::time::Duration;

use agentwire_manager::conformance::LatencyBroker;
use agentwire_manager::{
    Broker, ConnectOptions, Connection, HistoryConfig, InMemoryBroker, ManagerConfig, Outbound,
    Resume, UnifiedWebSocketManager,
};
use agentwire_protocol::{
    CloseCode, ConnectionEstablished, Custom, Epoch, Event, EventData, EventEnvelope, Seq,
    ServerFrame, UserId,
};
use bytes::Bytes;

/// The longest a helper waits for frames before it fails the test. Generous: it bounds a
/// hang, it does not measure anything.
pub const WAIT: Duration = Duration::from_secs(20);

pub fn user(name: &str) -> UserId {
    name.parse().expect("valid user id")
}

/// A `custom` event that names its user and carries `n`, so a frame that reaches the wrong
/// connection is visible in the frame itself.
pub fn custom(user: &UserId, n: u64) -> Event {
    Event::new(
        None,
        None,
        Custom {
            name: user.to_string(),
            value: serde_json::Value::from(n),
            extra: Default::default(),
        },
    )
}

pub fn manager(config: ManagerConfig) -> UnifiedWebSocketManager {
    UnifiedWebSocketManager::new(config, Arc::new(InMemoryBroker::default()))
}

pub fn manager_with_history(
    config: ManagerConfig,
    history: HistoryConfig,
) -> UnifiedWebSocketManager {
    UnifiedWebSocketManager::new(config, Arc::new(InMemoryBroker::new(history)))
}

pub fn latency_manager(config: ManagerConfig) -> UnifiedWebSocketManager {
    let broker: Arc<dyn Broker> = Arc::new(LatencyBroker::new(InMemoryBroker::default()));
    UnifiedWebSocketManager::new(config, broker)
}

pub fn after(last_seq: u64, epoch: &Epoch) -> ConnectOptions {
    ConnectOptions {
        resume: Resume::After {
            last_seq: Seq(last_seq),
            epoch: epoch.clone(),
        },
    }
}

pub fn live_only() -> ConnectOptions {
    ConnectOptions {
        resume: Resume::LiveOnly,
    }
}

pub async fn connect(m: &UnifiedWebSocketManager, u: &UserId, options: ConnectOptions) -> Client {
    let conn = m.connect_user(u.clone(), options).await.expect("connect");
    Client::new(conn)
}

/// A manager over the memory broker whose connections queue at most 8 frames (64 KiB).
pub fn small_queue() -> UnifiedWebSocketManager {
    manager(ManagerConfig {
        queue: agentwire_manager::QueueLimits {
            max_frames: 8,
            max_bytes: 64 * 1024,
        },
        ..ManagerConfig::default()
    })
}

/// Emits `custom(user, n)` and returns its seq.
pub async fn emit(m: &UnifiedWebSocketManager, u: &UserId, n: u64) -> u64 {
    m.emit_critical_event(u, custom(u, n))
        .await
        .expect("emit")
        .seq
        .get()
}

/// Lets spawned tasks run until they wait. Reliable only on a current-thread runtime with
/// a paused clock (where the sleep fires once everything else is idle).
pub async fn settle() {
    tokio::time::sleep(Duration::from_millis(1)).await;
}

/// A connection as the server's writer sees it, recording every frame it drained.
#[derive(Debug)]
pub struct Client {
    pub conn: Connection,
    pub frames: Vec<ServerFrame>,
    pub closed: Option<CloseCode>,
    /// Bytes of every frame drained, as they were queued.
    pub bytes: usize,
    buf: Vec<Bytes>,
}

impl Client {
    pub fn new(conn: Connection) -> Self {
        Client {
            conn,
            frames: Vec::new(),
            closed: None,
            bytes: 0,
            buf: Vec::new(),
        }
    }

    fn take(&mut self, out: Outbound) {
        match out {
            Outbound::Frames => {
                for raw in self.buf.drain(..) {
                    self.bytes += raw.len();
                    let frame = ServerFrame::decode(&raw)
                        .unwrap_or_else(|e| panic!("undecodable frame {raw:?}: {e}"));
                    self.frames.push(frame);
                }
            }
            Outbound::Close(code) => self.closed = Some(code),
        }
    }

    /// Drains frames until `done` holds; panics when the connection closes first or
    /// nothing satisfies it within [`WAIT`].
    pub async fn until(&mut self, what: &str, done: impl Fn(&Client) -> bool) {
        let deadline = tokio::time::Instant::now() + WAIT;
        while !done(self) {
            if let Some(code) = self.closed {
                panic!(
                    "closed with {code:?} while waiting for {what}; frames: {:?}",
                    self.frames
                );
            }
            match tokio::time::timeout_at(deadline, self.conn.next_frames(&mut self.buf, 256)).await
            {
                Ok(out) => self.take(out),
                Err(_) => panic!("timed out waiting for {what}; frames: {:?}", self.frames),
            }
        }
    }

    /// Drains until the newest event seq is at least `seq`.
    pub async fn until_seq(&mut self, seq: u64) {
        if seq == 0 {
            return;
        }
        self.until(&format!("seq {seq}"), |c| c.last_seq() >= seq)
            .await;
    }

    /// Drains until the newest event seq is at least `seq` or the connection closes;
    /// panics when neither happens within [`WAIT`].
    pub async fn until_seq_or_closed(&mut self, seq: u64) {
        let deadline = tokio::time::Instant::now() + WAIT;
        while self.last_seq() < seq && self.closed.is_none() {
            match tokio::time::timeout_at(deadline, self.conn.next_frames(&mut self.buf, 8)).await {
                Ok(out) => self.take(out),
                Err(_) => panic!("stalled at seq {} waiting for {seq}", self.last_seq()),
            }
        }
    }

    /// Drains until the connection reports its close code, and returns it.
    pub async fn until_closed(&mut self) -> CloseCode {
        let deadline = tokio::time::Instant::now() + WAIT;
        while self.closed.is_none() {
            match tokio::time::timeout_at(deadline, self.conn.next_frames(&mut self.buf, 256)).await
            {
                Ok(out) => self.take(out),
                Err(_) => panic!("timed out waiting for a close; frames: {:?}", self.frames),
            }
        }
        self.closed.unwrap_or(CloseCode::Normal)
    }

    /// Drains what is queued now, without waiting.
    pub async fn drain_ready(&mut self) {
        while self.closed.is_none() {
            match tokio::time::timeout(Duration::ZERO, self.conn.next_frames(&mut self.buf, 256))
                .await
            {
                Ok(out) => self.take(out),
                Err(_) => break,
            }
        }
    }

    pub fn hello(&self) -> &ConnectionEstablished {
        match self.frames.first() {
            Some(ServerFrame::ConnectionEstablished(h)) => h,
            other => panic!("first frame is not connection_established: {other:?}"),
        }
    }

    pub fn events(&self) -> impl Iterator<Item = &EventEnvelope> {
        self.frames.iter().filter_map(|f| match f {
            ServerFrame::Event(e) => Some(e),
            _ => None,
        })
    }

    pub fn seqs(&self) -> Vec<u64> {
        self.events().map(|e| e.seq.get()).collect()
    }

    pub fn last_seq(&self) -> u64 {
        self.events().last().map_or(0, |e| e.seq.get())
    }

    /// The `replay_gap` frames, as `(from, to)`.
    pub fn gaps(&self) -> Vec<(u64, u64)> {
        self.frames
            .iter()
            .filter_map(|f| match f {
                ServerFrame::ReplayGap(g) => Some((g.from_seq.get(), g.to_seq.get())),
                _ => None,
            })
            .collect()
    }

    /// Every event frame names `user` in its payload (see [`custom`]).
    pub fn assert_only_events_of(&self, user: &UserId) {
        for e in self.events() {
            match &e.event.data {
                EventData::Custom(c) => assert_eq!(
                    c.name,
                    user.as_str(),
                    "connection of {user} got seq {} of {}",
                    e.seq,
                    c.name
                ),
                other => panic!("unexpected payload {other:?}"),
            }
        }
    }
}

pub fn range(from: u64, to: u64) -> Vec<u64> {
    (from..=to).collect()
}
