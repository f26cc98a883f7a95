//! The front door: every TCP connection the server holds open, and the bounds that keep
//! connections which never finish a request from exhausting the process.
//!
//! - **A cap on open TCP connections** (`--max-tcp-connections`): WebSockets, requests in
//!   progress and idle keep-alive connections together, kept under the open-file limit
//!   with room for the listener, logs and the broker. At the cap, the oldest connection
//!   that is not serving anything — waiting for a request head, or idle between requests —
//!   is closed to make room, so silent sockets cannot lock clients out; when every
//!   connection is busy, the new one is answered 503 and closed.
//! - **A header-read timeout** (`--header-read-timeout`): a new connection's first request
//!   head, and any request head once its first bytes arrived, must be whole within it.
//! - **An idle timeout** (`--idle-timeout`): a keep-alive connection with no request for
//!   this long is closed.
//! - **A body-read timeout** (`--body-read-timeout`, in [`super::body`]).
//! - **A kernel send buffer per connection** (`--socket-send-buffer`, set where the server
//!   accepts): what a slow reader leaves unread waits in the connection's own queue, not
//!   in megabytes of kernel memory.
//!
//! Each connection has a [`Track`] (its slot), held by its socket: by hyper's connection
//! while it speaks HTTP, then by the WebSocket session it was upgraded to, so the slot is
//! given back only when the socket closes.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::sync::Notify;
use tokio::time::Instant;

/// The front door's bounds (the flags of the same names).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct DoorLimits {
    pub(crate) max_tcp_connections: usize,
    pub(crate) header_read_timeout: Duration,
    pub(crate) idle_timeout: Duration,
    pub(crate) body_read_timeout: Duration,
    pub(crate) max_header_bytes: usize,
    pub(crate) max_uri_bytes: usize,
    /// `SO_SNDBUF` of each accepted socket; 0: the kernel's autotuning.
    pub(crate) socket_send_buffer: usize,
}

/// Which timeout closed a connection or refused a body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Timeout {
    HeaderRead,
    Idle,
    BodyRead,
}

impl Timeout {
    fn as_str(self) -> &'static str {
        match self {
            Timeout::HeaderRead => "header_read",
            Timeout::Idle => "idle",
            Timeout::BodyRead => "body_read",
        }
    }
}

type Labels = [(&'static str, &'static str); 1];

/// The front door's metrics.
#[derive(Debug, Clone, Default)]
pub(crate) struct DoorMetrics {
    open: Gauge,
    refused: Counter,
    evicted: Counter,
    timeouts: Family<Labels, Counter>,
    malformed: Family<Labels, Counter>,
    send_buffer: Gauge,
}

impl DoorMetrics {
    /// Creates the metrics and registers them in `registry`.
    pub(crate) fn register(registry: &mut Registry) -> DoorMetrics {
        let m = DoorMetrics::default();
        registry.register(
            "agentwire_tcp_connections",
            "Open TCP connections: WebSockets, HTTP requests and idle keep-alive connections \
             (at most --max-tcp-connections)",
            m.open.clone(),
        );
        registry.register(
            "agentwire_tcp_connections_refused",
            "Connections answered 503 and closed because --max-tcp-connections were open and \
             none of them was idle",
            m.refused.clone(),
        );
        registry.register(
            "agentwire_tcp_connections_evicted",
            "Idle HTTP connections closed to make room for a new one at --max-tcp-connections",
            m.evicted.clone(),
        );
        registry.register(
            "agentwire_http_timeouts",
            "HTTP connections closed, or bodies refused with 408, by a front-door timeout: \
             header_read, idle, body_read",
            m.timeouts.clone(),
        );
        registry.register(
            "agentwire_http_malformed_requests",
            "Requests refused before routing, by status: 400 (unparsable), 414 (target over \
             --max-uri-bytes), 431 (head over --max-header-bytes)",
            m.malformed.clone(),
        );
        registry.register(
            "agentwire_socket_send_buffer_bytes",
            "The kernel send buffer (SO_SNDBUF) of an accepted connection as the kernel reports \
             it (Linux doubles --socket-send-buffer and caps it at net.core.wmem_max); with \
             --socket-send-buffer 0, the autotuned buffer's starting size. Read on the first \
             connection accepted; 0 until then",
            m.send_buffer.clone(),
        );
        m
    }

    /// Records the send buffer the kernel reports for an accepted socket.
    pub(crate) fn send_buffer_is(&self, bytes: usize) {
        self.send_buffer
            .set(i64::try_from(bytes).unwrap_or(i64::MAX));
    }

    pub(crate) fn timed_out(&self, why: Timeout) {
        self.timeouts.get_or_create(&[("kind", why.as_str())]).inc();
    }

    pub(crate) fn malformed(&self, status: u16) {
        let label = match status {
            400 => "400",
            414 => "414",
            431 => "431",
            _ => "other",
        };
        self.malformed.get_or_create(&[("status", label)]).inc();
    }
}

