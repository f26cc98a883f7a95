//! The broker seam: who owns each user's ordered, resumable stream.
//!
//! The broker assigns `seq`, `ts` and (when none was given) `event_id`, answers a repeated
//! `event_id` with its first acceptance, keeps bounded history, and delivers each accepted
//! event to the subscribers of its user. The manager never delivers straight from `emit`:
//! with a broker shared by many nodes, that would deliver twice.

use std::fmt;
use std::sync::Arc;

use agentwire_protocol::{Epoch, EventId, EventType, Seq, Timestamp, UserId};
use async_trait::async_trait;
use bytes::Bytes;

/// An event handed to the broker: already validated and serialized once.
#[derive(Debug, Clone)]
pub struct NewEvent {
    /// The event's type.
    pub event_type: EventType,
    /// The publisher's id for the event; the broker assigns a UUIDv7 when `None`.
    pub event_id: Option<EventId>,
    /// The event's JSON without its stream fields: an object holding `thread_id`, `run_id`
    /// and `data` (see [`compose_frame`]).
    pub body: Bytes,
}

/// Where the broker put a published event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    /// Its position in the user's stream.
    pub seq: Seq,
    /// Its id.
    pub event_id: EventId,
    /// When it was first accepted.
    pub ts: Timestamp,
    /// The stream it belongs to.
    pub epoch: Epoch,
    /// `true` when the `event_id` had already been accepted: nothing new was stored or
    /// delivered, and `seq`/`ts` are those of the first acceptance.
    pub duplicate: bool,
}

/// An accepted event as stored and delivered: the complete frame a client receives.
#[derive(Clone, PartialEq, Eq)]
pub struct StoredEvent {
    /// Position in the user's stream.
    pub seq: Seq,
    /// The event's id.
    pub event_id: EventId,
    /// When it was accepted.
    pub ts: Timestamp,
    /// The event's type.
    pub event_type: EventType,
    /// The stream it belongs to.
    pub epoch: Epoch,
    /// The frame, serialized once and shared by every queue it goes to.
    pub frame: Bytes,
}

impl fmt::Debug for StoredEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoredEvent")
            .field("seq", &self.seq)
            .field("event_id", &self.event_id)
            .field("event_type", &self.event_type)
            .field("epoch", &self.epoch)
            .field("frame_bytes", &self.frame.len())
            .finish_non_exhaustive()
    }
}

/// A range of a user's history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct History {
    /// The stream's current epoch.
    pub epoch: Epoch,
    /// The newest `seq` in the stream (`Seq::ZERO` when nothing was ever accepted).
    pub last_seq: Seq,
    /// When events after the requested `after` are no longer held: the first and last
    /// missing `seq`. `events` continue right after it.
    pub gap: Option<(Seq, Seq)>,
    /// Events with `seq > after` (and past the gap), oldest first, at most the requested
    /// limit.
    pub events: Vec<StoredEvent>,
}

/// Why a broker operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BrokerError {
    /// The broker cannot be reached or is overloaded; the same call may succeed later.
    #[error("broker unavailable: {0}")]
    Unavailable(String),
    /// The call timed out; it may or may not have taken effect (a publish retried with
    /// the same `event_id` is safe).
    #[error("broker timed out: {0}")]
    Timeout(String),
    /// The broker refused the request; retrying cannot help.
    #[error("broker refused the request: {0}")]
    Rejected(String),
    /// The broker is shutting down.
    #[error("broker closed")]
    Closed,
}

impl BrokerError {
    /// Whether retrying the same call may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, BrokerError::Unavailable(_) | BrokerError::Timeout(_))
    }
}

/// Receives the events a broker delivers. Called on the broker's delivery path, so it
/// must not block: the manager's implementation only pushes into bounded queues.
pub trait Subscriber: Send + Sync + 'static {
    /// One accepted event of `user`. Per user, events arrive in `seq` order; a subscriber
    /// must tolerate a repeated or a skipped `seq` (it can refill a skip from history).
    fn deliver(&self, user: &UserId, event: &StoredEvent);
}

/// Sizes a broker reports for stats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BrokerStats {
    /// Events held in history.
    pub history_events: u64,
    /// Bytes of frames held in history.
    pub history_bytes: u64,
    /// Users whose stream the broker holds.
    pub users: u64,
    /// Events trimmed from history because a bound was reached (count, age or bytes).
    pub history_trimmed: u64,
    /// Publishes answered as duplicates of an earlier `event_id`.
    pub duplicates: u64,
}

