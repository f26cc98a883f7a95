//! Subscriptions: which local subscribers want which user's channel, the dedicated pub/sub
//! connection ([`Link`]), and the task that keeps Redis's subscriptions equal to that
//! registry — in batches, and again in full after a reconnect, followed by a resync of
//! every subscribed user.
//!
//! Messages are handed to subscribers on the connection's reader, inside the push
//! callback: `Subscriber::deliver` never awaits, so the reader never waits on a subscriber
//! and no queue sits between Redis and the subscribers.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use agentwire_manager::{StoredEvent, Subscriber};
use agentwire_protocol::UserId;
use bytes::Bytes;
use futures_util::future::try_join_all;
use redis::aio::MultiplexedConnection;
use redis::cluster_async::ClusterConnection;
use redis::{PushInfo, PushKind, RedisResult, Value};
use tokio::sync::{Notify, oneshot};

use crate::config::{RedisConfig, RedisTarget};
use crate::connect::{self, Backoff, PUBSUB_CLIENT_NAME};
use crate::metrics::{Counters, bump};
use crate::script::Message;
use crate::tls::RedisTls;

/// The local subscribers of one user's channel.
struct Channel {
    user: UserId,
    subscribers: Vec<(Arc<dyn Subscriber>, usize)>,
    /// Redis confirmed the subscription on the current link: events published from now on
    /// reach this node.
    active: bool,
}

#[derive(Default)]
struct Registry {
    channels: HashMap<String, Channel>,
    /// Channels whose subscription in Redis may differ from what `channels` wants.
    dirty: HashSet<String>,
    /// Channels Redis dropped on its own (their slot moved): subscribe again, then resync.
    lost: HashSet<String>,
    /// `subscribe` calls waiting for their channel to become active.
    waiters: Vec<(String, oneshot::Sender<()>)>,
    /// Unsubscribes waiting for their barrier message, by token.
    barriers: HashMap<u64, oneshot::Sender<()>>,
    next_barrier: u64,
    /// Generation of the current link; pushes of older links are ignored.
    link: u64,
    /// The current link was reported lost: the subscription task makes a new one.
    broken: bool,
    /// The current link is up with every wanted channel subscribed (for health).
    up: bool,
    closed: bool,
}

/// Shared by the broker, the push callback and the subscription task.
pub(crate) struct Subscriptions {
    registry: Mutex<Registry>,
    wake: Notify,
    counters: Arc<Counters>,
    max_pending: usize,
    timeout: Duration,
    /// Names this broker's barrier messages among those of other nodes.
    instance: u64,
}

/// Barrier messages start with this line; no message the publish script writes does
/// (it starts with a seq).
const BARRIER: &[u8] = b"barrier\n";

/// What an unsubscribe waits for before it stops delivery: its own message on the user's
/// channel, published after every event accepted before the unsubscribe was called.
#[derive(Debug)]
struct Barrier {
    token: u64,
    message: Vec<u8>,
    passed: oneshot::Receiver<()>,
}

impl std::fmt::Debug for Subscriptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let registry = self.registry();
        f.debug_struct("Subscriptions")
            .field("channels", &registry.channels.len())
            .field("pending", &registry.dirty.len())
            .field("broken", &registry.broken)
            .finish_non_exhaustive()
    }
}

/// What `subscribe` must wait for.
pub(crate) enum SubscribeWait {
    /// The channel is active: the subscription is in effect.
    Ready,
    /// Wait for this; a dropped sender means the broker closed.
    Pending(oneshot::Receiver<()>),
}

/// Why a subscription could not be made.
pub(crate) enum SubscribeRefused {
    /// `max_pending_subscriptions` changes are waiting already.
    TooManyPending,
    /// The broker is closed.
    Closed,
}

fn same(a: &Arc<dyn Subscriber>, b: &Arc<dyn Subscriber>) -> bool {
    std::ptr::addr_eq(Arc::as_ptr(a), Arc::as_ptr(b))
}