/// What a connection is doing, as far as the front door's bounds care.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Activity {
    /// Waiting for a request head; `first`: no request yet on this connection.
    Waiting { since: Instant, first: bool },
    /// Bytes of a request head arrived; the head must be whole by `since` plus the
    /// header-read timeout.
    Head { since: Instant },
    /// A request is being served.
    Busy,
    /// Upgraded to a WebSocket: the manager's bounds apply from now on.
    Upgraded,
    /// Chosen to make room; its task closes it.
    Evicting,
}

/// What the front door and a connection's task share about it.
#[derive(Debug)]
struct Shared {
    activity: Mutex<Activity>,
    evict: Notify,
}

impl Shared {
    fn activity(&self) -> MutexGuard<'_, Activity> {
        // Every update is one assignment: a poisoned lock still holds a whole value.
        self.activity.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Moves to `next`, unless the connection was chosen to make room: that is final (its
    /// slot is counted as going away until the socket closes).
    fn set(&self, next: Activity) {
        let mut a = self.activity();
        if *a != Activity::Evicting {
            *a = next;
        }
    }

    /// Marks the connection for eviction when it serves nothing.
    fn try_evict(&self) -> bool {
        let mut a = self.activity();
        if matches!(*a, Activity::Waiting { .. } | Activity::Head { .. }) {
            *a = Activity::Evicting;
            drop(a);
            self.evict.notify_one();
            true
        } else {
            false
        }
    }
}

#[derive(Debug, Default)]
struct Slots {
    open: usize,
    /// Connections chosen to make room whose sockets are not closed yet.
    evicting: usize,
    next_id: u64,
    /// Connections still speaking HTTP, oldest first (ids grow).
    http: BTreeMap<u64, Arc<Shared>>,
}

/// Every open TCP connection of one server.
#[derive(Debug)]
pub(crate) struct FrontDoor {
    pub(crate) limits: DoorLimits,
    pub(crate) metrics: DoorMetrics,
    slots: Mutex<Slots>,
}

impl FrontDoor {
    pub(crate) fn new(limits: DoorLimits, metrics: DoorMetrics) -> Arc<FrontDoor> {
        Arc::new(FrontDoor {
            limits: DoorLimits {
                max_tcp_connections: limits.max_tcp_connections.max(1),
                ..limits
            },
            metrics,
            slots: Mutex::new(Slots::default()),
        })
    }

    fn slots(&self) -> MutexGuard<'_, Slots> {
        self.slots.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A slot for a connection just accepted, making room by closing the oldest idle HTTP
    /// connection when the cap is reached; `None` when every open connection is busy.
    pub(crate) fn admit(self: &Arc<Self>) -> Option<ConnSlot> {
        let now = Instant::now();
        let mut slots = self.slots();
        if slots.open - slots.evicting >= self.limits.max_tcp_connections {
            // Ids grow, so the first idle one found is the oldest.
            if !slots.http.values().any(|c| c.try_evict()) {
                drop(slots);
                self.metrics.refused.inc();
                return None;
            }
            slots.evicting += 1;
            self.metrics.evicted.inc();
        }
        let id = slots.next_id;
        slots.next_id += 1;
        slots.open += 1;
        let shared = Arc::new(Shared {
            activity: Mutex::new(Activity::Waiting {
                since: now,
                first: true,
            }),
            evict: Notify::new(),
        });
        slots.http.insert(id, shared.clone());
        drop(slots);
        self.metrics.open.inc();
        Some(Arc::new(Track {
            id,
            door: self.clone(),
            shared,
        }))
    }

    fn release(&self, id: u64, evicted: bool) {
        let mut slots = self.slots();
        slots.open -= 1;
        if evicted {
            slots.evicting -= 1;
        }
        slots.http.remove(&id);
        drop(slots);
        self.metrics.open.dec();
    }

    fn no_longer_http(&self, id: u64) {
        self.slots().http.remove(&id);
    }

    /// Open TCP connections.
    #[cfg(test)]
    fn open(&self) -> usize {
        self.slots().open
    }
}

/// One open TCP connection's place at the front door; the socket holds it, and dropping
/// the last handle gives the place back.
pub(crate) type ConnSlot = Arc<Track>;

/// See [`ConnSlot`].
#[derive(Debug)]
pub(crate) struct Track {
    id: u64,
    door: Arc<FrontDoor>,
    shared: Arc<Shared>,
}

impl Drop for Track {
    fn drop(&mut self) {
        let evicted = *self.shared.activity() == Activity::Evicting;
        self.door.release(self.id, evicted);
    }
}

impl Track {
    pub(crate) fn door(&self) -> &FrontDoor {
        &self.door
    }

    /// Bytes arrived: a request head has begun.
    pub(crate) fn heard(&self) {
        let mut a = self.shared.activity();
        match *a {
            // A new connection's first head is timed from the accept.
            Activity::Waiting { since, first: true } => *a = Activity::Head { since },
            Activity::Waiting { first: false, .. } => {
                *a = Activity::Head {
                    since: Instant::now(),
                }
            }
            _ => {}
        }
    }

