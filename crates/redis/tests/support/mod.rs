//! Shared by this crate's integration tests: the conformance [`Harness`] for Redis
//! (standalone or cluster) and a recording subscriber.

#![allow(dead_code, unreachable_pub)]

use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use agentwire_manager::RunLimits;
use agentwire_manager::conformance::{Harness, Unsupported};
use agentwire_manager::{StoredEvent, Subscriber};
use agentwire_protocol::UserId;
use agentwire_redis::{RedisBroker, RedisConfig, RedisConfigBuilder, RedisTarget, RedisTls};
use async_trait::async_trait;
use tokio::sync::Notify;

/// Builds Redis brokers under one key prefix, on a standalone Redis or a cluster.
pub struct RedisHarness {
    pub target: RedisTarget,
    pub prefix: String,
    /// `host:port` of every node, to kill pub/sub connections and delete keys on.
    pub nodes: Vec<String>,
    /// What the brokers' `rediss://` connections trust and present.
    pub tls: RedisTls,
}

impl RedisHarness {
    pub fn standalone(url: &str, label: &str) -> Self {
        RedisHarness {
            target: RedisTarget::Standalone(url.to_owned()),
            prefix: agentwire_redis::testing::unique_prefix(label),
            nodes: vec![
                url.trim_start_matches("redis://")
                    .trim_end_matches('/')
                    .to_owned(),
            ],
            tls: RedisTls::new(),
        }
    }

    pub fn cluster(urls: Vec<String>, label: &str) -> Self {
        RedisHarness {
            nodes: urls
                .iter()
                .map(|u| u.trim_start_matches("redis://").to_owned())
                .collect(),
            target: RedisTarget::Cluster(urls),
            prefix: agentwire_redis::testing::unique_prefix(label),
            tls: RedisTls::new(),
        }
    }

    pub fn config(&self) -> RedisConfigBuilder {
        RedisConfig::builder(self.target.clone())
            .key_prefix(self.prefix.clone())
            .reconnect_backoff(Duration::from_millis(20), Duration::from_millis(500))
            .ping_interval(Duration::from_secs(1))
            .tls(self.tls.clone())
    }

    pub async fn connect(&self, config: RedisConfigBuilder) -> RedisBroker {
        let config = config.build().expect("valid test config");
        RedisBroker::connect(config)
            .await
            .expect("the test Redis answers")
    }

    async fn node(&self, addr: &str) -> redis::aio::MultiplexedConnection {
        redis::Client::open(format!("redis://{addr}"))
            .expect("valid url")
            .get_multiplexed_async_connection()
            .await
            .expect("the test Redis answers")
    }

    /// Kills the pub/sub connections of brokers under this harness's prefix (on a
    /// standalone Redis, found by their client name; on a private cluster, every pub/sub
    /// connection of every node).
    pub async fn kill_pubsub(&self, broker: &RedisBroker) {
        for addr in &self.nodes {
            let mut conn = self.node(addr).await;
            if matches!(self.target, RedisTarget::Cluster(_)) {
                let _: redis::Value = redis::cmd("CLIENT")
                    .arg(&["KILL", "TYPE", "pubsub"])
                    .query_async(&mut conn)
                    .await
                    .expect("CLIENT KILL");
                continue;
            }
            let list: String = redis::cmd("CLIENT")
                .arg(&["LIST", "TYPE", "pubsub"])
                .query_async(&mut conn)
                .await
                .expect("CLIENT LIST");
            let name = format!("name={}", broker.pubsub_client_name());
            for line in list.lines().filter(|l| l.split(' ').any(|f| f == name)) {
                let id = line
                    .split(' ')
                    .find_map(|f| f.strip_prefix("id="))
                    .expect("CLIENT LIST names the id");
                let _: redis::Value = redis::cmd("CLIENT")
                    .arg(&["KILL", "ID", id])
                    .query_async(&mut conn)
                    .await
                    .expect("CLIENT KILL");
            }
        }
    }

