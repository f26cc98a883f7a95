//! The in-memory broker: one node, no other process.
//!
//! Streams live in shards keyed by user, each behind a short mutex that no code holds
//! across an `.await`. History is bounded per user by count and age, and for all users
//! together by one byte budget: a global counter of the bytes every shard accounts for,
//! and, when a publish takes it over the budget, a trim that takes the globally oldest
//! entries first, shard by shard (each shard publishes the accept number of its oldest
//! entry in an atomic, so finding the oldest takes no lock). The publish path takes only its
//! own shard's lock; a trim takes one shard's lock at a time.
//!
//! Each accepted event leaves an *entry*: its id, digest, `seq` and `ts` — the dedupe
//! record — and, while the event is in history, its frame. An entry outlives its frame for
//! the rest of the dedupe window. A stream with no entries and no subscribers is dropped at
//! once, so memory stays bounded however many distinct users appear; its next event starts
//! a new epoch.
//!
//! Guarded events (rule 11 of [`Broker`]) are checked and applied against one
//! [`RunTable`](crate::run_table) for the node, inside the user's shard lock, before their
//! batch is appended: dedupe and digest conflicts first, then each guarded fresh event in
//! batch order; the first refusal refuses the batch with nothing stored or applied.

use std::collections::{BTreeMap, VecDeque};

use foldhash::HashMap;
use foldhash::fast::RandomState;
use hashbrown::HashTable;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use agentwire_protocol::{Epoch, EventId, RunId, Seq, Timestamp, UserId};
use async_trait::async_trait;
use tokio::time::Instant;

use crate::broker::{
    Accepted, BatchError, Broker, BrokerError, BrokerStats, EventDigest, History, NewEvent,
    StoredEvent, Subscriber, compose_frame, same_subscriber,
};
use crate::capacity::{give_back_empty_tree, give_back_map_capacity};
use crate::run_table::RunTable;
use crate::runs::{RunGuard, RunLimits, RunPresence};

/// Bounds of the history a broker keeps, and of its dedupe window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryConfig {
    /// Most events kept per user (default 1,000); older ones are trimmed first.
    pub max_events_per_user: usize,
    /// Oldest event kept (default 10 minutes).
    pub max_age: Duration,
    /// Most bytes kept for all users together (default 256 MiB): the frames in history,
    /// plus [`ENTRY_OVERHEAD_BYTES`] and the id's length for every event in history or in
    /// the dedupe window, plus [`STREAM_OVERHEAD_BYTES`] for every stream holding one. The
    /// node's oldest entries go first, whoever's they are.
    pub max_total_bytes: usize,
    /// How long after its acceptance an `event_id` is still recognised as a duplicate
    /// (default 10 minutes, the default `max_age`). An id is recognised at least while its
    /// event is held in history, however short this is; it may be forgotten earlier only
    /// when `max_total_bytes` trims it, after its event.
    pub dedupe_window: Duration,
}

impl Default for HistoryConfig {
    fn default() -> Self {
        HistoryConfig {
            max_events_per_user: 1_000,
            max_age: Duration::from_secs(600),
            max_total_bytes: 256 * 1024 * 1024,
            dedupe_window: Duration::from_secs(600),
        }
    }
}

/// What one remembered event costs beyond its frame and id, as counted against
/// [`HistoryConfig::max_total_bytes`]: its entry, its slot in the id map and their
/// allocations' slack, rounded up.
pub const ENTRY_OVERHEAD_BYTES: usize = 224;

/// What one stream holding entries costs beyond them, as counted against
/// [`HistoryConfig::max_total_bytes`]: its map slot, epoch and age-index entries.
pub const STREAM_OVERHEAD_BYTES: usize = 1024;

const SHARDS: usize = 32;

/// The in-memory [`Broker`]: the embedded default for one node.
///
/// Its dedupe window is [`HistoryConfig::dedupe_window`] after an event's acceptance, and
/// at least as long as the event is in history. Its run state for guarded events is bounded
/// by [`RunLimits`] ([`InMemoryBroker::with_run_limits`]; the defaults otherwise).
#[derive(Debug)]
pub struct InMemoryBroker {
    shards: Box<[ShardSlot]>,
    hasher: RandomState,
    config: HistoryConfig,
    /// Bytes accounted for by every shard together.
    total_bytes: AtomicUsize,
    /// Hands out accept numbers: the global age order of entries.
    accepts: AtomicU64,
    trimmed: AtomicU64,
    duplicates: AtomicU64,
    conflicts: AtomicU64,
    /// Taken inside a shard lock, never the other way round.
    runs: Mutex<RunTable>,
}

#[derive(Debug)]
struct ShardSlot {
    state: Mutex<Shard>,
    /// The accept number of the shard's oldest entry (`u64::MAX` when it has none),
    /// updated under the lock, read without it to find the globally oldest shard.
    oldest: AtomicU64,
}

struct Shard {
    streams: HashMap<UserId, Stream>,
    /// Accept number of a stream's oldest entry → its user: the shard's streams in the
    /// age order of what they remember, one element per stream with entries. An accept
    /// number is one entry's, so no two streams share a key, and re-filing a stream moves
    /// its user from the old key to the new one ([`refile`]) without copying the id: a
    /// copy writes the id's reference count, which the budget's trim, re-filing some other
    /// user's stream for every event it takes, finds cold.
    by_oldest_entry: BTreeMap<u64, UserId>,
    /// The accept number of `by_oldest_entry`'s first element (`u64::MAX` when empty),
    /// kept so that letting go of the lock does not walk the tree.
    oldest_entry_no: u64,
    /// Accept number of a stream's oldest event in history → its user.
    by_oldest_event: BTreeMap<u64, UserId>,
    bytes: usize,
    events: usize,
    entries: usize,
}

impl Default for Shard {
    fn default() -> Self {
        Shard {
            streams: HashMap::default(),
            by_oldest_entry: BTreeMap::new(),
            oldest_entry_no: u64::MAX,
            by_oldest_event: BTreeMap::new(),
            bytes: 0,
            events: 0,
            entries: 0,
        }
    }
}

impl std::fmt::Debug for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shard")
            .field("streams", &self.streams.len())
            .field("bytes", &self.bytes)
            .field("events", &self.events)
            .field("entries", &self.entries)
            .finish()
    }
}

/// One accepted event: its dedupe record, and its frame while it is in history.
struct Entry {
    /// The stored event; once trimmed from history its frame is empty.
    event: StoredEvent,
    digest: EventDigest,
    accept_no: u64,
    at: Instant,
}

impl Entry {
    fn cost(&self) -> usize {
        ENTRY_OVERHEAD_BYTES + self.event.event_id.as_str().len() + self.event.frame.len()
    }

    fn mark(&self) -> Mark {
        Mark {
            accept_no: self.accept_no,
            at: self.at,
        }
    }
}

/// Where an entry stands in the age order: what the age bounds and indexes read of the
/// oldest entries of a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Mark {
    accept_no: u64,
    at: Instant,
}

