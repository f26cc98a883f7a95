//! [`RedisBroker`]: the [`Broker`] on Redis — scripts for publish, history and lookup on
//! the command connection, and the subscription task on its own connection.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use agentwire_manager::{
    Accepted, BatchError, Broker, BrokerError, BrokerStats, History, NewEvent, StoredEvent,
    Subscriber,
};
use agentwire_protocol::{Epoch, EventId, Seq, Timestamp, UserId};
use async_trait::async_trait;
use bytes::Bytes;
use redis::{ErrorKind, RedisError, Script, ServerErrorKind, Value};

use crate::config::{RedisConfig, RedisTarget};
use crate::connect::{Commands, PUBSUB_CLIENT_NAME};
use crate::keys::UserKeys;
use crate::metrics::{Counters, RedisMetrics, add, bump};
use crate::pubsub::{self, Link, SubscribeRefused, SubscribeWait, Subscriptions};
use crate::script::{self, Entry, FrameParts, Malformed};

/// The [`Broker`] on Redis 7, standalone or cluster: many agentwire nodes share each
/// user's stream. See the crate docs for the data layout and the scripts.
///
/// Cloning is cheap and shares the connections; the subscription task stops when the last
/// clone is dropped.
#[derive(Debug, Clone)]
pub struct RedisBroker {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    config: RedisConfig,
    commands: Commands,
    scripts: Scripts,
    subs: Arc<Subscriptions>,
    counters: Arc<Counters>,
    /// `PUBLISH` on a standalone Redis, `SPUBLISH` (sharded) on a cluster.
    publish_command: &'static str,
    task: tokio::task::AbortHandle,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.subs.close();
        self.task.abort();
    }
}