impl Subscriptions {
    pub(crate) fn new(config: &RedisConfig, counters: Arc<Counters>) -> Arc<Self> {
        Arc::new(Subscriptions {
            registry: Mutex::new(Registry::default()),
            wake: Notify::new(),
            counters,
            max_pending: config.max_pending_subscriptions,
            timeout: config.command_timeout,
            instance: rand::random(),
        })
    }

    fn registry(&self) -> MutexGuard<'_, Registry> {
        // Every mutation below completes before anything that can panic, so a poisoned
        // registry is still consistent.
        self.registry.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn set_pending_gauge(&self, registry: &Registry) {
        self.counters.pending_subscriptions.store(
            registry.dirty.len() as u64,
            std::sync::atomic::Ordering::Relaxed,
        );
    }

    /// Records one subscription of `subscriber` to `user`'s `channel`.
    pub(crate) fn add(
        &self,
        channel: &str,
        user: &UserId,
        subscriber: Arc<dyn Subscriber>,
    ) -> Result<SubscribeWait, SubscribeRefused> {
        let mut registry = self.registry();
        if registry.closed {
            return Err(SubscribeRefused::Closed);
        }
        let known = registry.channels.get(channel).map(|c| c.active);
        if known == Some(true) {
            if let Some(c) = registry.channels.get_mut(channel) {
                add_subscriber(c, subscriber);
            }
            return Ok(SubscribeWait::Ready);
        }
        if known.is_none() && registry.dirty.len() >= self.max_pending {
            bump(&self.counters.subscribes_refused);
            return Err(SubscribeRefused::TooManyPending);
        }
        let entry = registry
            .channels
            .entry(channel.to_owned())
            .or_insert_with(|| Channel {
                user: user.clone(),
                subscribers: Vec::new(),
                active: false,
            });
        add_subscriber(entry, subscriber);
        registry.dirty.insert(channel.to_owned());
        let (tx, rx) = oneshot::channel();
        registry.waiters.push((channel.to_owned(), tx));
        self.set_pending_gauge(&registry);
        drop(registry);
        self.wake.notify_one();
        Ok(SubscribeWait::Pending(rx))
    }

    /// When `subscriber` holds a subscription of an active channel, the barrier to wait
    /// for before undoing one. Messages reach this node in publish order, so once the
    /// barrier (published after the caller's call began) arrives, every event accepted
    /// while the subscription was held has been delivered to it.
    ///
    /// Asked for by every unsubscribe, not only one that finds the subscriber's last
    /// subscription: two calls that each see the other's still held would both skip it,
    /// and a call waiting for its barrier ends delivery when it passes, before the events
    /// of a subscription made, used and undone meanwhile have arrived.
    fn barrier(&self, channel: &str, subscriber: &Arc<dyn Subscriber>) -> Option<Barrier> {
        let mut registry = self.registry();
        let entry = registry.channels.get(channel)?;
        let held = entry.subscribers.iter().any(|(s, _)| same(s, subscriber));
        if !held || !entry.active {
            return None;
        }
        registry.next_barrier += 1;
        let token = registry.next_barrier;
        let (tx, passed) = oneshot::channel();
        registry.barriers.insert(token, tx);
        let message = format!("barrier\n{:016x}\n{token}", self.instance).into_bytes();
        Some(Barrier {
            token,
            message,
            passed,
        })
    }

    /// Forgets a barrier that passed or was given up on.
    fn forget_barrier(&self, token: u64) {
        self.registry().barriers.remove(&token);
    }

    /// Undoes one subscription of `subscriber` to `channel`, once every event accepted
    /// before the call has reached it: when [`Subscriptions::barrier`] asks for one, the
    /// barrier message is published with `publish` (which answers whether Redis took it)
    /// and awaited, at most the command timeout. Undone locally whatever Redis does.
    pub(crate) async fn unsubscribe<F>(
        &self,
        channel: &str,
        subscriber: &Arc<dyn Subscriber>,
        publish: impl FnOnce(Vec<u8>) -> F,
    ) where
        F: Future<Output = bool>,
    {
        if let Some(barrier) = self.barrier(channel, subscriber) {
            if publish(barrier.message).await {
                let _ = tokio::time::timeout(self.timeout, barrier.passed).await;
            }
            self.forget_barrier(barrier.token);
        }
        self.remove(channel, subscriber);
    }

