//! The in-memory broker: one node, no other process.
//!
//! Streams live in shards keyed by user, each behind a short mutex that no code holds
//! across an `.await`. History is bounded per user by count and age and in total by bytes
//! (each shard owns an equal part of the byte budget, and trims its globally oldest events
//! first). A stream with no events and no subscribers is dropped at once, so memory stays
//! bounded however many distinct users appear; its next event starts a new epoch.

use std::collections::{BTreeSet, VecDeque};

use foldhash::HashMap;
use foldhash::fast::RandomState;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use agentwire_protocol::{Epoch, EventId, Seq, Timestamp, UserId};
use async_trait::async_trait;
use tokio::time::Instant;

use crate::broker::{
    Accepted, Broker, BrokerError, BrokerStats, EventDigest, History, NewEvent, StoredEvent,
    Subscriber, compose_frame, same_subscriber,
};

/// Bounds of the history a broker keeps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryConfig {
    /// Most events kept per user (default 1,000); older ones are trimmed first.
    pub max_events_per_user: usize,
    /// Oldest event kept (default 10 minutes).
    pub max_age: Duration,
    /// Most bytes of frames kept for all users together (default 256 MiB); the oldest
    /// events of the node go first.
    pub max_total_bytes: usize,
    /// How long after its acceptance an `event_id` is still recognised as a duplicate
    /// (default 10 minutes, the default `max_age`). An id is recognised at least while its
    /// event is held in history, however short this is.
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

const SHARDS: usize = 32;

/// The in-memory [`Broker`]: the embedded default for one node.
///
/// A repeated `event_id` is recognised while its event is held in history: the dedupe
/// window is the history window, so a retry must come before its event is trimmed.
#[derive(Debug)]
pub struct InMemoryBroker {
    shards: Box<[Mutex<Shard>]>,
    hasher: RandomState,
    config: HistoryConfig,
    shard_budget: usize,
    trimmed: AtomicU64,
    duplicates: AtomicU64,
}

#[derive(Default)]
struct Shard {
    streams: HashMap<UserId, Stream>,
    /// (accept number of a stream's oldest event, its user): the shard's events in
    /// global age order, one entry per non-empty stream.
    oldest: BTreeSet<(u64, UserId)>,
    next_accept: u64,
    bytes: usize,
    events: usize,
}

impl std::fmt::Debug for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shard")
            .field("streams", &self.streams.len())
            .field("bytes", &self.bytes)
            .field("events", &self.events)
            .finish()
    }
}

struct Held {
    event: StoredEvent,
    accept_no: u64,
    at: Instant,
}

struct Stream {
    epoch: Epoch,
    last_seq: Seq,
    events: VecDeque<Held>,
    ids: HashMap<EventId, (Seq, Timestamp, EventDigest)>,
    subscribers: Vec<(Arc<dyn Subscriber>, usize)>,
}

impl Stream {
    fn new() -> Self {
        Stream {
            epoch: Epoch::generate(),
            last_seq: Seq::ZERO,
            events: VecDeque::new(),
            ids: HashMap::default(),
            subscribers: Vec::new(),
        }
    }

    /// After trimming: a stream whose history shrank to a fraction of what its buffers
    /// hold gives the memory back, so a user who was busy once does not keep a burst's
    /// worth of capacity while connected and quiet.
    fn give_back_capacity(&mut self) {
        let len = self.events.len();
        if len == 0 {
            self.events = VecDeque::new();
            self.ids = HashMap::default();
        } else if self.events.capacity() > 64 && len * 4 < self.events.capacity() {
            self.events.shrink_to(len * 2);
            self.ids.shrink_to(len * 2);
        }
    }

    fn is_idle(&self) -> bool {
        self.events.is_empty() && self.subscribers.is_empty()
    }
}

impl Shard {
    /// Removes `user`'s oldest event; keeps the age index, counters and dedupe map right.
    fn pop_oldest_of(&mut self, user: &UserId) -> bool {
        let Some(stream) = self.streams.get_mut(user) else {
            return false;
        };
        let Some(held) = stream.events.pop_front() else {
            return false;
        };
        stream.ids.remove(&held.event.event_id);
        self.oldest.remove(&(held.accept_no, user.clone()));
        if let Some(next) = stream.events.front() {
            self.oldest.insert((next.accept_no, user.clone()));
        }
        stream.give_back_capacity();
        self.bytes -= held.event.frame.len();
        self.events -= 1;
        if stream.is_idle() {
            self.streams.remove(user);
        }
        true
    }

    fn trim_user(&mut self, user: &UserId, config: &HistoryConfig, now: Instant) -> u64 {
        let mut trimmed = 0;
        while let Some(stream) = self.streams.get(user) {
            let Some(front) = stream.events.front() else {
                break;
            };
            let too_many = stream.events.len() > config.max_events_per_user;
            let too_old = now.saturating_duration_since(front.at) > config.max_age;
            if !(too_many || too_old) || !self.pop_oldest_of(user) {
                break;
            }
            trimmed += 1;
        }
        trimmed
    }

    fn trim_bytes(&mut self, budget: usize) -> u64 {
        let mut trimmed = 0;
        while self.bytes > budget {
            let Some((_, user)) = self.oldest.first().cloned() else {
                break;
            };
            if !self.pop_oldest_of(&user) {
                break;
            }
            trimmed += 1;
        }
        trimmed
    }