    /// Deletes every key under this harness's prefix on every node.
    pub async fn delete_keys(&self) {
        for addr in &self.nodes {
            let mut conn = self.node(addr).await;
            let mut cursor = 0u64;
            loop {
                let (next, keys): (u64, Vec<Vec<u8>>) = redis::cmd("SCAN")
                    .arg(cursor)
                    .arg("MATCH")
                    .arg(format!("{}*", self.prefix))
                    .arg("COUNT")
                    .arg(1000)
                    .query_async(&mut conn)
                    .await
                    .expect("SCAN");
                for key in keys {
                    let _: i64 = redis::cmd("UNLINK")
                        .arg(key)
                        .query_async(&mut conn)
                        .await
                        .expect("UNLINK");
                }
                if next == 0 {
                    break;
                }
                cursor = next;
            }
        }
    }
}

#[async_trait]
impl Harness for RedisHarness {
    type Broker = RedisBroker;

    async fn make(&self) -> RedisBroker {
        self.connect(self.config()).await
    }

    async fn make_keeping(&self, n: usize) -> RedisBroker {
        self.connect(self.config().max_events_per_user(n)).await
    }

    async fn make_aging(
        &self,
        max_age: Duration,
        dedupe_window: Duration,
    ) -> Result<RedisBroker, Unsupported> {
        // The stream itself (epoch and newest seq) lives as long as its dedupe entries, so
        // a stream whose events and ids all expired starts again (rule 7).
        Ok(self
            .connect(
                self.config()
                    .max_age(max_age)
                    .dedupe_window(dedupe_window)
                    .stream_idle_ttl(dedupe_window),
            )
            .await)
    }

    async fn make_with_runs(&self, limits: RunLimits) -> Result<RedisBroker, Unsupported> {
        // The registry counts every run under the prefix: a prefix of its own per broker,
        // so each starts with an empty registry, as a fresh in-memory broker does.
        let own = RedisHarness {
            target: self.target.clone(),
            prefix: format!("{}r{:06x}:", self.prefix, rand::random::<u32>() & 0xff_ffff),
            nodes: self.nodes.clone(),
            tls: self.tls.clone(),
        };
        Ok(own.connect(own.config().run_limits(limits)).await)
    }

    async fn advance(&self, by: Duration) {
        // Redis keeps its own (real) clock.
        tokio::time::sleep(by).await;
    }

    fn clock_slack(&self) -> Duration {
        Duration::from_millis(100)
    }

    async fn break_subscriptions(&self, broker: &RedisBroker) -> Result<(), Unsupported> {
        self.kill_pubsub(broker).await;
        Ok(())
    }

    async fn wipe(&self, _broker: &RedisBroker) -> Result<(), Unsupported> {
        self.delete_keys().await;
        Ok(())
    }
}

/// Runs the whole broker conformance suite on `harness`: every property runs and holds;
/// then deletes the keys it made.
pub async fn run_conformance(harness: &RedisHarness) {
    let report = agentwire_manager::conformance::run_all(harness).await;
    assert!(
        report.unsupported.is_empty(),
        "properties that did not run: {:?}",
        report.unsupported
    );
    assert_eq!(
        report.held,
        agentwire_manager::conformance::PROPERTIES,
        "every property held"
    );
    harness.delete_keys().await;
}

/// A user id from a name known valid.
pub fn user(name: &str) -> UserId {
    UserId::new(name).expect("valid user id")
}

/// A `custom` event numbered `n`, under the publisher's `id` if given.
pub fn custom_event(n: u64, id: Option<&str>) -> agentwire_manager::NewEvent {
    use agentwire_protocol::{Custom, Event, EventId, EventType};
    let body = Event::new(
        Some("thread-1".parse().expect("id")),
        Some("run-1".parse().expect("id")),
        Custom {
            name: "test".into(),
            value: n.into(),
            extra: Default::default(),
        },
    )
    .body_json();
    agentwire_manager::NewEvent::new(
        EventType::Custom,
        id.map(|i| EventId::new(i).expect("valid id")),
        body.into(),
    )
}