    /// A request head was read: the connection is busy until the guard is dropped.
    pub(crate) fn begin_request(self: &Arc<Self>) -> RequestGuard {
        self.shared.set(Activity::Busy);
        RequestGuard(self.clone())
    }

    /// Whether a request is being served (an answer written now is the service's own).
    pub(crate) fn serving(&self) -> bool {
        matches!(*self.shared.activity(), Activity::Busy | Activity::Upgraded)
    }

    /// The connection became a WebSocket, or serves an event stream (`/v1/stream`, whose
    /// answer is the connection's last): no HTTP timeout applies and it is never evicted.
    pub(crate) fn upgraded(&self) {
        self.shared.set(Activity::Upgraded);
        self.door.no_longer_http(self.id);
    }

    /// When the connection is to be closed, and by which timeout; `None` while it serves
    /// a request (or is not HTTP any more).
    pub(crate) fn deadline(&self) -> Option<(Instant, Timeout)> {
        let l = &self.door.limits;
        match *self.shared.activity() {
            Activity::Waiting { since, first: true } | Activity::Head { since } => {
                Some((since + l.header_read_timeout, Timeout::HeaderRead))
            }
            Activity::Waiting {
                since,
                first: false,
            } => Some((since + l.idle_timeout, Timeout::Idle)),
            Activity::Busy | Activity::Upgraded | Activity::Evicting => None,
        }
    }

    /// Closes the connection now: its task drops the socket, whatever hyper is doing with
    /// it. For an event stream whose writes stopped within the write timeout, which hyper,
    /// writing the answer's body itself, cannot time out.
    pub(crate) fn cut(&self) {
        self.shared.evict.notify_one();
    }

    /// Resolves once the front door chose this connection to make room, or it was
    /// [`Track::cut`].
    ///
    /// # Cancel safety
    /// Cancel safe: the eviction is remembered until this is awaited again.
    pub(crate) async fn evicted(&self) {
        self.shared.evict.notified().await;
    }
}

/// A request in progress; dropping it makes the connection idle again (unless it was
/// upgraded).
#[derive(Debug)]
pub(crate) struct RequestGuard(Arc<Track>);

impl Drop for RequestGuard {
    fn drop(&mut self) {
        let mut a = self.0.shared.activity();
        if *a == Activity::Busy {
            *a = Activity::Waiting {
                since: Instant::now(),
                first: false,
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn door(cap: usize) -> Arc<FrontDoor> {
        FrontDoor::new(
            DoorLimits {
                max_tcp_connections: cap,
                header_read_timeout: Duration::from_secs(10),
                idle_timeout: Duration::from_secs(60),
                body_read_timeout: Duration::from_secs(30),
                max_header_bytes: 16 * 1024,
                max_uri_bytes: 8 * 1024,
                socket_send_buffer: 0,
            },
            DoorMetrics::default(),
        )
    }

    #[tokio::test(start_paused = true)]
    async fn at_the_cap_the_oldest_idle_connection_makes_room() {
        let door = door(3);
        let busy = door.admit().expect("room");
        let _serving = busy.begin_request();
        let socket = door.admit().expect("room");
        socket.upgraded();
        let silent = door.admit().expect("room");
        assert_eq!(door.open(), 3);
        // Full: the silent one (neither busy nor a WebSocket) is chosen.
        let newcomer = door.admit().expect("room made");
        assert!(matches!(
            tokio::time::timeout(Duration::from_millis(1), silent.evicted()).await,
            Ok(())
        ));
        assert_eq!(door.metrics.evicted.get(), 1);
        // Until its socket closes, the evicted one is not chosen twice: the newcomer is.
        let third = door.admit().expect("the newcomer makes room");
        drop(silent);
        drop(newcomer);
        assert_eq!(door.open(), 3);
        // Everything busy: refused.
        let third_serving = third.begin_request();
        assert!(door.admit().is_none());
        assert_eq!(door.metrics.refused.get(), 1);
        drop(third_serving);
        drop(third);
        assert!(door.admit().is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn deadlines_follow_what_the_connection_is_doing() {
        let door = door(10);
        let t = door.admit().expect("room");
        let start = Instant::now();
        assert_eq!(
            t.deadline(),
            Some((start + Duration::from_secs(10), Timeout::HeaderRead))
        );
        tokio::time::advance(Duration::from_secs(3)).await;
        // The first head is timed from the accept, not its first byte.
        t.heard();
        assert_eq!(
            t.deadline(),
            Some((start + Duration::from_secs(10), Timeout::HeaderRead))
        );
        let request = t.begin_request();
        assert_eq!(t.deadline(), None);
        tokio::time::advance(Duration::from_secs(5)).await;
        drop(request);
        let idle_since = Instant::now();
        assert_eq!(
            t.deadline(),
            Some((idle_since + Duration::from_secs(60), Timeout::Idle))
        );
        tokio::time::advance(Duration::from_secs(20)).await;
        t.heard();
        assert_eq!(
            t.deadline(),
            Some((
                Instant::now() + Duration::from_secs(10),
                Timeout::HeaderRead
            ))
        );
        t.upgraded();
        assert_eq!(t.deadline(), None);
    }
}