    fn on_barrier(&self, payload: &[u8]) {
        let text = String::from_utf8_lossy(&payload[BARRIER.len()..]);
        let Some((instance, token)) = text.split_once('\n') else {
            return;
        };
        if u64::from_str_radix(instance, 16) != Ok(self.instance) {
            return;
        }
        if let Ok(token) = token.parse::<u64>()
            && let Some(tx) = self.registry().barriers.remove(&token)
        {
            let _ = tx.send(());
        }
    }

    /// Undoes one subscription; the channel is unsubscribed in Redis when its last local
    /// subscriber leaves.
    pub(crate) fn remove(&self, channel: &str, subscriber: &Arc<dyn Subscriber>) {
        let mut registry = self.registry();
        let Some(entry) = registry.channels.get_mut(channel) else {
            return;
        };
        if let Some(i) = entry
            .subscribers
            .iter()
            .position(|(s, _)| same(s, subscriber))
        {
            entry.subscribers[i].1 -= 1;
            if entry.subscribers[i].1 == 0 {
                entry.subscribers.swap_remove(i);
            }
        }
        if entry.subscribers.is_empty() {
            registry.channels.remove(channel);
            registry.dirty.insert(channel.to_owned());
            self.set_pending_gauge(&registry);
            drop(registry);
            self.wake.notify_one();
        }
    }

    /// Whether the pub/sub link is up.
    pub(crate) fn link_up(&self) -> bool {
        self.registry().up
    }

    /// The first link (generation 0) is up.
    pub(crate) fn started(&self) {
        self.registry().up = true;
    }

    /// How long a `subscribe` waits for its channel.
    pub(crate) fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Stops the subscription task; pending `subscribe` calls fail with `Closed`.
    pub(crate) fn close(&self) {
        let mut registry = self.registry();
        registry.closed = true;
        registry.waiters.clear();
        drop(registry);
        self.wake.notify_one();
    }