struct Stream {
    /// Its user: the same allocation as its key in the shard's map, so the age indexes
    /// file the stream under that one (finding the stream by it then compares no text,
    /// and no other copy of the id is kept alive).
    user: UserId,
    epoch: Epoch,
    last_seq: Seq,
    /// One per accepted event still remembered, oldest first, seqs consecutive; the newest
    /// `held` of them are in history.
    entries: VecDeque<Entry>,
    held: usize,
    /// The marks of the oldest entry and of the oldest event in history, kept beside the
    /// ring: every publish checks them, and reading them from the ring's front would touch
    /// memory written long before (a cache miss per publish under load).
    first_entry: Option<Mark>,
    first_event: Option<Mark>,
    ids: IdIndex,
    subscribers: Vec<(Arc<dyn Subscriber>, usize)>,
    /// Where in the upper half of their capacity `ids` and `entries` grow, in 1/1024ths
    /// down from full; drawn at random per stream ([`Stream::grow_ahead`]).
    spread: u16,
}

/// A stream's dedupe index: for each remembered entry, the hash of its id and its `seq`.
/// The id itself is kept once, in the entry. With the hash beside the `seq`, growing the
/// index reads no id (a map keyed by the ids would hash each of them again, every one a
/// read of memory written long before), and a probe compares ids only when the whole
/// hashes agree.
///
/// A forgotten entry's slot is not taken out when the entry goes: it turns *stale*, its
/// `seq` below the stream's oldest remembered one, so [`Stream::entry_of`]'s check passes
/// over it, and [`IdIndex::keep_from`] drops every stale slot in one pass over the table
/// once they fill a sixteenth of it ([`Stream::grow_ahead`]). Taking each slot out as
/// its entry was forgotten cost a probe of the table and a hash of the id, both cold by
/// then: with history full, where every publish forgets as many entries as it adds, that
/// was two cache misses per event.
#[derive(Default)]
struct IdIndex {
    table: HashTable<IdSlot>,
    hasher: RandomState,
}

#[derive(Clone, Copy)]
struct IdSlot {
    hash: u64,
    seq: Seq,
}

impl IdIndex {
    fn hash(&self, id: &EventId) -> u64 {
        self.hasher.hash_one(id)
    }

    /// The `seq` filed under `id`: of the slots whose hash is the id's, the first one
    /// `is_id` says holds it.
    fn find(&self, id: &EventId, is_id: impl Fn(Seq) -> bool) -> Option<Seq> {
        let hash = self.hash(id);
        let slot = self.table.find(hash, |s| s.hash == hash && is_id(s.seq))?;
        Some(slot.seq)
    }

    /// Files a fresh id (not in the index) under `seq`.
    fn insert(&mut self, id: &EventId, seq: Seq) {
        let hash = self.hash(id);
        self.table
            .insert_unique(hash, IdSlot { hash, seq }, |s| s.hash);
    }

    /// Keeps only the slots of `seq`s from `first` on, in a new table with room for
    /// `capacity` of them (it grows if more are kept): one pass over the old table,
    /// reading no id, and no deleted-slot markers left behind.
    fn keep_from(&mut self, first: Seq, capacity: usize) {
        let mut table = HashTable::with_capacity(capacity);
        for slot in self.table.iter().filter(|s| s.seq >= first) {
            table.insert_unique(slot.hash, *slot, |s| s.hash);
        }
        self.table = table;
    }

    fn len(&self) -> usize {
        self.table.len()
    }

    fn capacity(&self) -> usize {
        self.table.capacity()
    }

    fn reserve(&mut self, additional: usize) {
        self.table.reserve(additional, |s| s.hash);
    }
}

/// Smallest capacity [`Stream::grow_ahead`] grows ahead of time; smaller buffers grow when
/// full, which costs little.
const GROW_AHEAD_MIN: usize = 64;

/// Fewest stale slots a dedupe map is rebuilt without ([`Stream::grow_ahead`]).
const REBUILD_STALE_MIN: usize = 8;

impl Stream {
    fn new(user: UserId) -> Self {
        Stream {
            user,
            epoch: Epoch::generate(),
            last_seq: Seq::ZERO,
            entries: VecDeque::new(),
            held: 0,
            first_entry: None,
            first_event: None,
            ids: IdIndex::default(),
            subscribers: Vec::new(),
            spread: (RandomState::default().hash_one(0u8) % 1024) as u16,
        }
    }

    /// Grows the dedupe map and the entry ring, before one more event goes in, at a point
    /// of their upper half that differs from stream to stream. Under a load that gives
    /// every user the same rate, buffers that grow only when full would all grow (and the
    /// maps rehash) at the same event, within milliseconds of each other: a stall of tens
    /// of milliseconds with 1,000 users.
    ///
    /// Before that, a map whose stale slots (their entries forgotten) reach a sixteenth
    /// of its capacity (and at least [`REBUILD_STALE_MIN`]) is rebuilt at the same
    /// capacity without them: a pass over the map, read in order, every sixteenth of its
    /// capacity of entries forgotten, where taking each slot out as its entry was
    /// forgotten cost two cache misses. The map grows as it would without stale slots.
    fn grow_ahead(&mut self) {
        let early = |cap: usize| (cap / 2) * usize::from(self.spread) / 1024;
        let cap = self.ids.capacity();
        if self.stale_ids() >= (cap / 16).max(REBUILD_STALE_MIN) {
            self.ids.keep_from(self.first_seq(), cap);
        }
        let cap = self.ids.capacity();
        if cap >= GROW_AHEAD_MIN && self.ids.len() + early(cap) >= cap {
            self.ids.reserve(cap - self.ids.len() + 1);
        }
        let cap = self.entries.capacity();
        if cap >= GROW_AHEAD_MIN && self.entries.len() + early(cap) >= cap {
            self.entries.reserve(cap - self.entries.len() + 1);
        }
    }

    /// Slots of the dedupe map whose entries are forgotten.
    fn stale_ids(&self) -> usize {
        self.ids.len().saturating_sub(self.entries.len())
    }

    /// The `seq` of the oldest remembered entry; of the next one when none is.
    fn first_seq(&self) -> Seq {
        self.entries
            .front()
            .map_or_else(|| self.last_seq.next(), |e| e.event.seq)
    }

    fn is_idle(&self) -> bool {
        self.entries.is_empty() && self.subscribers.is_empty()
    }

    /// Index of the oldest event in history.
    fn first_held(&self) -> usize {
        self.entries.len() - self.held
    }

    fn oldest_event(&self) -> Option<&Entry> {
        self.entries.get(self.first_held())
    }

    /// The entry of `seq`, when remembered.
    fn entry_at(&self, seq: Seq) -> Option<&Entry> {
        let first = self.entries.front()?.event.seq;
        let i = usize::try_from(seq.get().checked_sub(first.get())?).ok()?;
        self.entries.get(i)
    }

    /// The entry of `event_id`, when remembered.
    fn entry_of(&self, event_id: &EventId) -> Option<&Entry> {
        let seq = self.ids.find(event_id, |seq| {
            self.entry_at(seq)
                .is_some_and(|e| e.event.event_id == *event_id)
        })?;
        self.entry_at(seq)
    }

    fn accepted(&self, entry: &Entry) -> Accepted {
        Accepted {
            seq: entry.event.seq,
            event_id: entry.event.event_id.clone(),
            ts: entry.event.ts,
            epoch: self.epoch.clone(),
            duplicate: true,
        }
    }