#[derive(Debug)]
struct Scripts {
    publish: Script,
    history: Script,
    lookup: Script,
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl RedisBroker {
    /// Connects the command connection and the pub/sub connection and starts the
    /// subscription task (on the current tokio runtime).
    ///
    /// # Errors
    /// [`BrokerError::Unavailable`] (or [`BrokerError::Timeout`]) when Redis cannot be
    /// reached within the command timeout.
    pub async fn connect(config: RedisConfig) -> Result<Self, BrokerError> {
        let timeout = config.command_timeout;
        let commands = tokio::time::timeout(timeout, Commands::connect(&config.target, timeout))
            .await
            .map_err(|e| BrokerError::timeout("connecting to Redis timed out", e))?
            .map_err(|e| BrokerError::unavailable("cannot connect to Redis", e))?;
        let counters = Arc::new(Counters::default());
        let subs = Subscriptions::new(&config, counters.clone());
        let link = tokio::time::timeout(
            timeout,
            Link::connect(
                &config.target,
                timeout,
                subs.push_handler(0),
                &config.key_prefix,
            ),
        )
        .await
        .map_err(|e| BrokerError::timeout("connecting to Redis pub/sub timed out", e))?
        .map_err(|e| BrokerError::unavailable("cannot connect to Redis pub/sub", e))?;
        subs.started();
        let task = tokio::spawn(pubsub::run(subs.clone(), config.clone(), link)).abort_handle();
        let publish_command = match config.target {
            RedisTarget::Cluster(_) => "SPUBLISH",
            _ => "PUBLISH",
        };
        Ok(RedisBroker {
            inner: Arc::new(Inner {
                config,
                commands,
                scripts: Scripts {
                    publish: Script::new(script::PUBLISH),
                    history: Script::new(script::HISTORY),
                    lookup: Script::new(script::LOOKUP),
                },
                subs,
                counters,
                publish_command,
                task,
            }),
        })
    }

    /// The configuration in force.
    pub fn config(&self) -> &RedisConfig {
        &self.inner.config
    }

    /// What this broker counted since it connected.
    pub fn metrics(&self) -> RedisMetrics {
        self.inner.counters.snapshot()
    }

    /// The name the pub/sub connection carries on a standalone Redis (`CLIENT LIST`).
    pub fn pubsub_client_name(&self) -> String {
        format!("{PUBSUB_CLIENT_NAME}:{}", self.inner.config.key_prefix)
    }

    fn keys(&self, user: &UserId) -> UserKeys {
        UserKeys::new(&self.inner.config.key_prefix, user)
    }

    /// Runs one round trip under the command timeout, timing it and mapping its error.
    async fn round_trip<T>(
        &self,
        what: &'static str,
        call: impl Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, BrokerError> {
        let started = Instant::now();
        let result = tokio::time::timeout(self.inner.config.command_timeout, call).await;
        self.inner.counters.record_round_trip(started.elapsed());
        match result {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => Err(self.map_error(what, e)),
            Err(elapsed) => {
                bump(&self.inner.counters.timeouts);
                Err(BrokerError::timeout(
                    format!("Redis {what} did not answer within the command timeout"),
                    elapsed,
                ))
            }
        }
    }

    fn map_error(&self, what: &'static str, e: RedisError) -> BrokerError {
        let counters = &self.inner.counters;
        if e.is_timeout() {
            bump(&counters.timeouts);
            return BrokerError::timeout(format!("Redis {what} timed out"), e);
        }
        let transient_server = matches!(
            e.kind(),
            ErrorKind::Server(
                ServerErrorKind::BusyLoading
                    | ServerErrorKind::TryAgain
                    | ServerErrorKind::ClusterDown
                    | ServerErrorKind::MasterDown
                    | ServerErrorKind::ReadOnly
                    | ServerErrorKind::Moved
                    | ServerErrorKind::Ask
            )
        ) || matches!(e.code(), Some("OOM" | "BUSY" | "LOADING"));
        if e.is_io_error()
            || e.is_connection_dropped()
            || e.is_unrecoverable_error()
            || transient_server
        {
            bump(&counters.unavailable);
            return BrokerError::unavailable(format!("Redis {what} failed"), e);
        }
        // Anything else is an error raised inside a script: a bug, or a store that does not
        // hold what the scripts write. Counted, and answered as unavailable, so a publisher
        // retries (with the same ids: safe) rather than dropping the event.
        bump(&counters.script_errors);
        tracing::error!(error = %e, what, "Redis script error");
        BrokerError::unavailable(format!("Redis {what} script failed"), e)
    }

    fn malformed(&self, e: Malformed) -> BrokerError {
        bump(&self.inner.counters.script_errors);
        BrokerError::unavailable("Redis answered with something the scripts do not write", e)
    }

    /// One script call for a whole batch of one user's events.
    async fn publish_batch(
        &self,
        user: &UserId,
        events: Vec<NewEvent>,
    ) -> Result<Vec<Accepted>, BrokerError> {
        let config = &self.inner.config;
        if events.len() > config.max_batch_events {
            bump(&self.inner.counters.batches_refused);
            return Err(BrokerError::Rejected(
                format!(
                    "a batch of {} events exceeds max_batch_events ({})",
                    events.len(),
                    config.max_batch_events
                )
                .into(),
            ));
        }
        if events.is_empty() {
            return Ok(Vec::new());
        }
        let keys = self.keys(user);
        let mut call = self.inner.scripts.publish.prepare_invoke();
        for key in keys.script_keys() {
            call.key(key);
        }
        call.arg(Epoch::generate().as_str())
            .arg(config.max_events_per_user)
            .arg(millis(config.max_age))
            .arg(millis(config.dedupe_window))
            .arg(config.max_dedupe_per_user)
            .arg(millis(config.stream_idle_ttl))
            .arg(self.inner.publish_command)
            .arg(events.len());
        let mut ids = Vec::with_capacity(events.len());
        for event in &events {
            let id = event.event_id.clone().unwrap_or_else(EventId::generate);
            let parts = FrameParts::new(event.event_type, &id, &event.body).map_err(|_| {
                BrokerError::Rejected("the frame layout of compose_frame is not understood".into())
            })?;
            call.arg(id.as_str())
                .arg(event.digest.to_string())
                .arg(event.event_type.as_str())
                .arg(&parts.head[..])
                .arg(&parts.mid[..])
                .arg(&parts.tail[..]);
            ids.push(id);
        }
        let reply: Vec<Value> = self
            .round_trip("publish", self.inner.commands.invoke(&call))
            .await?;
        self.accepted(reply, ids)
    }

    fn accepted(&self, reply: Vec<Value>, ids: Vec<EventId>) -> Result<Vec<Accepted>, BrokerError> {
        let counters = &self.inner.counters;
        let bad = |what| self.malformed(Malformed { what });
        let mut items = reply.into_iter();
        match items.next().as_ref().and_then(text).as_deref() {
            Some("conflict") => {
                let index = items
                    .next()
                    .as_ref()
                    .and_then(int)
                    .ok_or_else(|| bad("conflict index"))?;
                let seq = items
                    .next()
                    .as_ref()
                    .and_then(int)
                    .ok_or_else(|| bad("conflict seq"))?;
                let event_id = usize::try_from(index)
                    .ok()
                    .and_then(|i| ids.get(i).cloned())
                    .ok_or_else(|| bad("conflict index"))?;
                bump(&counters.conflicts);
                Err(BrokerError::Conflict {
                    event_id,
                    seq: Seq(seq),
                })
            }
            Some("ok") => {
                let epoch = items
                    .next()
                    .as_ref()
                    .and_then(epoch)
                    .ok_or_else(|| bad("publish epoch"))?;
                let mut number =
                    |what| items.next().as_ref().and_then(int).ok_or_else(|| bad(what));
                add(&counters.epochs_created, number("publish created")?);
                add(&counters.history_trimmed, number("publish trimmed")?);
                add(&counters.dedupe_forgotten, number("publish forgotten")?);
                let mut accepted = Vec::with_capacity(ids.len());
                for event_id in ids {
                    let seq = number("publish seq")?;
                    let ts = number("publish ts")?;
                    let duplicate = number("publish duplicate")? == 1;
                    if duplicate {
                        bump(&counters.duplicates);
                    }
                    accepted.push(Accepted {
                        seq: Seq(seq),
                        event_id,
                        ts: Timestamp(ts),
                        epoch: epoch.clone(),
                        duplicate,
                    });
                }
                Ok(accepted)
            }
            _ => Err(bad("publish reply")),
        }
    }
}

fn text(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    }
}

fn epoch(v: &Value) -> Option<Epoch> {
    Epoch::new(text(v)?).ok()
}

fn int(v: &Value) -> Option<u64> {
    match v {
        Value::Int(n) => u64::try_from(*n).ok(),
        _ => None,
    }
}

/// One stream entry of an `XRANGE` reply: `[id, [field, value, …]]`.
fn stored_event(entry: Value, epoch: &Epoch) -> Result<StoredEvent, Malformed> {
    let bad = |what| Malformed { what };
    let Value::Array(parts) = entry else {
        return Err(bad("stream entry"));
    };
    let mut parts = parts.into_iter();
    let id = parts
        .next()
        .as_ref()
        .and_then(text)
        .ok_or_else(|| bad("stream entry id"))?;
    let (seq, ts) = script::entry_id(&id)?;
    let Some(Value::Array(fields)) = parts.next() else {
        return Err(bad("stream entry fields"));
    };
    let mut fields = fields.into_iter();
    let raw = match (fields.next(), fields.next()) {
        (Some(name), Some(Value::BulkString(raw))) if text(&name).as_deref() == Some("m") => raw,
        _ => return Err(bad("stream entry fields")),
    };
    let entry = Entry::decode(&Bytes::from(raw))?;
    Ok(StoredEvent {
        seq,
        event_id: entry.event_id,
        ts,
        event_type: entry.event_type,
        epoch: epoch.clone(),
        frame: entry.frame,
    })
}

/// Undoes a subscription whose `subscribe` call did not complete (an error, or the
/// caller's future was dropped).
struct SubscribeGuard<'a> {
    subs: &'a Subscriptions,
    channel: &'a str,
    subscriber: &'a Arc<dyn Subscriber>,
    armed: bool,
}