    /// The push callback of link generation `link`: runs on the connection's reader.
    pub(crate) fn push_handler(
        self: &Arc<Self>,
        link: u64,
    ) -> impl Fn(PushInfo) -> Result<(), ()> + Send + Sync + 'static {
        let subs = Arc::downgrade(self);
        move |push| {
            if let Some(subs) = subs.upgrade() {
                subs.on_push(link, push);
            }
            Ok(())
        }
    }

    fn on_push(&self, link: u64, push: PushInfo) {
        let mut data = push.data.into_iter();
        match push.kind {
            PushKind::Message | PushKind::SMessage => {
                let (Some(Value::BulkString(channel)), Some(Value::BulkString(payload))) =
                    (data.next(), data.next())
                else {
                    bump(&self.counters.malformed_messages);
                    return;
                };
                self.on_message(link, &channel, Bytes::from(payload));
            }
            PushKind::Disconnection => {
                let mut registry = self.registry();
                if registry.link == link {
                    registry.broken = true;
                    registry.up = false;
                }
                drop(registry);
                self.wake.notify_one();
            }
            PushKind::Unsubscribe | PushKind::SUnsubscribe => {
                let Some(Value::BulkString(channel)) = data.next() else {
                    return;
                };
                let Ok(channel) = String::from_utf8(channel) else {
                    return;
                };
                let mut registry = self.registry();
                // An unsubscribe this node did not ask for: Redis moved the channel's
                // slot. One this node asked for concerns a channel no longer wanted (or
                // wanted again and not yet active), and is ignored.
                let unasked = registry.link == link
                    && registry.channels.get(&channel).is_some_and(|c| c.active);
                if unasked {
                    if let Some(c) = registry.channels.get_mut(&channel) {
                        c.active = false;
                    }
                    registry.lost.insert(channel.clone());
                    registry.dirty.insert(channel);
                    self.set_pending_gauge(&registry);
                    drop(registry);
                    self.wake.notify_one();
                }
            }
            _ => {}
        }
    }

    fn on_message(&self, link: u64, channel: &[u8], payload: Bytes) {
        if payload.starts_with(BARRIER) {
            self.on_barrier(&payload);
            return;
        }
        let Ok(channel) = std::str::from_utf8(channel) else {
            bump(&self.counters.malformed_messages);
            return;
        };
        let message = Message::decode(&payload);
        let registry = self.registry();
        // A message of an older link may repeat one the current link delivered: the
        // resync that followed the switch covers whatever the old link still carried.
        if registry.link != link {
            return;
        }
        let Some(entry) = registry.channels.get(channel) else {
            return;
        };
        match message {
            Ok(m) => {
                let event = StoredEvent {
                    seq: m.seq,
                    event_id: m.entry.event_id,
                    ts: m.ts,
                    event_type: m.entry.event_type,
                    epoch: m.epoch,
                    frame: m.entry.frame,
                };
                for (subscriber, _) in &entry.subscribers {
                    subscriber.deliver(&entry.user, &event);
                }
                bump(&self.counters.messages_delivered);
            }
            Err(e) => {
                // Something this broker did not write was published on the channel, or a
                // message was damaged: whatever it held is in history, so the subscribers
                // catch up from there.
                tracing::warn!(channel, error = %e, "dropped a malformed pub/sub message");
                bump(&self.counters.malformed_messages);
                for (subscriber, _) in &entry.subscribers {
                    bump(&self.counters.resyncs);
                    subscriber.resync(&entry.user);
                }
            }
        }
    }

    /// Takes the pending changes: (to unsubscribe, to subscribe, lost and to resync once
    /// subscribed again). Wanted channels already on the server become active at once.
    fn take_changes(&self, on_server: &mut HashSet<String>) -> Changes {
        let mut registry = self.registry();
        let dirty = std::mem::take(&mut registry.dirty);
        let lost = std::mem::take(&mut registry.lost);
        let mut changes = Changes::default();
        for channel in dirty {
            if lost.contains(&channel) {
                on_server.remove(&channel);
            }
            let on = on_server.contains(&channel);
            match (registry.channels.get_mut(&channel), on) {
                (Some(_), false) => changes.subscribe.push(channel),
                (None, true) => changes.unsubscribe.push(channel),
                (Some(c), true) => c.active = true,
                (None, false) => {}
            }
        }
        changes.lost = lost;
        release_waiters(&mut registry);
        self.set_pending_gauge(&registry);
        changes
    }

    /// Marks `subscribed` active, wakes their waiters, and resyncs the users of those in
    /// `resync` (or of every channel when `resync` is `None`).
    fn activate(&self, subscribed: &[String], resync: Option<&HashSet<String>>) {
        let mut registry = self.registry();
        for channel in subscribed {
            if let Some(c) = registry.channels.get_mut(channel) {
                c.active = true;
            }
        }
        release_waiters(&mut registry);
        for (name, channel) in &registry.channels {
            if !channel.active || resync.is_some_and(|only| !only.contains(name)) {
                continue;
            }
            for (subscriber, _) in &channel.subscribers {
                bump(&self.counters.resyncs);
                subscriber.resync(&channel.user);
            }
        }
    }

    /// Starts a new link generation: every channel inactive until subscribed again.
    fn begin_link(&self) -> u64 {
        let mut registry = self.registry();
        registry.link += 1;
        registry.broken = false;
        registry.up = false;
        for channel in registry.channels.values_mut() {
            channel.active = false;
        }
        registry.lost.clear();
        registry.link
    }

    /// Whether link generation `link` is still current and was not reported lost; if so
    /// it counts as up from now on.
    fn link_restored(&self, link: u64) -> bool {
        let mut registry = self.registry();
        registry.up = registry.link == link && !registry.broken;
        registry.up
    }

    fn wanted(&self) -> Vec<String> {
        self.registry().channels.keys().cloned().collect()
    }

    fn take_broken(&self) -> bool {
        self.registry().broken
    }

    fn closed(&self) -> bool {
        self.registry().closed
    }

    fn mark_broken(&self) {
        let mut registry = self.registry();
        registry.broken = true;
        registry.up = false;
    }
}

fn add_subscriber(channel: &mut Channel, subscriber: Arc<dyn Subscriber>) {
    match channel
        .subscribers
        .iter_mut()
        .find(|(s, _)| same(s, &subscriber))
    {
        Some((_, count)) => *count += 1,
        None => channel.subscribers.push((subscriber, 1)),
    }
}