    fn trim_age(&mut self, max_age: Duration, now: Instant) -> u64 {
        let mut trimmed = 0;
        while let Some((_, user)) = self.oldest.first().cloned() {
            let old = self
                .streams
                .get(&user)
                .and_then(|s| s.events.front())
                .is_some_and(|h| now.saturating_duration_since(h.at) > max_age);
            if !old || !self.pop_oldest_of(&user) {
                break;
            }
            trimmed += 1;
        }
        trimmed
    }
}

impl InMemoryBroker {
    /// A broker with the given history bounds.
    pub fn new(config: HistoryConfig) -> Self {
        InMemoryBroker {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            hasher: RandomState::default(),
            shard_budget: (config.max_total_bytes / SHARDS).max(1),
            config,
            trimmed: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
        }
    }

    /// The history bounds in force.
    pub fn config(&self) -> &HistoryConfig {
        &self.config
    }

    fn shard(&self, user: &UserId) -> MutexGuard<'_, Shard> {
        let i = (self.hasher.hash_one(user) as usize) % SHARDS;
        // A panic while holding a shard lock leaves the shard's data consistent: every
        // mutation below completes before anything that can panic.
        self.shards[i].lock().unwrap_or_else(|p| p.into_inner())
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
        let now = Instant::now();
        let mut shard = self.shard(user);
        let accept_no = shard.next_accept;
        let stream = shard
            .streams
            .entry(user.clone())
            .or_insert_with(Stream::new);
        if let Some(id) = &event.event_id
            && let Some(&(seq, ts, digest)) = stream.ids.get(id)
        {
            if digest != event.digest {
                return Err(BrokerError::Conflict {
                    event_id: id.clone(),
                    seq,
                });
            }
            self.duplicates.fetch_add(1, Ordering::Relaxed);
            return Ok(Accepted {
                seq,
                event_id: id.clone(),
                ts,
                epoch: stream.epoch.clone(),
                duplicate: true,
            });
        }
        let seq = stream.last_seq.next();
        let ts = Timestamp::now();
        let event_id = event.event_id.unwrap_or_else(EventId::generate);
        let stored = StoredEvent {
            seq,
            frame: compose_frame(event.event_type, seq, &event_id, ts, &event.body),
            event_id: event_id.clone(),
            ts,
            event_type: event.event_type,
            epoch: stream.epoch.clone(),
        };
        stream.last_seq = seq;
        stream.ids.insert(event_id.clone(), (seq, ts, event.digest));
        let was_empty = stream.events.is_empty();
        for (sub, _) in &stream.subscribers {
            sub.deliver(user, &stored);
        }
        let epoch = stream.epoch.clone();
        let size = stored.frame.len();
        stream.events.push_back(Held {
            event: stored,
            accept_no,
            at: now,
        });
        if was_empty {
            shard.oldest.insert((accept_no, user.clone()));
        }
        shard.next_accept += 1;
        shard.bytes += size;
        shard.events += 1;
        let mut trimmed = shard.trim_user(user, &self.config, now);
        trimmed += shard.trim_bytes(self.shard_budget);
        drop(shard);
        self.trimmed.fetch_add(trimmed, Ordering::Relaxed);
        Ok(Accepted {
            seq,
            event_id,
            ts,
            epoch,
            duplicate: false,
        })
    }

    async fn subscribe(
        &self,
        user: &UserId,
        subscriber: Arc<dyn Subscriber>,
    ) -> Result<(), BrokerError> {
        let mut shard = self.shard(user);
        let stream = shard
            .streams
            .entry(user.clone())
            .or_insert_with(Stream::new);
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
        let mut shard = self.shard(user);
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
        let mut shard = self.shard(user);
        let trimmed = shard.trim_user(user, &self.config, now);
        self.trimmed.fetch_add(trimmed, Ordering::Relaxed);
        let Some(stream) = shard.streams.get(user) else {
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
            .events
            .front()
            .map_or(stream.last_seq.next(), |h| h.event.seq);
        let gap = (after.next() < first_held && after < stream.last_seq)
            .then(|| (after.next(), Seq(first_held.get() - 1)));
        let start = after
            .get()
            .saturating_sub(first_held.get().saturating_sub(1));
        let events = stream
            .events
            .iter()
            .skip(usize::try_from(start).unwrap_or(usize::MAX))
            .take(limit)
            .map(|h| h.event.clone())
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
        let shard = self.shard(user);
        Ok(shard.streams.get(user).and_then(|stream| {
            stream.ids.get(event_id).map(|&(seq, ts, _)| Accepted {
                seq,
                event_id: event_id.clone(),
                ts,
                epoch: stream.epoch.clone(),
                duplicate: true,
            })
        }))
    }

    fn stats(&self) -> BrokerStats {
        let mut stats = BrokerStats {
            history_trimmed: self.trimmed.load(Ordering::Relaxed),
            duplicates: self.duplicates.load(Ordering::Relaxed),
            ..BrokerStats::default()
        };
        for shard in self.shards.iter() {
            let shard = shard.lock().unwrap_or_else(|p| p.into_inner());
            stats.history_events += shard.events as u64;
            stats.history_bytes += shard.bytes as u64;
            stats.users += shard.streams.len() as u64;
        }
        stats
    }

    fn sweep(&self) {
        let now = Instant::now();
        let mut trimmed = 0;
        for shard in self.shards.iter() {
            let mut shard = shard.lock().unwrap_or_else(|p| p.into_inner());
            trimmed += shard.trim_age(self.config.max_age, now);
        }
        self.trimmed.fetch_add(trimmed, Ordering::Relaxed);
    }
}