impl Drop for SubscribeGuard<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.subs.remove(self.channel, self.subscriber);
        }
    }
}

#[async_trait]
impl Broker for RedisBroker {
    async fn publish(&self, user: &UserId, event: NewEvent) -> Result<Accepted, BrokerError> {
        let mut accepted = self.publish_batch(user, vec![event]).await?;
        accepted.pop().ok_or_else(|| {
            self.malformed(Malformed {
                what: "publish reply",
            })
        })
    }

    /// One script call for the whole batch: all or nothing, in one round trip; calls for
    /// different users share the connection and are pipelined.
    async fn publish_many(
        &self,
        user: &UserId,
        events: Vec<NewEvent>,
    ) -> Result<Vec<Accepted>, BatchError> {
        self.publish_batch(user, events)
            .await
            .map_err(|error| BatchError::new(Vec::new(), error))
    }

    /// In effect when it returns: the first subscriber of a user on this node waits until
    /// Redis confirmed the channel subscription (batched with others pending), at most
    /// the command timeout.
    ///
    /// # Cancel safety
    /// Cancelling the call undoes the subscription, as an error does.
    async fn subscribe(
        &self,
        user: &UserId,
        subscriber: Arc<dyn Subscriber>,
    ) -> Result<(), BrokerError> {
        let subs = &self.inner.subs;
        let channel = self.keys(user).channel;
        let wait = match subs.add(&channel, user, subscriber.clone()) {
            Ok(wait) => wait,
            Err(SubscribeRefused::TooManyPending) => {
                return Err(BrokerError::Unavailable(
                    "too many subscriptions are waiting for Redis (max_pending_subscriptions)"
                        .into(),
                ));
            }
            Err(SubscribeRefused::Closed) => return Err(BrokerError::Closed),
        };
        let SubscribeWait::Pending(confirmed) = wait else {
            return Ok(());
        };
        let mut guard = SubscribeGuard {
            subs,
            channel: &channel,
            subscriber: &subscriber,
            armed: true,
        };
        match tokio::time::timeout(subs.timeout(), confirmed).await {
            Ok(Ok(())) => {
                guard.armed = false;
                Ok(())
            }
            Ok(Err(_)) => Err(BrokerError::Closed),
            Err(elapsed) => {
                bump(&self.inner.counters.timeouts);
                Err(BrokerError::timeout(
                    "Redis did not confirm the subscription within the command timeout",
                    elapsed,
                ))
            }
        }
    }