/// Wakes every waiter whose channel is active; forgets those whose channel or caller is
/// gone.
fn release_waiters(registry: &mut Registry) {
    for (channel, tx) in std::mem::take(&mut registry.waiters) {
        match registry.channels.get(&channel) {
            Some(c) if c.active => {
                let _ = tx.send(());
            }
            Some(_) if !tx.is_closed() => registry.waiters.push((channel, tx)),
            _ => {}
        }
    }
}

#[derive(Default)]
struct Changes {
    subscribe: Vec<String>,
    unsubscribe: Vec<String>,
    lost: HashSet<String>,
}

/// The dedicated pub/sub connection: one to a standalone Redis (classic pub/sub), or a
/// cluster connection whose `SSUBSCRIBE`s go to the node owning each channel's slot.
pub(crate) enum Link {
    Single(MultiplexedConnection),
    Cluster(ClusterConnection),
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Link::Single(_) => "Link::Single",
            Link::Cluster(_) => "Link::Cluster",
        })
    }
}

impl Link {
    pub(crate) async fn connect(
        target: &RedisTarget,
        timeout: Duration,
        tls: &RedisTls,
        push: impl redis::aio::AsyncPushSender,
        key_prefix: &str,
    ) -> RedisResult<Link> {
        Ok(match target {
            RedisTarget::Standalone(url) => {
                let client = connect::client(url, tls)?;
                let config = redis::AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(timeout))
                    .set_response_timeout(Some(timeout))
                    .set_push_sender(push);
                let mut conn = client
                    .get_multiplexed_async_connection_with_config(&config)
                    .await?;
                redis::cmd("CLIENT")
                    .arg("SETNAME")
                    .arg(format!("{PUBSUB_CLIENT_NAME}:{key_prefix}"))
                    .exec_async(&mut conn)
                    .await?;
                Link::Single(conn)
            }
            RedisTarget::Cluster(nodes) => {
                let client = connect::cluster_builder(nodes, timeout, tls)
                    .push_sender(push)
                    .build()?;
                Link::Cluster(client.get_async_connection().await?)
            }
        })
    }

    /// Unsubscribes then subscribes, `batch` channels per command (per concurrent round
    /// on a cluster, where each shard channel is its own command).
    async fn apply(
        &self,
        unsubscribe: &[String],
        subscribe: &[String],
        batch: usize,
        counters: &Counters,
    ) -> RedisResult<()> {
        match self {
            Link::Single(conn) => {
                try_join_all(unsubscribe.chunks(batch).map(|chunk| {
                    bump(&counters.unsubscribe_commands);
                    let mut conn = conn.clone();
                    async move { conn.unsubscribe(chunk).await }
                }))
                .await?;
                try_join_all(subscribe.chunks(batch).map(|chunk| {
                    bump(&counters.subscribe_commands);
                    let mut conn = conn.clone();
                    async move { conn.subscribe(chunk).await }
                }))
                .await?;
            }
            Link::Cluster(conn) => {
                for chunk in unsubscribe.chunks(batch) {
                    try_join_all(chunk.iter().map(|channel| {
                        bump(&counters.unsubscribe_commands);
                        let mut conn = conn.clone();
                        async move { conn.sunsubscribe(channel).await }
                    }))
                    .await?;
                }
                for chunk in subscribe.chunks(batch) {
                    try_join_all(chunk.iter().map(|channel| {
                        bump(&counters.subscribe_commands);
                        let mut conn = conn.clone();
                        async move { conn.ssubscribe(channel).await }
                    }))
                    .await?;
                }
            }
        }
        Ok(())
    }

    async fn ping(&self) -> RedisResult<()> {
        match self {
            Link::Single(conn) => redis::cmd("PING").exec_async(&mut conn.clone()).await,
            Link::Cluster(conn) => redis::cmd("PING").exec_async(&mut conn.clone()).await,
        }
    }
}