    /// The accept numbers of its oldest entry and of its oldest event in history: where
    /// the shard's age indexes file it.
    fn oldest(&self) -> (Option<u64>, Option<u64>) {
        (
            self.first_entry.map(|m| m.accept_no),
            self.first_event.map(|m| m.accept_no),
        )
    }

    /// Whether the oldest event in history is older than `max_age`.
    fn oldest_event_past(&self, now: Instant, max_age: Duration) -> bool {
        self.first_event
            .is_some_and(|m| now.saturating_duration_since(m.at) > max_age)
    }

    /// Whether the oldest entry is out of history and older than `window`.
    fn oldest_entry_forgettable(&self, now: Instant, window: Duration) -> bool {
        self.held < self.entries.len()
            && self
                .first_entry
                .is_some_and(|m| now.saturating_duration_since(m.at) > window)
    }

    /// Checks, in debug builds, that the kept marks are those of the ring.
    fn debug_check_marks(&self) {
        debug_assert_eq!(self.first_entry, self.entries.front().map(Entry::mark));
        debug_assert_eq!(self.first_event, self.oldest_event().map(Entry::mark));
    }

    /// Takes its oldest event out of history, keeping its entry; the frame's bytes, or
    /// `None` when it has no event in history.
    fn pop_event(&mut self) -> Option<usize> {
        if self.held == 0 {
            return None;
        }
        let i = self.first_held();
        let frame = std::mem::take(&mut self.entries[i].event.frame);
        self.held -= 1;
        self.first_event = self.oldest_event().map(Entry::mark);
        self.debug_check_marks();
        Some(frame.len())
    }

    /// Forgets its oldest entry when it is no longer in history; the bytes that frees
    /// (with the stream's own when it was the last entry), or `None`.
    fn forget_oldest(&mut self) -> Option<usize> {
        if self.held == self.entries.len() {
            return None;
        }
        let entry = self.entries.pop_front()?;
        self.first_entry = self.entries.front().map(Entry::mark);
        self.debug_check_marks();
        // Its slot in `ids` turns stale: dropped by the next rebuild (`grow_ahead`).
        let mut bytes = entry.cost();
        if self.entries.is_empty() {
            bytes += STREAM_OVERHEAD_BYTES;
        }
        self.give_back_capacity();
        Some(bytes)
    }

    /// [`Stream::pop_event`], counted into `t`; whether an event left history.
    fn pop_event_into(&mut self, t: &mut Trimmed) -> bool {
        let Some(bytes) = self.pop_event() else {
            return false;
        };
        t.freed.bytes += bytes;
        t.freed.events += 1;
        true
    }

    /// [`Stream::forget_oldest`], counted into `t`; whether an entry was forgotten.
    fn forget_oldest_into(&mut self, t: &mut Trimmed) -> bool {
        let Some(bytes) = self.forget_oldest() else {
            return false;
        };
        t.freed.bytes += bytes;
        t.forgotten += 1;
        true
    }

    /// Applies its own bounds: events over the count or past the age leave history,
    /// entries past the dedupe window (and out of history) are forgotten. Returns what
    /// that freed, without settling it with the shard.
    fn trim(&mut self, config: &HistoryConfig, now: Instant) -> Trimmed {
        let mut t = Trimmed::default();
        loop {
            let too_many = self.held > config.max_events_per_user;
            let popped = if too_many || self.oldest_event_past(now, config.max_age) {
                self.pop_event_into(&mut t)
            } else {
                self.oldest_entry_forgettable(now, config.dedupe_window)
                    && self.forget_oldest_into(&mut t)
            };
            if !popped {
                break;
            }
        }
        t
    }

    /// Appends `event`, fresh (its id, if any, is not in the stream), as `seq` next, and
    /// delivers it to the stream's subscribers; returns its acceptance and the bytes it
    /// costs.
    ///
    /// The subscribers are given the stream's own copy of the user id: a stream created
    /// by a subscription holds the subscriber's copy, so the subscriber finds its entry
    /// for the user by address, without reading the id's text (cold by then) again.
    fn append(
        &mut self,
        event: NewEvent,
        accept_no: u64,
        ts: Timestamp,
        now: Instant,
    ) -> (Accepted, usize) {
        let was_empty = self.entries.is_empty();
        let seq = self.last_seq.next();
        let event_id = event.event_id.unwrap_or_else(EventId::generate);
        let stored = StoredEvent {
            seq,
            frame: compose_frame(event.event_type, seq, &event_id, ts, &event.body),
            event_id: event_id.clone(),
            ts,
            event_type: event.event_type,
            epoch: self.epoch.clone(),
        };
        for (sub, _) in &self.subscribers {
            sub.deliver(&self.user, &stored);
        }
        let entry = Entry {
            event: stored,
            digest: event.digest,
            accept_no,
            at: now,
        };
        let mut cost = entry.cost();
        if was_empty {
            cost += STREAM_OVERHEAD_BYTES;
        }
        self.last_seq = seq;
        self.grow_ahead();
        self.ids.insert(&event_id, seq);
        let mark = entry.mark();
        self.entries.push_back(entry);
        if was_empty {
            self.first_entry = Some(mark);
        }
        if self.held == 0 {
            self.first_event = Some(mark);
        }
        self.held += 1;
        self.debug_check_marks();
        let answer = Accepted {
            seq,
            event_id,
            ts,
            epoch: self.epoch.clone(),
            duplicate: false,
        };
        (answer, cost)
    }

    /// After trimming: a stream whose entries shrank to a fraction of what its buffers
    /// hold gives the memory back, so a user who was busy once does not keep a burst's
    /// worth of capacity while connected and quiet.
    fn give_back_capacity(&mut self) {
        let len = self.entries.len();
        if len == 0 {
            self.entries = VecDeque::new();
            self.ids.table = HashTable::new();
        } else if self.entries.capacity() > 64 && len * 4 < self.entries.capacity() {
            self.entries.shrink_to(len * 2);
            if self.ids.capacity() > len * 2 {
                self.ids.keep_from(self.first_seq(), len * 2);
            }
        }
    }
}

/// What a trim freed.
#[derive(Debug, Default, Clone, Copy)]
struct Freed {
    bytes: usize,
    events: u64,
}

impl std::ops::AddAssign for Freed {
    fn add_assign(&mut self, other: Freed) {
        self.bytes += other.bytes;
        self.events += other.events;
    }
}

/// What a stream's own bounds freed: bytes and events out of history, entries forgotten.
#[derive(Debug, Default, Clone, Copy)]
struct Trimmed {
    freed: Freed,
    forgotten: usize,
}

impl Shard {
    /// Moves `user`'s stream in the age indexes from `before` to `after` (the accept
    /// numbers of its oldest entry and oldest event); nothing when they did not change.
    fn reindex(
        &mut self,
        user: &UserId,
        before: (Option<u64>, Option<u64>),
        after: (Option<u64>, Option<u64>),
    ) {
        if refile(&mut self.by_oldest_entry, user, before.0, after.0) {
            self.note_oldest_entry();
        }
        refile(&mut self.by_oldest_event, user, before.1, after.1);
    }

    /// Keeps [`Shard::oldest_entry_no`] in step with `by_oldest_entry`.
    fn note_oldest_entry(&mut self) {
        self.oldest_entry_no = first_key(&self.by_oldest_entry).unwrap_or(u64::MAX);
    }