/// A new [`Recorder`] subscribed to `user` on `broker`.
pub async fn recorder_of(broker: &RedisBroker, user: &UserId) -> std::sync::Arc<Recorder> {
    use agentwire_manager::Broker;
    let rec = std::sync::Arc::new(Recorder::default());
    broker
        .subscribe(user, rec.clone())
        .await
        .expect("subscribe");
    rec
}

/// A subscriber that records deliveries and resyncs.
#[derive(Default)]
pub struct Recorder {
    got: Mutex<Vec<StoredEvent>>,
    resyncs: Mutex<Vec<UserId>>,
    changed: Notify,
}

impl Subscriber for Recorder {
    fn deliver(&self, _user: &UserId, event: &StoredEvent) {
        lock(&self.got).push(event.clone());
        self.changed.notify_waiters();
    }

    fn resync(&self, user: &UserId) {
        lock(&self.resyncs).push(user.clone());
        self.changed.notify_waiters();
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Recorder {
    pub fn events(&self) -> Vec<StoredEvent> {
        lock(&self.got).clone()
    }

    pub fn seqs(&self) -> Vec<u64> {
        lock(&self.got).iter().map(|e| e.seq.get()).collect()
    }

    pub fn resyncs(&self) -> Vec<UserId> {
        lock(&self.resyncs).clone()
    }

    /// Waits (at most 15 s) until `done` holds.
    pub async fn wait_until(&self, what: &str, done: impl Fn(&Recorder) -> bool) {
        let reached = async {
            loop {
                let changed = self.changed.notified();
                tokio::pin!(changed);
                changed.as_mut().enable();
                if done(self) {
                    return;
                }
                changed.await;
            }
        };
        if tokio::time::timeout(Duration::from_secs(15), reached)
            .await
            .is_err()
        {
            panic!(
                "{what}: not reached within 15 s; seqs {:?}, resyncs {:?}",
                self.seqs(),
                self.resyncs()
            );
        }
    }
}

/// Publishes to users whose ids hold braces, colons and percent signs, and checks each
/// got a stream of its own (on a cluster this also shows every key of a user shares one
/// slot: a script touching keys of two slots fails there).
pub async fn awkward_users(broker: &RedisBroker) {
    use agentwire_manager::{Broker, NewEvent};
    use agentwire_protocol::{Custom, Event, EventType, Seq};
    let names = [
        "a}b", "{a}", "}", "{", "a:b", "%7D", "%", "x}:meta", "{}", "a",
    ];
    let users: Vec<UserId> = names
        .iter()
        .map(|n| UserId::new(format!("{n}-{:08x}", rand_tag())).expect("valid user id"))
        .collect();
    for (i, u) in users.iter().enumerate() {
        for n in 0..=i as u64 {
            let body = Event::new(
                None,
                None,
                Custom {
                    name: u.to_string(),
                    value: n.into(),
                    extra: Default::default(),
                },
            )
            .body_json();
            broker
                .publish(u, NewEvent::new(EventType::Custom, None, body.into()))
                .await
                .expect("publish");
        }
    }
    for (i, u) in users.iter().enumerate() {
        let hist = broker.history(u, Seq::ZERO, 100).await.expect("history");
        assert_eq!(hist.last_seq, Seq(i as u64 + 1), "stream of {u:?}");
        assert_eq!(hist.events.len(), i + 1, "stream of {u:?}");
        for e in &hist.events {
            let text = String::from_utf8_lossy(&e.frame);
            let name = serde_json::to_string(u.as_str()).expect("json");
            assert!(
                text.contains(&name),
                "{u:?} holds another user's event: {text}"
            );
        }
    }
}

fn rand_tag() -> u32 {
    use std::time::{SystemTime, UNIX_EPOCH};
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0)
}

/// A harness whose brokers connect to `redis` over TLS with `tls`, cleaned up on its
/// plain port.
pub fn tls_harness(
    redis: &agentwire_redis::testing::TlsRedis,
    label: &str,
    tls: RedisTls,
) -> RedisHarness {
    RedisHarness {
        target: RedisTarget::Standalone(redis.url()),
        prefix: agentwire_redis::testing::unique_prefix(label),
        nodes: vec![redis.server.addr()],
        tls,
    }
}