/// Keeps Redis's subscriptions equal to the registry until the broker closes.
pub(crate) async fn run(subs: Arc<Subscriptions>, config: RedisConfig, mut link: Link) {
    let batch = config.subscribe_batch;
    let timeout = config.command_timeout;
    let mut on_server: HashSet<String> = HashSet::new();
    let mut ping = tokio::time::interval(config.ping_interval);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ping.tick().await;
    loop {
        if subs.closed() {
            return;
        }
        if subs.take_broken() {
            drop(link);
            match restore(&subs, &config, &mut on_server).await {
                Some(restored) => link = restored,
                None => return,
            }
            continue;
        }
        let changes = subs.take_changes(&mut on_server);
        if !changes.subscribe.is_empty() || !changes.unsubscribe.is_empty() {
            let applied = tokio::time::timeout(
                timeout,
                link.apply(
                    &changes.unsubscribe,
                    &changes.subscribe,
                    batch,
                    &subs.counters,
                ),
            )
            .await;
            match applied {
                Ok(Ok(())) => {
                    for channel in &changes.unsubscribe {
                        on_server.remove(channel);
                    }
                    on_server.extend(changes.subscribe.iter().cloned());
                    set_channels_gauge(&subs.counters, &on_server);
                    subs.activate(&changes.subscribe, Some(&changes.lost));
                }
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "changing Redis subscriptions failed; reconnecting");
                    subs.mark_broken();
                }
                Err(_) => {
                    bump(&subs.counters.timeouts);
                    tracing::warn!("changing Redis subscriptions timed out; reconnecting");
                    subs.mark_broken();
                }
            }
            continue;
        }
        tokio::select! {
            () = subs.wake.notified() => {}
            _ = ping.tick() => {
                let alive = tokio::time::timeout(timeout, link.ping()).await;
                if !matches!(alive, Ok(Ok(()))) {
                    bump(&subs.counters.ping_failures);
                    tracing::warn!("the Redis pub/sub connection did not answer PING; reconnecting");
                    subs.mark_broken();
                }
            }
        }
    }
}

fn set_channels_gauge(counters: &Counters, on_server: &HashSet<String>) {
    counters
        .subscribed_channels
        .store(on_server.len() as u64, std::sync::atomic::Ordering::Relaxed);
}

/// Makes a new link and subscribes every wanted channel on it, with backoff and full
/// jitter between attempts; then resyncs every subscribed user. `None` once closed.
async fn restore(
    subs: &Arc<Subscriptions>,
    config: &RedisConfig,
    on_server: &mut HashSet<String>,
) -> Option<Link> {
    bump(&subs.counters.reconnects);
    on_server.clear();
    set_channels_gauge(&subs.counters, on_server);
    let mut backoff = Backoff::new(config.reconnect_min, config.reconnect_max);
    loop {
        if subs.closed() {
            return None;
        }
        let generation = subs.begin_link();
        let attempt = async {
            let link = Link::connect(
                &config.target,
                config.command_timeout,
                &config.tls,
                subs.push_handler(generation),
                &config.key_prefix,
            )
            .await?;
            let wanted = subs.wanted();
            link.apply(&[], &wanted, config.subscribe_batch, &subs.counters)
                .await?;
            RedisResult::Ok((link, wanted))
        };
        match tokio::time::timeout(config.command_timeout, attempt).await {
            Ok(Ok((link, wanted))) if subs.link_restored(generation) => {
                on_server.extend(wanted.iter().cloned());
                set_channels_gauge(&subs.counters, on_server);
                tracing::info!(channels = wanted.len(), "Redis pub/sub connection restored");
                subs.activate(&wanted, None);
                return Some(link);
            }
            Ok(Ok(_)) => tracing::warn!("the new Redis pub/sub connection dropped at once"),
            Ok(Err(e)) => tracing::warn!(error = %e, "reconnecting to Redis pub/sub failed"),
            Err(_) => tracing::warn!("reconnecting to Redis pub/sub timed out"),
        }
        bump(&subs.counters.reconnect_failures);
        backoff.wait().await;
    }
}

