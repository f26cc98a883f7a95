//! The broker seam: who owns each user's ordered, resumable stream.
//!
//! The broker assigns `seq`, `ts` and (when none was given) `event_id`, answers a repeated
//! `event_id` with its first acceptance, keeps bounded history, and delivers each accepted
//! event to the subscribers of its user. The manager never delivers straight from `emit`:
//! with a broker shared by many nodes, that would deliver twice. The rules every broker
//! keeps are written in [`Broker`]'s docs.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use agentwire_protocol::{Epoch, EventId, EventType, RunId, RunViolation, Seq, Timestamp, UserId};
use async_trait::async_trait;
use bytes::Bytes;

use crate::runs::{RunGuard, RunLimit, RunPresence, RunStats};

/// An event handed to the broker: already validated and serialized once.
///
/// Built with [`NewEvent::new`], which computes the [`EventDigest`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct NewEvent {
    /// The event's type.
    pub event_type: EventType,
    /// The publisher's id for the event; the broker assigns a UUIDv7 when `None`.
    pub event_id: Option<EventId>,
    /// The event's JSON without its stream fields: an object holding `thread_id`, `run_id`
    /// and `data` (see [`compose_frame`]).
    pub body: Bytes,
    /// What the event is, as a stable hash of `event_type` and `body`: an `event_id`
    /// accepted with one digest and published again with another is refused
    /// ([`BrokerError::Conflict`]).
    pub digest: EventDigest,
    /// The run check the event asks for, applied atomically with its append (rule 11 of
    /// [`Broker`]); `None` for an event the broker appends whatever its run's state.
    pub run: Option<RunGuard>,
}

impl NewEvent {
    /// An event of `event_type` with serialized `body`, under the publisher's `event_id`
    /// (or one the broker assigns).
    pub fn new(event_type: EventType, event_id: Option<EventId>, body: Bytes) -> Self {
        let digest = EventDigest::of(event_type, &body);
        NewEvent {
            event_type,
            event_id,
            body,
            digest,
            run: None,
        }
    }

    /// The same event, checked against its run with `guard` (rule 11 of [`Broker`]).
    #[must_use]
    pub fn with_run(mut self, guard: RunGuard) -> Self {
        self.run = Some(guard);
        self
    }

    /// An event whose digest was computed before (the manager computes it once per
    /// prepared event, however often it is published).
    pub(crate) fn with_digest(
        event_type: EventType,
        event_id: Option<EventId>,
        body: Bytes,
        digest: EventDigest,
        run: Option<RunGuard>,
    ) -> Self {
        NewEvent {
            event_type,
            event_id,
            body,
            digest,
            run,
        }
    }
}

/// A stable 64-bit hash of an event: XXH3-64 (seed 0) of the type's wire name, one 0 byte,
/// and the serialized body.
///
/// The same on every node, build and platform, so brokers shared by many nodes can store
/// it and compare it: `Display`/`FromStr` use 16 lowercase hex digits. It tells a retry
/// (same id, same event) from a reuse (same id, another event); it is not a security
/// measure — a publisher who can choose bodies can already choose ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EventDigest(pub u64);

impl EventDigest {
    /// The digest of an event of `event_type` whose serialized body is `body`.
    pub fn of(event_type: EventType, body: &[u8]) -> Self {
        let name = event_type.as_str().as_bytes();
        if name.len() + 1 + body.len() <= DIGEST_SCRATCH_BYTES {
            // Runs for every published event: the one-shot hash of the three parts copied
            // into this thread's scratch buffer costs about half the streaming hasher's
            // setup and buffering, for the same value.
            let one_shot = DIGEST_SCRATCH.try_with(|scratch| {
                let mut scratch = scratch.try_borrow_mut().ok()?;
                scratch.clear();
                scratch.extend_from_slice(name);
                scratch.push(0);
                scratch.extend_from_slice(body);
                Some(xxhash_rust::xxh3::xxh3_64(&scratch))
            });
            if let Ok(Some(digest)) = one_shot {
                return EventDigest(digest);
            }
        }
        EventDigest::streamed(event_type, body)
    }

    /// The same value through the streaming hasher, for a body of any size.
    fn streamed(event_type: EventType, body: &[u8]) -> Self {
        let mut hasher = xxhash_rust::xxh3::Xxh3Default::new();
        hasher.update(event_type.as_str().as_bytes());
        hasher.update(&[0]);
        hasher.update(body);
        EventDigest(hasher.digest())
    }
}