    /// Delivery to `subscriber` stops once every event accepted before the call has
    /// reached it: when this undoes its last subscription to the user, a barrier message
    /// is published on the user's channel and awaited (at most the command timeout)
    /// before the subscriber is removed. The channel is unsubscribed in Redis (batched)
    /// when its last local subscriber left. Never fails: the subscription is undone
    /// locally even when Redis cannot be reached.
    async fn unsubscribe(
        &self,
        user: &UserId,
        subscriber: &Arc<dyn Subscriber>,
    ) -> Result<(), BrokerError> {
        let subs = &self.inner.subs;
        let channel = self.keys(user).channel;
        if let Some(barrier) = subs.barrier(&channel, subscriber) {
            let mut publish = redis::cmd(self.inner.publish_command);
            publish.arg(&channel).arg(&barrier.message);
            let sent = self
                .round_trip(
                    "unsubscribe barrier",
                    self.inner.commands.query::<i64>(&publish),
                )
                .await;
            if sent.is_ok() {
                let _ = tokio::time::timeout(subs.timeout(), barrier.passed).await;
            }
            subs.forget_barrier(barrier.token);
        }
        subs.remove(&channel, subscriber);
        Ok(())
    }

    async fn history(
        &self,
        user: &UserId,
        after: Seq,
        limit: usize,
    ) -> Result<History, BrokerError> {
        let config = &self.inner.config;
        let keys = self.keys(user);
        let limit = limit.min(config.max_events_per_user);
        let mut call = self.inner.scripts.history.prepare_invoke();
        for key in keys.script_keys() {
            call.key(key);
        }
        call.arg(Epoch::generate().as_str())
            .arg(millis(config.max_age))
            .arg(millis(config.stream_idle_ttl))
            .arg(after.get())
            .arg(limit);
        let reply: Vec<Value> = self
            .round_trip("history", self.inner.commands.invoke(&call))
            .await?;
        let bad = |what| self.malformed(Malformed { what });
        let mut items = reply.into_iter();
        let epoch = items
            .next()
            .as_ref()
            .and_then(epoch)
            .ok_or_else(|| bad("history epoch"))?;
        let mut number = |what| items.next().as_ref().and_then(int).ok_or_else(|| bad(what));
        add(
            &self.inner.counters.epochs_created,
            number("history created")?,
        );
        add(
            &self.inner.counters.history_trimmed,
            number("history trimmed")?,
        );
        let last_seq = Seq(number("history last_seq")?);
        let first_held = Seq(number("history first_held")?);
        let entries = match items.next() {
            Some(Value::Array(entries)) => entries,
            _ => return Err(bad("history entries")),
        };
        let events = entries
            .into_iter()
            .map(|e| stored_event(e, &epoch))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| self.malformed(e))?;
        let gap = (after.next() < first_held && after < last_seq)
            .then(|| (after.next(), Seq(first_held.get() - 1)));
        Ok(History {
            epoch,
            last_seq,
            gap,
            events,
        })
    }

    async fn lookup(
        &self,
        user: &UserId,
        event_id: &EventId,
    ) -> Result<Option<Accepted>, BrokerError> {
        let keys = self.keys(user);
        let mut call = self.inner.scripts.lookup.prepare_invoke();
        for key in keys.script_keys() {
            call.key(key);
        }
        call.arg(event_id.as_str())
            .arg(millis(self.inner.config.dedupe_window));
        let reply: Value = self
            .round_trip("lookup", self.inner.commands.invoke(&call))
            .await?;
        let items = match reply {
            Value::Nil => return Ok(None),
            Value::Array(items) => items,
            _ => {
                return Err(self.malformed(Malformed {
                    what: "lookup reply",
                }));
            }
        };
        let found = (|| {
            let epoch = epoch(items.first()?)?;
            Some(Accepted {
                seq: Seq(int(items.get(1)?)?),
                event_id: event_id.clone(),
                ts: Timestamp(int(items.get(2)?)?),
                epoch,
                duplicate: true,
            })
        })();
        found.map(Some).ok_or_else(|| {
            self.malformed(Malformed {
                what: "lookup reply",
            })
        })
    }

    /// `PING` on the command connection, and the pub/sub connection up with every wanted
    /// channel subscribed: a node that cannot deliver is not ready either.
    async fn health(&self) -> Result<(), BrokerError> {
        let _: String = self
            .round_trip("PING", self.inner.commands.query(&redis::cmd("PING")))
            .await?;
        if !self.inner.subs.link_up() {
            return Err(BrokerError::Unavailable(
                "the Redis pub/sub connection is down; reconnecting".into(),
            ));
        }
        Ok(())
    }

    /// What this node counted; history sizes live in Redis and are not fetched here.
    fn stats(&self) -> BrokerStats {
        let m = self.metrics();
        BrokerStats {
            history_trimmed: m.history_trimmed,
            duplicates: m.duplicates,
            ..BrokerStats::default()
        }
    }
}