    /// Takes what a stream's trim freed off the shard's counts.
    fn settle(&mut self, t: Trimmed) {
        self.bytes -= t.freed.bytes;
        self.events -= t.freed.events as usize;
        self.entries -= t.forgotten;
    }

    /// Applies `user`'s own bounds ([`Stream::trim`]), re-files the stream and drops it
    /// when it is left idle.
    fn trim_user(&mut self, user: &UserId, config: &HistoryConfig, now: Instant) -> Freed {
        let Some(stream) = self.streams.get_mut(user) else {
            return Freed::default();
        };
        let before = stream.oldest();
        let t = stream.trim(config, now);
        let after = stream.oldest();
        let idle = stream.is_idle();
        let key = stream.user.clone();
        self.settle(t);
        self.reindex(&key, before, after);
        if idle {
            self.streams.remove(user);
        }
        t.freed
    }

    /// Frees what it can, up to `need` bytes, from the shard's oldest entry: its event
    /// leaves history first, and the entry itself is forgotten when that freed less than
    /// `need` (or it was out of history already). Both under one lookup and one re-filing,
    /// the same as two calls one after the other. Returns `None` when the shard holds
    /// nothing.
    fn pop_oldest(&mut self, need: usize) -> Option<Freed> {
        // Taken out of the index, and filed again under its new oldest entry at the end:
        // the user moves, uncopied.
        let (n, user) = self.by_oldest_entry.pop_first()?;
        let Some(stream) = self.streams.get_mut(&user) else {
            self.by_oldest_entry.insert(n, user);
            return None;
        };
        let before = stream.oldest();
        debug_assert_eq!(before.0, Some(n));
        let mut t = Trimmed::default();
        let event = stream.held == stream.entries.len() && stream.pop_event_into(&mut t);
        let entry = t.freed.bytes < need && stream.forget_oldest_into(&mut t);
        if !event && !entry {
            self.by_oldest_entry.insert(n, user);
            return None;
        }
        let after = stream.oldest();
        let idle = stream.is_idle();
        self.settle(t);
        refile(&mut self.by_oldest_event, &user, before.1, after.1);
        if idle {
            self.streams.remove(&user);
        }
        if let Some(n) = after.0 {
            self.by_oldest_entry.insert(n, user);
        }
        self.note_oldest_entry();
        Some(t.freed)
    }

    /// The age bounds, for every stream of the shard.
    fn trim_age(&mut self, config: &HistoryConfig, now: Instant) -> Freed {
        let mut freed = Freed::default();
        while let Some(user) = self.by_oldest_event.values().next().cloned() {
            let old = self
                .streams
                .get(&user)
                .is_some_and(|s| s.oldest_event_past(now, config.max_age));
            if !old {
                break;
            }
            freed += self.trim_user(&user, config, now);
        }
        // Entries are filed by their oldest entry, which may still be in history (a window
        // shorter than `max_age`): then a later stream's forgotten entries wait for a
        // later sweep, or a call that touches their user.
        while let Some(user) = self.by_oldest_entry.values().next().cloned() {
            let forgettable = self
                .streams
                .get(&user)
                .is_some_and(|s| s.oldest_entry_forgettable(now, config.dedupe_window));
            if !forgettable {
                break;
            }
            freed += self.trim_user(&user, config, now);
        }
        freed
    }
}

/// Moves `user`'s stream in an age index from key `before` to key `after`, the user taken
/// from under the old key (copied only when it had none); whether anything changed.
fn refile(
    index: &mut BTreeMap<u64, UserId>,
    user: &UserId,
    before: Option<u64>,
    after: Option<u64>,
) -> bool {
    if before == after {
        return false;
    }
    let filed = before.and_then(|n| index.remove(&n));
    debug_assert!(filed.as_ref().is_none_or(|u| u == user));
    if let Some(n) = after {
        index.insert(n, filed.unwrap_or_else(|| user.clone()));
    }
    true
}

/// The smallest key of an age index.
fn first_key(index: &BTreeMap<u64, UserId>) -> Option<u64> {
    index.keys().next().copied()
}

impl InMemoryBroker {
    /// A broker with the given history bounds.
    pub fn new(config: HistoryConfig) -> Self {
        InMemoryBroker {
            shards: (0..SHARDS)
                .map(|_| ShardSlot {
                    state: Mutex::new(Shard::default()),
                    oldest: AtomicU64::new(u64::MAX),
                })
                .collect(),
            hasher: RandomState::default(),
            config,
            total_bytes: AtomicUsize::new(0),
            accepts: AtomicU64::new(0),
            trimmed: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
            conflicts: AtomicU64::new(0),
            runs: Mutex::new(RunTable::new(RunLimits::default())),
        }
    }

    /// The same broker, keeping run state under `limits`.
    #[must_use]
    pub fn with_run_limits(self, limits: RunLimits) -> Self {
        InMemoryBroker {
            runs: Mutex::new(RunTable::new(limits)),
            ..self
        }
    }

    /// The history bounds in force.
    pub fn config(&self) -> &HistoryConfig {
        &self.config
    }

    /// The run-state bounds in force.
    pub fn run_limits(&self) -> RunLimits {
        *self.runs().limits()
    }

    fn runs(&self) -> MutexGuard<'_, RunTable> {
        // Every change of the table completes before anything that can panic.
        self.runs.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn shard_index(&self, user: &UserId) -> usize {
        (self.hasher.hash_one(user) as usize) % SHARDS
    }