/// Largest event (type, 0 and body) [`EventDigest::of`] hashes in one piece, copied into a
/// per-thread scratch buffer of this size; larger ones go through the streaming hasher, so
/// the buffer never grows past it.
const DIGEST_SCRATCH_BYTES: usize = 4096;

thread_local! {
    static DIGEST_SCRATCH: std::cell::RefCell<Vec<u8>> =
        std::cell::RefCell::new(Vec::with_capacity(DIGEST_SCRATCH_BYTES));
}

impl fmt::Display for EventDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// Why a string is not an [`EventDigest`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("an event digest is 16 lowercase hex digits")]
#[non_exhaustive]
pub struct DigestParseError;

impl std::str::FromStr for EventDigest {
    type Err = DigestParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let lower_hex = |b: &u8| b.is_ascii_digit() || (b'a'..=b'f').contains(b);
        if s.len() != 16 || !s.as_bytes().iter().all(lower_hex) {
            return Err(DigestParseError);
        }
        u64::from_str_radix(s, 16)
            .map(EventDigest)
            .map_err(|_| DigestParseError)
    }
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

/// What went wrong beneath a [`BrokerError`]: a message for people, and the underlying
/// error when there is one (returned by [`std::error::Error::source`] of the
/// `BrokerError`). Two causes are equal when their messages are.
#[derive(Clone)]
pub struct Cause {
    message: String,
    source: Option<Arc<dyn std::error::Error + Send + Sync + 'static>>,
}

impl Cause {
    /// A cause with a message and no underlying error.
    pub fn new(message: impl Into<String>) -> Self {
        Cause {
            message: message.into(),
            source: None,
        }
    }

    /// A cause with a message and the error beneath it.
    pub fn with_source(
        message: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Cause {
            message: message.into(),
            source: Some(Arc::new(source)),
        }
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The underlying error, if any.
    pub fn source(&self) -> Option<&(dyn std::error::Error + Send + Sync + 'static)> {
        self.source.as_deref()
    }
}

impl fmt::Debug for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Cause");
        d.field("message", &self.message);
        if let Some(source) = &self.source {
            d.field("source", source);
        }
        d.finish()
    }
}

impl fmt::Display for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl PartialEq for Cause {
    fn eq(&self, other: &Self) -> bool {
        self.message == other.message
    }
}

impl Eq for Cause {}

impl From<&str> for Cause {
    fn from(message: &str) -> Self {
        Cause::new(message)
    }
}

impl From<String> for Cause {
    fn from(message: String) -> Self {
        Cause::new(message)
    }
}

/// Why a broker operation failed.
///
/// Equality compares the variant and the message, not the underlying error.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum BrokerError {
    /// The broker cannot be reached or is overloaded; the same call may succeed later.
    Unavailable(Cause),
    /// The call timed out; it may or may not have taken effect (a publish retried with
    /// the same `event_id` is safe).
    Timeout(Cause),
    /// The broker refused the request; retrying cannot help.
    Rejected(Cause),
    /// The broker is shutting down.
    Closed,
    /// The `event_id` was accepted (as `seq`) for an event with another
    /// [`EventDigest`]: the id was reused for a different event. Nothing was stored;
    /// retrying cannot help.
    Conflict {
        /// The reused id.
        event_id: EventId,
        /// Where the id's first event sits in the stream.
        seq: Seq,
    },
    /// The event breaks its run's lifecycle, checked with its [`RunGuard`] (rule 11 of
    /// [`Broker`]). Nothing was stored; retrying cannot help.
    Violation(RunViolation),
    /// The event's run does not fit the broker's run-state bounds: a new run (or a tool
    /// call of a run) when the bound is full of runs in progress. Nothing was stored;
    /// retrying helps only once runs have ended, so it is not transient.
    TooManyRuns(RunLimit),
    /// A stall claim ([`RunGuard::if_stalled`], rule 12 of [`Broker`]) found its run
    /// alive: it had an event or a heartbeat within its stall timeout. Nothing was stored.
    NotStalled {
        /// How long until the run would stall if nothing more comes; `None` when the run
        /// never stalls (its own stall timeout is 0).
        due_in: Option<Duration>,
    },
}