#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use futures_util::task::noop_waker_ref;

    use super::*;

    /// Records the seqs it is handed.
    #[derive(Default)]
    struct Seqs(Mutex<Vec<u64>>);

    impl Subscriber for Seqs {
        fn deliver(&self, _user: &UserId, event: &StoredEvent) {
            self.got().push(event.seq.get());
        }
    }

    impl Seqs {
        fn got(&self) -> MutexGuard<'_, Vec<u64>> {
            self.0.lock().unwrap_or_else(|p| p.into_inner())
        }
    }

    const CHANNEL: &str = "events:u";

    /// Subscriptions with `CHANNEL` active for `holder`, as if Redis had confirmed it.
    fn active_channel(user: &UserId, holder: Arc<dyn Subscriber>) -> Arc<Subscriptions> {
        let config = RedisConfig::builder(RedisTarget::Standalone("redis://127.0.0.1".into()))
            .build()
            .expect("valid config");
        let subs = Subscriptions::new(&config, Arc::default());
        assert!(matches!(
            subs.add(CHANNEL, user, holder),
            Ok(SubscribeWait::Pending(_))
        ));
        subs.activate(&[CHANNEL.to_owned()], Some(&HashSet::new()));
        subs
    }

    fn subscribe_now(subs: &Subscriptions, user: &UserId, subscriber: &Arc<dyn Subscriber>) {
        assert!(matches!(
            subs.add(CHANNEL, user, subscriber.clone()),
            Ok(SubscribeWait::Ready)
        ));
    }

    fn event(seq: u64) -> Bytes {
        Bytes::from(format!("{seq}\n1\ne_1\ncustom\nid-{seq}\n{{}}"))
    }

    fn poll_once<F: Future + ?Sized>(future: &mut Pin<Box<F>>) -> Poll<F::Output> {
        future
            .as_mut()
            .poll(&mut Context::from_waker(noop_waker_ref()))
    }

    /// One task's unsubscribe waits for its barrier while another subscription of the same
    /// subscriber is made, holds an event, and is undone; the first unsubscribe ends as
    /// soon as its barrier arrives, before that event does. The event still reaches the
    /// subscriber, because every unsubscribe — not only one that finds itself last —
    /// waits for a barrier published after its call began.
    #[tokio::test]
    async fn an_event_held_by_one_subscription_arrives_whatever_another_unsubscribe_does() {
        let user = UserId::new("u").expect("valid user");
        let control = Arc::new(Seqs::default());
        let subs = active_channel(&user, control.clone());
        let seqs = Arc::new(Seqs::default());
        let shared: Arc<dyn Subscriber> = seqs.clone();
        // What Redis publishes on the channel, in its order.
        let wire = Arc::new(Mutex::new(Vec::<Bytes>::new()));
        let publisher = || {
            let wire = wire.clone();
            move |message: Vec<u8>| {
                wire.lock().expect("wire").push(Bytes::from(message));
                std::future::ready(true)
            }
        };
        let arrive = |n: usize| {
            let message = wire.lock().expect("wire")[n].clone();
            subs.on_message(0, CHANNEL.as_bytes(), message);
        };

        subscribe_now(&subs, &user, &shared);
        let mut first = Box::pin(subs.unsubscribe(CHANNEL, &shared, publisher()));
        assert!(poll_once(&mut first).is_pending(), "waits for its barrier");

        subscribe_now(&subs, &user, &shared);
        wire.lock().expect("wire").push(event(1));
        let mut second = Box::pin(subs.unsubscribe(CHANNEL, &shared, publisher()));
        let _ = poll_once(&mut second);

        arrive(0);
        assert!(poll_once(&mut first).is_ready(), "its barrier passed");
        arrive(1);
        assert_eq!(*control.got(), [1]);
        assert_eq!(
            *seqs.got(),
            [1],
            "an event accepted while subscribed was not delivered"
        );

        let barriers = wire.lock().expect("wire").len();
        assert_eq!(barriers, 3, "the second unsubscribe published a barrier");
        assert!(poll_once(&mut second).is_pending());
        arrive(2);
        assert!(poll_once(&mut second).is_ready());
        wire.lock().expect("wire").push(event(2));
        arrive(3);
        assert_eq!(*control.got(), [1, 2]);
        assert_eq!(*seqs.got(), [1], "delivered after the last unsubscribe");
    }
}