    fn lock(&self, i: usize) -> ShardGuard<'_> {
        // A panic while holding a shard lock leaves the shard's data consistent: every
        // mutation completes before anything that can panic.
        ShardGuard {
            shard: self.shards[i]
                .state
                .lock()
                .unwrap_or_else(|p| p.into_inner()),
            slot: &self.shards[i],
            broker: self,
        }
    }

    fn shard(&self, user: &UserId) -> ShardGuard<'_> {
        self.lock(self.shard_index(user))
    }

    /// Trims the globally oldest entries until the node is within its byte budget. Takes
    /// one shard's lock at a time: the shard whose oldest entry is the oldest, for as long
    /// as it stays so.
    fn trim_to_budget(&self) {
        let budget = self.config.max_total_bytes;
        while self.total_bytes.load(Ordering::Acquire) > budget {
            let mut best = (u64::MAX, usize::MAX);
            let mut second = u64::MAX;
            for (i, slot) in self.shards.iter().enumerate() {
                let n = slot.oldest.load(Ordering::Acquire);
                if n < best.0 {
                    second = best.0;
                    best = (n, i);
                } else if n < second {
                    second = n;
                }
            }
            if best.0 == u64::MAX {
                break;
            }
            let mut guard = self.lock(best.1);
            while self.total_bytes.load(Ordering::Acquire) > budget {
                let oldest = first_key(&guard.shard.by_oldest_entry);
                if oldest.is_none_or(|n| n > second) {
                    break;
                }
                let need = self
                    .total_bytes
                    .load(Ordering::Acquire)
                    .saturating_sub(budget);
                match guard.shard.pop_oldest(need) {
                    Some(f) => guard.freed(f),
                    None => break,
                }
            }
        }
    }

    /// Accepts `events` into `user`'s stream under one lock: all, or none when one of them
    /// reuses an id for another event or its run guard refuses it.
    fn accept(&self, user: &UserId, events: Vec<NewEvent>) -> Result<Vec<Accepted>, BatchError> {
        let now = Instant::now();
        let mut guard = self.shard(user);
        let shard = &mut *guard.shard;
        // Looked up once for the whole batch: trimmed, checked, appended to, trimmed. The
        // shard's counts and age indexes are settled once, at the end (or on a refusal):
        // only this lock reads them. The global byte count is settled at once.
        let mut stream = shard.streams.get_mut(user);
        let mut before = (None, None);
        let mut trimmed = Trimmed::default();
        // The user's own bounds first, so an id past its dedupe window is fresh again.
        if let Some(s) = stream.as_deref_mut() {
            before = s.oldest();
            trimmed = s.trim(&self.config, now);
            self.settle(trimmed.freed);
            if s.is_idle() {
                // Nothing left to remember: its next event starts a new stream (and epoch).
                stream = None;
                shard.settle(trimmed);
                shard.reindex(user, before, (None, None));
                shard.streams.remove(user);
                (before, trimmed) = ((None, None), Trimmed::default());
            }
        }
        let repeats = match self.check_batch(user, stream.as_deref(), &events) {
            Ok(repeats) => repeats,
            Err(refused) => {
                let (key, after) = stream.as_deref().map_or((user.clone(), (None, None)), |s| {
                    (s.user.clone(), s.oldest())
                });
                shard.settle(trimmed);
                shard.reindex(&key, before, after);
                return Err(refused);
            }
        };
        let stream = match stream {
            Some(stream) => stream,
            None => shard
                .streams
                .entry(user.clone())
                .or_insert_with(|| Stream::new(user.clone())),
        };
        let mut answers = Vec::with_capacity(events.len());
        let (mut added, mut appended) = (0, 0);
        // One accept time for the batch, read when its first fresh event is appended.
        let mut ts = None;
        for (i, event) in events.into_iter().enumerate() {
            // Deliveries happen before the lock is let go, so delivery order is seq order.
            if repeats.contains(i)
                && let Some(id) = &event.event_id
                && let Some(entry) = stream.entry_of(id)
            {
                self.duplicates.fetch_add(1, Ordering::Relaxed);
                answers.push(stream.accepted(entry));
                continue;
            }
            let ts = *ts.get_or_insert_with(Timestamp::now);
            let accept_no = self.accepts.fetch_add(1, Ordering::Relaxed);
            let (answer, cost) = stream.append(event, accept_no, ts, now);
            answers.push(answer);
            added += cost;
            appended += 1;
        }
        if added > 0 {
            self.total_bytes.fetch_add(added, Ordering::AcqRel);
        }
        let after_trim = stream.trim(&self.config, now);
        self.settle(after_trim.freed);
        let after = stream.oldest();
        let idle = stream.is_idle();
        // Re-filed only when its oldest entry or event changed (most publishes change
        // neither), under the stream's own copy of the user.
        let key = (before != after).then(|| stream.user.clone());
        shard.bytes += added;
        shard.events += appended;
        shard.entries += appended;
        shard.settle(trimmed);
        shard.settle(after_trim);
        if let Some(key) = key {
            shard.reindex(&key, before, after);
        }
        if idle {
            shard.streams.remove(user);
        }
        drop(guard);
        if self.total_bytes.load(Ordering::Acquire) > self.config.max_total_bytes {
            self.trim_to_budget();
        }
        Ok(answers)
    }

    /// Checks a batch for `user`'s `stream` before anything is stored: each event's id
    /// first (a duplicate is answered, not checked again), then the runs of the fresh
    /// ones, applied to the run table when nothing refuses the batch. Returns the events
    /// whose id is in the stream or earlier in the batch (to look up again when
    /// appending; the others are known to be fresh), or the refusal.
    fn check_batch(
        &self,
        user: &UserId,
        stream: Option<&Stream>,
        events: &[NewEvent],
    ) -> Result<Repeats, BatchError> {
        let mut repeats = Repeats::new(events.len());
        let mut batch_ids = BatchIds::new(events);
        let mut guarded: Vec<(usize, &RunGuard)> = Vec::new();
        let mut conflict = None;
        for (i, e) in events.iter().enumerate() {
            let fresh = match &e.event_id {
                None => true,
                Some(id) => {
                    let seen = match stream.and_then(|s| s.entry_of(id)) {
                        Some(entry) => Some((entry.digest != e.digest).then_some(entry.event.seq)),
                        // A second event under an id the batch already uses: the seq the
                        // first would take.
                        None => batch_ids.first(id, i).map(|(first, digest)| {
                            (digest != e.digest).then(|| {
                                let last = stream.map_or(0, |s| s.last_seq.get());
                                Seq(last + fresh_before(events, first))
                            })
                        }),
                    };
                    match seen {
                        Some(Some(seq)) => {
                            conflict = Some((i, id.clone(), seq));
                            break;
                        }
                        Some(None) => false,
                        None => {
                            // A single event cannot repeat an id of its batch.
                            if events.len() > 1 {
                                batch_ids.insert(id, i, e.digest);
                            }
                            true
                        }
                    }
                }
            };
            if !fresh {
                repeats.insert(i);
            }
            if fresh && let Some(run) = &e.run {
                guarded.push((i, run));
            }
        }
        if !guarded.is_empty() {
            // Applied at once when nothing refuses the batch: accepting cannot fail after.
            let checked = self.runs().check(user, &guarded, conflict.is_none());
            if let Err((i, error)) = checked {
                return Err(BatchError::refused(i, error));
            }
        }
        if let Some((i, event_id, seq)) = conflict {
            self.conflicts.fetch_add(1, Ordering::Relaxed);
            return Err(BatchError::refused(
                i,
                BrokerError::Conflict { event_id, seq },
            ));
        }
        Ok(repeats)
    }

    /// Settles what a trim freed with the global byte count, at once (so a trim loop
    /// sees it), and counts the events it took out of history.
    fn settle(&self, f: Freed) {
        if f.bytes > 0 {
            self.total_bytes.fetch_sub(f.bytes, Ordering::AcqRel);
        }
        if f.events > 0 {
            self.trimmed.fetch_add(f.events, Ordering::Relaxed);
        }
    }
}

/// The events of a batch whose id was seen before (in the stream or earlier in the
/// batch), by index: bits of one word for batches of up to 64 events.
enum Repeats {
    Word(u64),
    Many(Vec<bool>),
}

impl Repeats {
    fn new(len: usize) -> Self {
        if len <= 64 {
            Repeats::Word(0)
        } else {
            Repeats::Many(vec![false; len])
        }
    }

    fn insert(&mut self, i: usize) {
        match self {
            Repeats::Word(w) => *w |= 1 << i,
            Repeats::Many(v) => v[i] = true,
        }
    }

    fn contains(&self, i: usize) -> bool {
        match self {
            Repeats::Word(w) => i < 64 && *w & (1 << i) != 0,
            Repeats::Many(v) => v.get(i).copied().unwrap_or(false),
        }
    }
}