impl BrokerError {
    /// Whether retrying the same call may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, BrokerError::Unavailable(_) | BrokerError::Timeout(_))
    }

    /// [`BrokerError::Unavailable`] with the error that caused it.
    pub fn unavailable(
        message: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        BrokerError::Unavailable(Cause::with_source(message, source))
    }

    /// [`BrokerError::Timeout`] with the error that caused it.
    pub fn timeout(
        message: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        BrokerError::Timeout(Cause::with_source(message, source))
    }

    /// [`BrokerError::Rejected`] with the error that caused it.
    pub fn rejected(
        message: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        BrokerError::Rejected(Cause::with_source(message, source))
    }
}

impl fmt::Display for BrokerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BrokerError::Unavailable(c) => write!(f, "broker unavailable: {c}"),
            BrokerError::Timeout(c) => write!(f, "broker timed out: {c}"),
            BrokerError::Rejected(c) => write!(f, "broker refused the request: {c}"),
            BrokerError::Closed => f.write_str("broker closed"),
            BrokerError::Conflict { event_id, seq } => write!(
                f,
                "event_id {event_id} was already accepted as seq {seq} for a different event",
                seq = seq.get()
            ),
            BrokerError::Violation(v) => write!(f, "run lifecycle violation: {v}"),
            BrokerError::TooManyRuns(limit) => {
                write!(f, "no room for the run's state: {limit}")
            }
            BrokerError::NotStalled { due_in: Some(d) } => {
                write!(
                    f,
                    "the run is not stalled: it stalls in {} ms",
                    d.as_millis()
                )
            }
            BrokerError::NotStalled { due_in: None } => {
                f.write_str("the run is not stalled: it never stalls")
            }
        }
    }
}

impl std::error::Error for BrokerError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            BrokerError::Unavailable(c) | BrokerError::Timeout(c) | BrokerError::Rejected(c) => {
                c.source().map(|e| e as &(dyn std::error::Error + 'static))
            }
            _ => None,
        }
    }
}

/// Why [`Broker::publish_many`] did not accept a whole batch.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{error} ({} of the batch known to be accepted)", accepted.len())]
#[non_exhaustive]
pub struct BatchError {
    /// The acceptances of the batch's first events that are known to have been accepted,
    /// in order (empty when the broker refused the whole batch).
    pub accepted: Vec<Accepted>,
    /// What stopped the batch.
    #[source]
    pub error: BrokerError,
    /// The index in the batch of the event the broker refused, when a refusal of one
    /// event ([`BrokerError::Conflict`], [`BrokerError::Violation`],
    /// [`BrokerError::TooManyRuns`]) stopped it.
    pub refused_at: Option<usize>,
}

impl BatchError {
    /// A batch error after `accepted`, naming no event.
    pub fn new(accepted: Vec<Accepted>, error: BrokerError) -> Self {
        BatchError {
            accepted,
            error,
            refused_at: None,
        }
    }

    /// The refusal of a whole batch because of its event `index`: nothing accepted.
    pub fn refused(index: usize, error: BrokerError) -> Self {
        BatchError {
            accepted: Vec::new(),
            error,
            refused_at: Some(index),
        }
    }
}

/// Receives the events a broker delivers. Called on the broker's delivery path, so it
/// must not block: the manager's implementation only pushes into bounded queues.
pub trait Subscriber: Send + Sync + 'static {
    /// One accepted event of `user`. Per user, events arrive in `seq` order; a subscriber
    /// must tolerate a repeated or a skipped `seq` (it can refill a skip from history).
    fn deliver(&self, user: &UserId, event: &StoredEvent);

    /// The broker may have missed deliveries of `user`'s events to this subscriber (its
    /// subscription broke and was restored, or a message was lost on the way); called
    /// once the subscription is in effect again, so every event accepted from now on is
    /// delivered, and what was missed is in history. The manager's implementation catches
    /// every live connection of `user` up from history. Never blocks. The default does
    /// nothing.
    fn resync(&self, user: &UserId) {
        let _ = user;
    }
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
    /// Publishes refused because their `event_id` was accepted for a different event.
    pub conflicts: u64,
    /// Event ids remembered for deduplication (in history or in the dedupe window).
    pub dedupe_ids: u64,
    /// The run state kept for guarded events, and what it refused (rule 11).
    pub runs: RunStats,
}