/// Owner of every user's stream. See the module docs for the contract; the conformance
/// suite (feature `conformance`) checks it for an implementation.
///
/// `subscribe`/`unsubscribe` are counted per (user, subscriber): a subscriber subscribed
/// twice receives each event once and stays subscribed until unsubscribed twice.
#[async_trait]
pub trait Broker: Send + Sync + 'static {
    /// Accepts `event` into `user`'s stream and delivers it to the user's subscribers; or,
    /// when its `event_id` was already accepted, answers the first acceptance again.
    ///
    /// # Errors
    /// [`BrokerError`]; on a transient one the event may or may not have been accepted.
    async fn publish(&self, user: &UserId, event: NewEvent) -> Result<Accepted, BrokerError>;

    /// Starts delivering `user`'s events to `subscriber`.
    ///
    /// # Errors
    /// [`BrokerError`] when the subscription could not be made.
    async fn subscribe(
        &self,
        user: &UserId,
        subscriber: Arc<dyn Subscriber>,
    ) -> Result<(), BrokerError>;

    /// Undoes one `subscribe`. Unsubscribing what is not subscribed is a no-op.
    ///
    /// # Errors
    /// [`BrokerError`] when the broker could not be told.
    async fn unsubscribe(
        &self,
        user: &UserId,
        subscriber: &Arc<dyn Subscriber>,
    ) -> Result<(), BrokerError>;

    /// Up to `limit` events of `user` with `seq > after`, and the stream's epoch and
    /// newest `seq`.
    ///
    /// # Errors
    /// [`BrokerError`] when history could not be read.
    async fn history(
        &self,
        user: &UserId,
        after: Seq,
        limit: usize,
    ) -> Result<History, BrokerError>;

    /// Whether the broker can accept events now (for readiness checks).
    ///
    /// # Errors
    /// The [`BrokerError`] that makes it unavailable.
    async fn health(&self) -> Result<(), BrokerError> {
        Ok(())
    }

    /// Sizes for stats, from what this process knows without a round trip.
    fn stats(&self) -> BrokerStats {
        BrokerStats::default()
    }

    /// Drops what the bounds no longer allow (old events, idle users). Called periodically
    /// by the manager; brokers whose store expires data by itself keep the default.
    fn sweep(&self) {}
}

/// Whether two subscriber handles are the same subscriber.
pub(crate) fn same_subscriber(a: &Arc<dyn Subscriber>, b: &Arc<dyn Subscriber>) -> bool {
    std::ptr::addr_eq(Arc::as_ptr(a), Arc::as_ptr(b))
}

/// Builds the frame a client receives from an event's serialized body and its stream
/// fields: `{"type":…,"seq":…,"event_id":…,"ts":…,` followed by the body's fields.
/// Every broker builds frames with this function, so a frame is byte-identical whichever
/// broker accepted it.
pub fn compose_frame(
    event_type: EventType,
    seq: Seq,
    event_id: &EventId,
    ts: Timestamp,
    body: &[u8],
) -> Bytes {
    use std::io::Write as _;
    let rest = body.strip_prefix(b"{").unwrap_or(body);
    // Written straight into the frame (no intermediate strings): this runs once per
    // accepted event. Writing into a `Vec` cannot fail.
    let mut out = Vec::with_capacity(96 + event_id.as_str().len() + rest.len());
    out.extend_from_slice(b"{\"type\":\"");
    out.extend_from_slice(event_type.as_str().as_bytes());
    let _ = write!(out, "\",\"seq\":{},\"event_id\":", seq.get());
    let _ = serde_json::to_writer(&mut out, event_id);
    let _ = write!(out, ",\"ts\":{}", ts.as_millis());
    if rest.first().is_some_and(|&b| b != b'}') {
        out.push(b',');
    }
    out.extend_from_slice(rest);
    Bytes::from(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use agentwire_protocol::{AgentStarted, Event, ServerFrame};

    #[test]
    fn composed_frames_decode_as_the_event() {
        let event = Event::new(
            Some("t1".parse().expect("id")),
            Some("r1".parse().expect("id")),
            AgentStarted {
                agent_name: Some("triage".into()),
                extra: Default::default(),
            },
        );
        let body = crate::manager::serialize_body(&event);
        let id: EventId = "e-1".parse().expect("id");
        let frame = compose_frame(event.event_type(), Seq(7), &id, Timestamp(99), &body);
        match ServerFrame::decode(&frame).expect("decodes") {
            ServerFrame::Event(env) => {
                assert_eq!(env.seq, Seq(7));
                assert_eq!(env.event_id, id);
                assert_eq!(env.ts, Timestamp(99));
                assert_eq!(env.event, event);
            }
            other => panic!("{other:?}"),
        }
    }
}