/// Where a batch used an id first, with that event's digest. A small batch is searched in
/// order (hashing ids into a map, and allocating it, costs more there); a batch of more
/// than [`BatchIds::SCAN_MAX`] events keeps a map of its fresh ids.
struct BatchIds<'a> {
    events: &'a [NewEvent],
    map: Option<HashMap<&'a EventId, (usize, EventDigest)>>,
}

impl<'a> BatchIds<'a> {
    const SCAN_MAX: usize = 16;

    fn new(events: &'a [NewEvent]) -> Self {
        BatchIds {
            events,
            map: (events.len() > Self::SCAN_MAX).then(HashMap::default),
        }
    }

    /// The first of the batch's events before `i` under `id`, asked only for an id the
    /// stream does not hold, whose first event was therefore fresh.
    fn first(&self, id: &EventId, i: usize) -> Option<(usize, EventDigest)> {
        match &self.map {
            Some(map) => map.get(id).copied(),
            None => self.events[..i]
                .iter()
                .position(|e| e.event_id.as_ref() == Some(id))
                .map(|first| (first, self.events[first].digest)),
        }
    }

    /// Records event `i` as the first under `id`.
    fn insert(&mut self, id: &'a EventId, i: usize, digest: EventDigest) {
        if let Some(map) = &mut self.map {
            map.insert(id, (i, digest));
        }
    }
}

/// Fresh (non-repeated) ids among the first `n + 1` events of a batch, counting
/// events without an id: the seq offset event `n` would take.
fn fresh_before(events: &[NewEvent], n: usize) -> u64 {
    let mut seen: Vec<&EventId> = Vec::new();
    let mut fresh = 0;
    for e in &events[..=n] {
        match &e.event_id {
            Some(id) if seen.contains(&id) => {}
            Some(id) => {
                seen.push(id);
                fresh += 1;
            }
            None => fresh += 1,
        }
    }
    fresh
}

/// A shard's lock, which publishes the shard's oldest entry for the global trim when it
/// is let go.
struct ShardGuard<'a> {
    shard: MutexGuard<'a, Shard>,
    slot: &'a ShardSlot,
    broker: &'a InMemoryBroker,
}

impl ShardGuard<'_> {
    /// Settles what a trim under this lock freed: at once, so a trim loop sees it.
    fn freed(&mut self, f: Freed) {
        self.broker.settle(f);
    }
}

impl Drop for ShardGuard<'_> {
    fn drop(&mut self) {
        let oldest = self.shard.oldest_entry_no;
        debug_assert_eq!(
            oldest,
            first_key(&self.shard.by_oldest_entry).unwrap_or(u64::MAX)
        );
        self.slot.oldest.store(oldest, Ordering::Release);
    }
}

impl Default for InMemoryBroker {
    fn default() -> Self {
        InMemoryBroker::new(HistoryConfig::default())
    }
}

#[async_trait]
impl Broker for InMemoryBroker {
    async fn publish(&self, user: &UserId, event: NewEvent) -> Result<Accepted, BrokerError> {
        let mut answers = self.accept(user, vec![event]).map_err(|e| e.error)?;
        answers.pop().ok_or(BrokerError::Closed)
    }

    /// All or nothing, under one lock: other publishes of the user do not interleave.
    async fn publish_many(
        &self,
        user: &UserId,
        events: Vec<NewEvent>,
    ) -> Result<Vec<Accepted>, BatchError> {
        self.accept(user, events)
    }

    async fn subscribe(
        &self,
        user: &UserId,
        subscriber: Arc<dyn Subscriber>,
    ) -> Result<(), BrokerError> {
        let mut guard = self.shard(user);
        let stream = guard
            .shard
            .streams
            .entry(user.clone())
            .or_insert_with(|| Stream::new(user.clone()));
        match stream
            .subscribers
            .iter_mut()
            .find(|(s, _)| same_subscriber(s, &subscriber))
        {
            Some((_, count)) => *count += 1,
            None => stream.subscribers.push((subscriber, 1)),
        }
        Ok(())
    }

    async fn unsubscribe(
        &self,
        user: &UserId,
        subscriber: &Arc<dyn Subscriber>,
    ) -> Result<(), BrokerError> {
        let mut guard = self.shard(user);
        let shard = &mut *guard.shard;
        let Some(stream) = shard.streams.get_mut(user) else {
            return Ok(());
        };
        if let Some(i) = stream
            .subscribers
            .iter()
            .position(|(s, _)| same_subscriber(s, subscriber))
        {
            stream.subscribers[i].1 -= 1;
            if stream.subscribers[i].1 == 0 {
                stream.subscribers.swap_remove(i);
            }
        }
        if stream.is_idle() {
            shard.streams.remove(user);
        }
        Ok(())
    }

    async fn history(
        &self,
        user: &UserId,
        after: Seq,
        limit: usize,
    ) -> Result<History, BrokerError> {
        let now = Instant::now();
        let mut guard = self.shard(user);
        let freed = guard.shard.trim_user(user, &self.config, now);
        guard.freed(freed);
        let Some(stream) = guard.shard.streams.get(user) else {
            // No stream: nothing was accepted, or everything expired and the stream was
            // dropped. Either way the next event starts a new epoch.
            return Ok(History {
                epoch: Epoch::generate(),
                last_seq: Seq::ZERO,
                gap: None,
                events: Vec::new(),
            });
        };
        let first_held = stream
            .oldest_event()
            .map_or(stream.last_seq.next(), |e| e.event.seq);
        let gap = (after.next() < first_held && after < stream.last_seq)
            .then(|| (after.next(), Seq(first_held.get() - 1)));
        let start = after
            .get()
            .saturating_sub(first_held.get().saturating_sub(1));
        let events = stream
            .entries
            .iter()
            .skip(stream.first_held())
            .skip(usize::try_from(start).unwrap_or(usize::MAX))
            .take(limit)
            .map(|e| e.event.clone())
            .collect();
        Ok(History {
            epoch: stream.epoch.clone(),
            last_seq: stream.last_seq,
            gap,
            events,
        })
    }

    async fn lookup(
        &self,
        user: &UserId,
        event_id: &EventId,
    ) -> Result<Option<Accepted>, BrokerError> {
        let now = Instant::now();
        let mut guard = self.shard(user);
        let freed = guard.shard.trim_user(user, &self.config, now);
        guard.freed(freed);
        Ok(guard
            .shard
            .streams
            .get(user)
            .and_then(|s| s.entry_of(event_id).map(|e| s.accepted(e))))
    }

    async fn heartbeat_run(
        &self,
        user: &UserId,
        run_id: &RunId,
    ) -> Result<RunPresence, BrokerError> {
        Ok(self.runs().heartbeat(user, run_id))
    }

    fn stats(&self) -> BrokerStats {
        let mut stats = BrokerStats {
            history_trimmed: self.trimmed.load(Ordering::Relaxed),
            duplicates: self.duplicates.load(Ordering::Relaxed),
            conflicts: self.conflicts.load(Ordering::Relaxed),
            runs: self.runs().stats(),
            ..BrokerStats::default()
        };
        for slot in self.shards.iter() {
            let shard = slot.state.lock().unwrap_or_else(|p| p.into_inner());
            stats.history_events += shard.events as u64;
            stats.history_bytes += shard.bytes as u64;
            stats.dedupe_ids += shard.entries as u64;
            stats.users += shard.streams.len() as u64;
        }
        stats
    }