/// Owner of every user's stream. The conformance suite (feature `conformance`, module
/// `conformance`) has one property per rule below and runs against every implementation.
///
/// # The contract
/// 1. **Order.** Per user, accepted events get `seq` 1, 2, 3… with no hole, in the order
///    the broker accepted them, independently of other users; every subscriber of the
///    user is handed them in that order, each once (a subscriber tolerates a repeat or a
///    skip, see [`Subscriber::deliver`], but a conforming broker gives neither unless its
///    subscription broke, see rule 4).
/// 2. **Subscribe is in effect when it returns.** Every event accepted after
///    [`Broker::subscribe`] returns (the manager subscribes, then reads history: nothing
///    falls between the two), and before the [`Broker::unsubscribe`] call undoing that
///    subscription is made, is delivered to that subscriber — whatever other
///    subscriptions of the same (user, subscriber) are made or undone meanwhile, even by
///    calls that end first. Once [`Broker::unsubscribe`] has undone a subscriber's last
///    subscription of a user, no event of the user accepted afterwards is delivered to it;
///    an event accepted while it held no subscription may be delivered or not.
///    Subscriptions are counted per (user, subscriber): a subscriber subscribed twice
///    receives each event once and stays subscribed until unsubscribed twice. ("Accepted
///    before" a call: its publish returned before the call was made.)
/// 3. **History holds every event a subscriber was handed.** History is written before
///    or atomically with delivery, so a subscriber that reads history after a delivery
///    finds the delivered event there (until a bound trims it).
/// 4. **Resync.** A broker that may have missed a delivery (its pub/sub connection dropped
///    and was restored, a message was lost) calls [`Subscriber::resync`] for each affected
///    user once the subscription is in effect again. A broker that cannot lose a delivery
///    never calls it.
/// 5. **Dedupe.** An `event_id` accepted once is answered with its first acceptance
///    (`duplicate: true`, same `seq`, `ts`, `epoch`; nothing stored or delivered) for as
///    long as it is inside the *dedupe window*: at least while its event is held in
///    history, and for a configured time after its acceptance (e.g.
///    [`crate::HistoryConfig::dedupe_window`]); a broker may forget it earlier only under
///    its memory bound, never before its event is trimmed. [`Broker::lookup`] answers
///    from the same window.
/// 6. **Digest conflict.** An `event_id` inside the dedupe window published again with a
///    different [`EventDigest`] is refused with [`BrokerError::Conflict`]; nothing is
///    stored or delivered.
/// 7. **Epochs.** A stream's epoch stays the same while the stream lives; a stream whose
///    data was lost (every event and id expired and no subscriber, or a store restarted
///    empty) starts again at `seq` 1 under a new epoch, so a client's old `seq` never
///    names a new event.
/// 8. **Bounds.** History is bounded (per user by count and age, in total by bytes, or as
///    the implementation documents); [`Broker::history`] reports what it no longer holds
///    as a gap, never a silent jump.
/// 9. **Batches.** [`Broker::publish_many`] accepts one user's events in the given order
///    with consecutive seqs, all or nothing under a refusal (see there).
/// 10. **Errors.** [`BrokerError::is_transient`] errors may be retried; a publish that
///     failed transiently may or may not have been accepted, and retrying it with the same
///     `event_id` is safe (rule 5). [`BrokerError::Rejected`],
///     [`BrokerError::Conflict`], [`BrokerError::Violation`] and
///     [`BrokerError::TooManyRuns`] are final for the call.
/// 11. **Run lifecycle, atomic with the append.** An event with a [`RunGuard`]
///     ([`NewEvent::run`]) is checked against the state of its run — `(user, run_id)` —
///     and its [`RunStep`](agentwire_protocol::RunStep) applied, in the same atomic step
///     as its append, by the rule of [`agentwire_protocol::RunState::apply_step`]:
///     - *dedupe first*: an event answered as a duplicate (rule 5) is not checked again
///       and changes no run; a conflict (rule 6) is refused before its run is looked at;
///     - a step that breaks the run is refused with [`BrokerError::Violation`] and stores
///       nothing; the run stays as it was;
///     - in [`Broker::publish_many`] the guarded events of a batch are checked in order,
///       each against the state the earlier ones leave, and the first refusal (of any
///       kind, in batch order) refuses the whole batch ([`BatchError::refused_at`]);
///     - concurrent publishes for one run are checked one after the other, on every node:
///       of many `agent_started` for one run, exactly one is accepted;
///     - bounds ([`RunLimits`](crate::RunLimits)): a run in progress is never evicted,
///       only forgotten its `ttl` after its last event; a finished run is remembered
///       (answering `AfterTerminal`) until a bound needs its room — finished runs go first,
///       oldest first — or its `ttl` passes; a new run, or a tool call, that does not fit
///       is refused with [`BrokerError::TooManyRuns`], storing nothing; one publisher's
///       runs in progress are bounded by its share ([`RunGuard::owner`]). A forgotten run
///       starts over: its next event must be `agent_started`.
///
///     Events without a guard are appended whatever their run's state, and change no
///     run.
/// 12. **Stall claims and heartbeats, atomic with the run.** A broker keeps, with each run
///     in progress, when its last guarded event or heartbeat ([`Broker::heartbeat_run`])
///     came — by one clock for every node — and the run's own stall timeout
///     ([`RunGuard::stall_timeout`], set by its `Start`). A guarded event that is a stall
///     claim ([`RunGuard::if_stalled`]) is checked in the same atomic step as rule 11:
///     for a run in progress, when the run's own timeout (else the claim's) has not passed
///     since that moment, or the run's own timeout is zero, the claim is refused with
///     [`BrokerError::NotStalled`] (storing nothing); otherwise it is checked and applied
///     as any guarded event. So of many claims racing to end one stalled run, on any
///     number of nodes, exactly one is accepted and the others are refused as
///     `AfterTerminal`; and a claim never ends a run that had a sign of life within its
///     timeout. A heartbeat changes the moment only: it appends nothing, and does not
///     extend the run's `ttl`.
#[async_trait]
pub trait Broker: Send + Sync + 'static {
    /// Accepts `event` into `user`'s stream and delivers it to the user's subscribers; or,
    /// when its `event_id` is inside the dedupe window, answers the first acceptance again
    /// (or refuses it with [`BrokerError::Conflict`] when its digest differs).
    ///
    /// # Errors
    /// [`BrokerError`]; on a transient one the event may or may not have been accepted.
    async fn publish(&self, user: &UserId, event: NewEvent) -> Result<Accepted, BrokerError>;

    /// Accepts `events` of one user in the given order, with consecutive seqs (a
    /// duplicate answers its first acceptance and takes no seq), in one round trip. The
    /// answers are in the order of `events`.
    ///
    /// A refusal of any event (a [`BrokerError::Conflict`], [`BrokerError::Rejected`])
    /// refuses the whole batch and stores nothing. On a transient error, the error's
    /// `accepted` is what is known to be accepted (a prefix of the batch); the rest may or
    /// may not have been, and retrying the whole batch with the same ids is safe.
    ///
    /// The default is a loop over [`Broker::publish`], which is weaker: a refusal in the
    /// middle leaves the prefix before it accepted (reported in `accepted`, the refused
    /// event in `refused_at`), and other publishes of the user may interleave with the
    /// batch. Brokers override it.
    ///
    /// # Errors
    /// [`BatchError`].
    async fn publish_many(
        &self,
        user: &UserId,
        events: Vec<NewEvent>,
    ) -> Result<Vec<Accepted>, BatchError> {
        let mut accepted = Vec::with_capacity(events.len());
        for event in events {
            match self.publish(user, event).await {
                Ok(a) => accepted.push(a),
                Err(error) => {
                    let refused_at = matches!(
                        error,
                        BrokerError::Conflict { .. }
                            | BrokerError::Violation(_)
                            | BrokerError::TooManyRuns(_)
                            | BrokerError::NotStalled { .. }
                    )
                    .then_some(accepted.len());
                    return Err(BatchError {
                        accepted,
                        error,
                        refused_at,
                    });
                }
            }
        }
        Ok(accepted)
    }

    /// Starts delivering `user`'s events to `subscriber`; in effect when it returns.
    ///
    /// # Errors
    /// [`BrokerError`] when the subscription could not be made.
    async fn subscribe(
        &self,
        user: &UserId,
        subscriber: Arc<dyn Subscriber>,
    ) -> Result<(), BrokerError>;

    /// Undoes one `subscribe`, after every event accepted while it was held has been
    /// delivered (rule 2). Unsubscribing what is not subscribed is a no-op.
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

    /// The first acceptance of `event_id` in `user`'s stream (with `duplicate: true`)
    /// while the id is inside the dedupe window; `None` when it is not (never accepted, or
    /// forgotten).
    ///
    /// # Errors
    /// [`BrokerError`] when the broker could not be asked.
    async fn lookup(
        &self,
        user: &UserId,
        event_id: &EventId,
    ) -> Result<Option<Accepted>, BrokerError>;

    /// A sign of life of `user`'s run `run_id` from its publisher (rule 12): a run in
    /// progress counts it as an event for its stall timeout; nothing is appended or
    /// delivered. The default, for a broker that keeps no run state, refuses it.
    ///
    /// # Errors
    /// [`BrokerError`] when the broker could not be asked.
    async fn heartbeat_run(
        &self,
        user: &UserId,
        run_id: &RunId,
    ) -> Result<RunPresence, BrokerError> {
        let _ = (user, run_id);
        Err(BrokerError::Rejected(Cause::new(
            "this broker keeps no run state",
        )))
    }

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
    Bytes::from(frame_bytes(event_type, seq, event_id, ts, body))
}

/// The bytes of [`compose_frame`]'s frame, in a buffer of exactly their length unless the
/// id needed escapes.
fn frame_bytes(
    event_type: EventType,
    seq: Seq,
    event_id: &EventId,
    ts: Timestamp,
    body: &[u8],
) -> Vec<u8> {
    use agentwire_protocol::json::{push_str, push_u64};
    let rest = body.strip_prefix(b"{").unwrap_or(body);
    let comma = rest.first().is_some_and(|&b| b != b'}');
    // Written straight into the frame (no intermediate strings, no formatter): this runs
    // once per accepted event. Its buffer is allocated at the frame's exact length when
    // the id needs no escape (as ids almost never do): `Bytes` then owns the buffer as it
    // is, where a buffer with room to spare costs a second allocation for its reference
    // count.
    let len = br#"{"type":"","seq":,"event_id":"","ts":"#.len()
        + event_type.as_str().len()
        + decimal_digits(seq.get())
        + event_id.as_str().len()
        + decimal_digits(ts.as_millis())
        + usize::from(comma)
        + rest.len();
    let mut out = Vec::with_capacity(len);
    out.extend_from_slice(b"{\"type\":\"");
    out.extend_from_slice(event_type.as_str().as_bytes());
    out.extend_from_slice(b"\",\"seq\":");
    push_u64(&mut out, seq.get());
    out.extend_from_slice(b",\"event_id\":");
    push_str(&mut out, event_id.as_str());
    out.extend_from_slice(b",\"ts\":");
    push_u64(&mut out, ts.as_millis());
    if comma {
        out.push(b',');
    }
    out.extend_from_slice(rest);
    out
}