    fn sweep(&self) {
        let now = Instant::now();
        self.runs().expire(now);
        for i in 0..SHARDS {
            let mut guard = self.lock(i);
            let freed = guard.shard.trim_age(&self.config, now);
            guard.freed(freed);
            let shard = &mut guard.shard;
            give_back_map_capacity(&mut shard.streams);
            give_back_empty_tree(&mut shard.by_oldest_entry);
            give_back_empty_tree(&mut shard.by_oldest_event);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capacity::MAP_KEEP_CAPACITY;
    use agentwire_protocol::EventType;
    use bytes::Bytes;

    /// Appends a fresh event with id `e{n}` to `stream`.
    fn append_nth(stream: &mut Stream, n: u64) {
        let now = Instant::now();
        stream.append(event(&format!("e{n}"), "{}"), n, Timestamp::now(), now);
    }

    /// Takes `stream`'s oldest event out of history and forgets its entry.
    fn forget_first(stream: &mut Stream) {
        stream.pop_event().expect("an event in history");
        stream.forget_oldest().expect("an entry out of history");
    }

    /// The length at which a stream's dedupe map grew past `from` entries of capacity.
    fn growth_point(stream: &mut Stream, from: usize) -> usize {
        let mut n = 0u64;
        while stream.ids.capacity() < from {
            n += 1;
            append_nth(stream, n);
        }
        let before = stream.ids.capacity();
        loop {
            let len = stream.ids.len();
            n += 1;
            append_nth(stream, n);
            if stream.ids.capacity() > before {
                return len;
            }
        }
    }

    #[test]
    fn the_dedupe_index_finds_ids_after_growing_and_keeps_only_the_seqs_asked_for() {
        let ids: Vec<EventId> = (0..200)
            .map(|i| EventId::new(format!("event-{i}")).expect("id"))
            .collect();
        let seq_of = |i: usize| Seq(i as u64 + 1);
        let mut index = IdIndex::default();
        for (i, id) in ids.iter().enumerate() {
            index.insert(id, seq_of(i));
        }
        // Grown from the stored hashes alone.
        index.reserve(10_000);
        let found = |index: &IdIndex, i: usize| {
            index.find(&ids[i], |seq| {
                ids.get(seq.get() as usize - 1) == Some(&ids[i])
            })
        };
        for (i, id) in ids.iter().enumerate() {
            assert_eq!(found(&index, i), Some(seq_of(i)), "{id}");
        }
        // Rebuilt from seq 6 on, small again.
        index.keep_from(seq_of(5), 0);
        assert_eq!(index.len(), ids.len() - 5);
        assert!(index.capacity() < 400, "capacity {}", index.capacity());
        assert_eq!(found(&index, 4), None);
        for (i, id) in ids.iter().enumerate().skip(5) {
            assert_eq!(found(&index, i), Some(seq_of(i)), "{id}");
        }
    }

    #[test]
    fn a_forgotten_id_used_again_is_fresh_and_found_under_its_new_seq() {
        let mut stream = Stream::new(test_user());
        for n in 1..=3 {
            append_nth(&mut stream, n);
        }
        forget_first(&mut stream);
        let e1: EventId = "e1".parse().expect("id");
        assert!(
            stream.entry_of(&e1).is_none(),
            "forgotten: no longer a duplicate"
        );
        assert_eq!(stream.stale_ids(), 1, "its slot is left, stale");
        append_nth(&mut stream, 1);
        let entry = stream.entry_of(&e1).expect("remembered again");
        assert_eq!(entry.event.seq, Seq(4));
        let e2: EventId = "e2".parse().expect("id");
        assert_eq!(stream.entry_of(&e2).map(|e| e.event.seq), Some(Seq(2)));
    }

    #[test]
    fn a_stream_forgetting_as_fast_as_it_remembers_keeps_its_dedupe_map_bounded() {
        for live in [40u64, 300] {
            for spread in [0, 512, 1023] {
                let mut stream = Stream::new(test_user());
                stream.spread = spread;
                let mut most = 0;
                for n in 1..=20 * live {
                    append_nth(&mut stream, n);
                    if n > live {
                        forget_first(&mut stream);
                    }
                    most = most.max(stream.ids.capacity());
                    // Every remembered id is still found, under its own seq.
                    if n % 37 == 0 {
                        let first = n.saturating_sub(live) + 1;
                        for m in [first, (first + n) / 2, n] {
                            let id: EventId = format!("e{m}").parse().expect("id");
                            let seq = stream.entry_of(&id).map(|e| e.event.seq);
                            assert_eq!(seq, Some(Seq(m)), "e{m} after {n}");
                        }
                    }
                }
                // Rebuilt, not grown: as much room as a map that never held a stale slot.
                let mut fresh = Stream::new(test_user());
                fresh.spread = spread;
                for n in 1..=live {
                    append_nth(&mut fresh, n);
                }
                assert!(
                    most <= 2 * fresh.ids.capacity(),
                    "{live} live, spread {spread}: capacity reached {most}, {} without stale slots",
                    fresh.ids.capacity()
                );
            }
        }
    }

    fn test_user() -> UserId {
        "u".parse().expect("user")
    }

    #[test]
    fn streams_grow_their_dedupe_maps_at_different_points() {
        let spreads: std::collections::BTreeSet<u16> =
            (0..64).map(|_| Stream::new(test_user()).spread).collect();
        assert!(spreads.len() > 32, "{spreads:?}");
        let mut points = std::collections::BTreeSet::new();
        for spread in [0, 300, 700, 1023] {
            let mut stream = Stream::new(test_user());
            stream.spread = spread;
            let point = growth_point(&mut stream, 400);
            // Within the upper half of the capacity it had: never past full.
            assert!(
                (224..=448).contains(&point),
                "spread {spread}: grew at {point}"
            );
            points.insert(point);
        }
        assert_eq!(points.len(), 4, "{points:?}");
    }

    fn event(id: &str, body: &str) -> NewEvent {
        NewEvent::new(
            EventType::Custom,
            Some(id.parse().expect("id")),
            Bytes::from(body.to_owned()),
        )
    }

    /// What a model of one stream expects of a batch: each event's (seq, duplicate), or
    /// the refused event's index and the conflict.
    #[allow(clippy::type_complexity)]
    fn model_batch(
        known: &mut std::collections::HashMap<String, (u64, u8)>,
        last: &mut u64,
        batch: &[(Option<u8>, u8)],
    ) -> Result<Vec<(u64, bool)>, (usize, String, u64)> {
        let mut ids = known.clone();
        let mut next = *last;
        let mut out = Vec::new();
        for (i, (id, body)) in batch.iter().enumerate() {
            let Some(id) = id else {
                next += 1;
                out.push((next, false));
                continue;
            };
            let id = format!("e{id}");
            match ids.get(&id) {
                Some(&(seq, b)) if b == *body => out.push((seq, true)),
                Some(&(seq, _)) if known.contains_key(&id) => return Err((i, id, seq)),
                Some(_) => {
                    // An id reused within the batch: the seq named is the last one plus
                    // the distinct ids (and events without one) up to its first use,
                    // stored duplicates among them included.
                    let first = batch
                        .iter()
                        .position(|(b, _)| b.map(|b| format!("e{b}")) == Some(id.clone()));
                    let mut seen = Vec::new();
                    for (b, _) in &batch[..=first.unwrap_or(0)] {
                        if b.is_none() || !seen.contains(b) {
                            seen.push(*b);
                        }
                    }
                    return Err((i, id, *last + seen.len() as u64));
                }
                None => {
                    next += 1;
                    ids.insert(id, (next, *body));
                    out.push((next, false));
                }
            }
        }
        *known = ids;
        *last = next;
        Ok(out)
    }

    proptest::proptest! {
        /// Batches of events with repeated ids, with and without reuse for another body,
        /// are answered as the model of the contract says (seqs, duplicates, conflicts and
        /// their seqs), history keeps the newest events, and the byte count is what the
        /// remembered entries and held frames add up to.
        #[test]
        fn batches_follow_the_model(
            batches in proptest::collection::vec(
                // Past `BatchIds::SCAN_MAX` events too.
                proptest::collection::vec(
                    (proptest::option::of(0u8..24), 0u8..2),
                    1..24,
                ),
                1..10,
            ),
            max_events in 1usize..6,
        ) {
            let broker = InMemoryBroker::new(HistoryConfig {
                max_events_per_user: max_events,
                ..HistoryConfig::default()
            });
            let user: UserId = "u".parse().expect("user");
            let mut known = std::collections::HashMap::new();
            let mut last = 0;
            let mut frames: Vec<(Seq, usize, usize)> = Vec::new();
            for batch in &batches {
                let events = batch
                    .iter()
                    .map(|(id, body)| NewEvent::new(
                        EventType::Custom,
                        id.map(|id| format!("e{id}").parse().expect("id")),
                        Bytes::from(format!(r#"{{"data":{{"b":{body}}}}}"#)),
                    ))
                    .collect::<Vec<_>>();
                let bodies: Vec<Bytes> = events.iter().map(|e| e.body.clone()).collect();
                let expected = model_batch(&mut known, &mut last, batch);
                match (broker.accept(&user, events), expected) {
                    (Ok(answers), Ok(expected)) => {
                        let got: Vec<(u64, bool)> =
                            answers.iter().map(|a| (a.seq.get(), a.duplicate)).collect();
                        proptest::prop_assert_eq!(&got, &expected);
                        for ((a, body), (id, _)) in answers.iter().zip(&bodies).zip(batch) {
                            if let Some(id) = id {
                                proptest::prop_assert_eq!(a.event_id.as_str(), format!("e{id}"));
                            }
                            if !a.duplicate {
                                let frame = compose_frame(
                                    EventType::Custom, a.seq, &a.event_id, a.ts, body,
                                );
                                frames.push((a.seq, a.event_id.as_str().len(), frame.len()));
                            }
                        }
                    }
                    (Err(e), Err((i, id, seq))) => {
                        proptest::prop_assert_eq!(e.refused_at, Some(i));
                        proptest::prop_assert_eq!(
                            e.error,
                            BrokerError::Conflict { event_id: id.parse().expect("id"), seq: Seq(seq) }
                        );
                    }
                    (got, expected) => {
                        proptest::prop_assert!(false, "got {got:?}, expected {expected:?}");
                    }
                }
            }
            let stats = broker.stats();
            let held = frames.len().min(max_events);
            proptest::prop_assert_eq!(stats.history_events, held as u64);
            proptest::prop_assert_eq!(stats.dedupe_ids, frames.len() as u64);
            let bytes = if frames.is_empty() {
                0
            } else {
                STREAM_OVERHEAD_BYTES
                    + frames.iter().map(|(_, id, _)| ENTRY_OVERHEAD_BYTES + id).sum::<usize>()
                    + frames[frames.len() - held..].iter().map(|(_, _, f)| f).sum::<usize>()
            };
            proptest::prop_assert_eq!(stats.history_bytes, bytes as u64);
            proptest::prop_assert_eq!(broker.total_bytes.load(Ordering::Acquire), bytes);
            let guard = broker.shard(&user);
            if let Some(stream) = guard.shard.streams.get(&user) {
                let seqs: Vec<Seq> = stream.entries.iter().map(|e| e.event.seq).collect();
                let expected: Vec<Seq> = frames.iter().map(|(s, _, _)| *s).collect();
                proptest::prop_assert_eq!(seqs, expected);
                proptest::prop_assert_eq!(
                    first_key(&guard.shard.by_oldest_event),
                    stream.oldest_event().map(|e| e.accept_no)
                );
                proptest::prop_assert_eq!(guard.shard.by_oldest_entry.len(), 1);
            } else {
                proptest::prop_assert!(frames.is_empty());
            }
        }
    }

    /// The accounting stays exact through accepts, trims and forgetting: the global
    /// counter is the sum of the shards', and both return to zero.
    #[tokio::test(start_paused = true)]
    async fn accounting_returns_to_zero() {
        let broker = InMemoryBroker::new(HistoryConfig {
            max_events_per_user: 3,
            max_age: Duration::from_secs(10),
            dedupe_window: Duration::from_secs(20),
            max_total_bytes: 8 * 1024,
        });
        for u in 0..20 {
            let user: UserId = format!("u{u}").parse().expect("user");
            for n in 0..5 {
                broker
                    .publish(&user, event(&format!("e{n}"), r#"{"data":{}}"#))
                    .await
                    .expect("accepted");
            }
        }
        let stats = broker.stats();
        assert_eq!(
            stats.history_bytes,
            broker.total_bytes.load(Ordering::Acquire) as u64
        );
        assert!(stats.history_bytes <= 8 * 1024);
        tokio::time::advance(Duration::from_secs(21)).await;
        broker.sweep();
        let stats = broker.stats();
        assert_eq!(
            (
                stats.history_bytes,
                stats.history_events,
                stats.dedupe_ids,
                stats.users
            ),
            (0, 0, 0, 0)
        );
        assert_eq!(broker.total_bytes.load(Ordering::Acquire), 0);
    }

    /// Once a crowd of users has come and gone, a sweep gives back the stream maps' slots:
    /// the shards hold no more capacity than a broker that never saw them.
    #[tokio::test(start_paused = true)]
    async fn shards_give_back_their_capacity_after_every_user_leaves() {
        let broker = InMemoryBroker::new(HistoryConfig {
            max_age: Duration::from_secs(10),
            dedupe_window: Duration::from_secs(10),
            ..HistoryConfig::default()
        });
        let capacity = |b: &InMemoryBroker| -> usize {
            (0..SHARDS)
                .map(|i| b.lock(i).shard.streams.capacity())
                .sum()
        };
        for u in 0..20_000 {
            let user: UserId = format!("u{u}").parse().expect("user");
            broker
                .publish(&user, event("e", r#"{"data":{}}"#))
                .await
                .expect("accepted");
        }
        assert!(capacity(&broker) >= 20_000);
        tokio::time::advance(Duration::from_secs(11)).await;
        broker.sweep();
        assert_eq!(broker.stats().users, 0);
        assert!(
            capacity(&broker) <= SHARDS * MAP_KEEP_CAPACITY,
            "{} slots kept",
            capacity(&broker)
        );
    }
}