/// How many decimal digits `n` is written with.
fn decimal_digits(n: u64) -> usize {
    n.checked_ilog10().map_or(1, |d| d as usize + 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use agentwire_protocol::{AgentStarted, Event, ServerFrame};

    /// The digest is XXH3-64 of `type`, 0, body: the expected values come from the
    /// reference C library (libxxhash's `XXH3_64bits`), so every build and node agrees.
    #[test]
    fn digests_are_xxh3_of_type_zero_body() {
        let cases = [
            (
                EventType::Custom,
                r#"{"data":{"name":"n","value":1}}"#,
                "ee8716099b0cb8ef",
            ),
            (EventType::AgentStarted, "{}", "f4ef664a0b383485"),
        ];
        for (t, body, hex) in cases {
            let d = EventDigest::of(t, body.as_bytes());
            assert_eq!(d.to_string(), hex);
            assert_eq!(hex.parse::<EventDigest>(), Ok(d));
            assert_eq!(NewEvent::new(t, None, Bytes::from(body)).digest, d);
        }
        assert_ne!(
            EventDigest::of(EventType::Custom, b"{}"),
            EventDigest::of(EventType::AgentStarted, b"{}"),
            "the type is part of the digest"
        );
        for bad in [
            "",
            "EE8716099B0CB8EF",
            "ee8716099b0cb8e",
            "ee8716099b0cb8eff",
            "+e8716099b0cb8ef",
        ] {
            assert_eq!(bad.parse::<EventDigest>(), Err(DigestParseError), "{bad:?}");
        }
    }

    proptest::proptest! {
        /// The one-shot digest of short events is the streaming hasher's, on either side
        /// of the scratch buffer's size.
        #[test]
        fn one_shot_digests_are_the_streamed_ones(
            body in proptest::collection::vec(proptest::num::u8::ANY, 0..5000),
            t in proptest::sample::select(EventType::ALL.to_vec()),
        ) {
            proptest::prop_assert_eq!(
                EventDigest::of(t, &body),
                EventDigest::streamed(t, &body)
            );
        }
    }

    #[test]
    fn one_shot_digests_match_at_the_scratch_size() {
        for t in EventType::ALL {
            let fits = DIGEST_SCRATCH_BYTES - t.as_str().len() - 1;
            for len in [
                0,
                1,
                16,
                128,
                129,
                240,
                241,
                fits - 1,
                fits,
                fits + 1,
                3 * fits,
            ] {
                let body: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
                assert_eq!(
                    EventDigest::of(t, &body),
                    EventDigest::streamed(t, &body),
                    "{t:?} {len}"
                );
            }
        }
    }

    #[test]
    fn broker_errors_keep_their_cause() {
        use std::error::Error as _;
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset by peer");
        let e = BrokerError::unavailable("redis connection lost", io);
        assert_eq!(e.to_string(), "broker unavailable: redis connection lost");
        let source = e.source().expect("the cause is kept");
        assert_eq!(source.to_string(), "reset by peer");
        assert!(e.is_transient());
        // Equality is variant and message; a plain message compares equal.
        assert_eq!(e, BrokerError::Unavailable("redis connection lost".into()));
        assert_ne!(e, BrokerError::Timeout("redis connection lost".into()));
        assert!(BrokerError::Rejected("no".into()).source().is_none());
        let conflict = BrokerError::Conflict {
            event_id: "e-1".parse().expect("id"),
            seq: Seq(4),
        };
        assert!(!conflict.is_transient());
        assert!(conflict.to_string().contains("seq 4"), "{conflict}");
        let batch = BatchError::new(Vec::new(), e.clone());
        assert_eq!(batch.source().map(|s| s.to_string()), Some(e.to_string()));
    }

    proptest::proptest! {
        /// A composed frame is byte for byte what serde_json writes for the envelope, in a
        /// buffer of exactly its length when the id needs no escape.
        #[test]
        fn composed_frames_are_what_serde_json_writes_for_the_envelope(
            id in "([a-z0-9\"\\\\-]|[^\\p{Cc}]){1,40}",
            seq: u64,
            ts: u64,
            thought: String,
            thread in proptest::option::of("[a-z\"\\\\]{1,8}"),
        ) {
            use agentwire_protocol::{AgentThinking, EventEnvelope};
            let event = Event::new(
                thread.map(|t| t.parse().expect("id")),
                Some("r1".parse().expect("id")),
                AgentThinking { thought, step: Some(3), extra: Default::default() },
            );
            let id: EventId = id.parse().expect("id");
            let body = Bytes::from(event.body_json());
            let bytes = frame_bytes(event.event_type(), Seq(seq), &id, Timestamp(ts), &body);
            // Allocated at its exact length, unless the id needed an escape.
            let escapes = id.as_str().contains(['"', '\\']);
            proptest::prop_assert_eq!(bytes.len() == bytes.capacity(), !escapes);
            let frame = compose_frame(event.event_type(), Seq(seq), &id, Timestamp(ts), &body);
            proptest::prop_assert_eq!(&frame[..], &bytes[..]);
            let envelope = EventEnvelope::new(Seq(seq), id, Timestamp(ts), event);
            proptest::prop_assert_eq!(
                std::str::from_utf8(&frame).expect("UTF-8"),
                ServerFrame::Event(envelope).to_json()
            );
        }
    }

    #[test]
    fn composed_frames_decode_as_the_event() {
        let event = Event::new(
            Some("t1".parse().expect("id")),
            Some("r1".parse().expect("id")),
            AgentStarted {
                agent_name: Some("triage".into()),
                stall_timeout_ms: None,
                extra: Default::default(),
            },
        );
        let body = Bytes::from(event.body_json());
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
