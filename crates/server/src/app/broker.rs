//! The broker a server runs on, built from its configuration: the one place where
//! `--broker` becomes a [`Broker`] (the in-memory broker, or Redis with the `redis`
//! feature), and where the server's history, dedupe and run-state settings become the
//! broker's bounds.
//!
//! State shared across nodes that is not a user's stream (cluster-wide limits, control
//! messages) belongs beside this: [`ServerBroker::redis`] hands out the Redis broker the
//! server connected.

use std::sync::Arc;
use std::time::Duration;

use agentwire_manager::{
    Broker, BrokerError, InMemoryBroker, InMemoryRates, PublishRates, UnifiedWebSocketManager,
};

use super::config::{BrokerKind, ServerConfig};

/// Why the configured broker could not be set up. The server does not start: a node that
/// cannot reach the streams it serves would accept connections it cannot feed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BrokerSetupError {
    /// `--broker redis` without `--redis-url` or `--redis-cluster-nodes`.
    #[error(
        "--broker redis needs --redis-url (AGENTWIRE_REDIS_URL), e.g. redis://127.0.0.1:6379, \
         or --redis-cluster-nodes (AGENTWIRE_REDIS_CLUSTER_NODES)"
    )]
    NoRedisTarget,
    /// Both `--redis-url` and `--redis-cluster-nodes`.
    #[error(
        "--redis-url and --redis-cluster-nodes are both set: give one (a standalone Redis, or \
         the nodes of a Redis Cluster)"
    )]
    TwoRedisTargets,
    /// A Redis address with `--broker memory`: several nodes would each keep their own
    /// streams, and events published on one would never reach users connected to another.
    #[error(
        "{flag} is set but --broker is memory: add --broker redis to share streams between \
         nodes, or drop {flag}"
    )]
    RedisWithoutBroker {
        /// The flag that was set.
        flag: &'static str,
    },
    /// A Redis setting out of range: the URL, the key prefix, or a bound the history and
    /// run-state settings give.
    #[cfg(feature = "redis")]
    #[error("invalid Redis setting: {0}")]
    RedisConfig(#[from] agentwire_redis::ConfigError),
    /// Redis did not answer at start.
    #[error(
        "cannot reach Redis at {target} (within --redis-command-timeout {timeout:?}): \
         {source}. Start Redis or correct the address; the server does not start without it"
    )]
    Unreachable {
        /// Where Redis was looked for (passwords hidden).
        target: String,
        /// How long the connection was given.
        timeout: Duration,
        /// Why it failed.
        #[source]
        source: BrokerError,
    },
    /// `--broker redis` in a build without the `redis` feature.
    #[error(
        "--broker redis is not in this build: build agentwire-server with its `redis` \
         feature (the binary has it)"
    )]
    RedisNotBuilt,
}

/// The broker of a server, connected: the in-memory broker, or Redis. Cheap to clone.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum ServerBroker {
    /// In-process history (`--broker memory`): one node.
    Memory(Arc<InMemoryBroker>),
    /// Redis (`--broker redis`): many nodes share every user's stream.
    #[cfg(feature = "redis")]
    Redis(agentwire_redis::RedisBroker),
}

impl ServerBroker {
    /// The broker `config` asks for, with its history, dedupe and run-state bounds; for
    /// Redis, connected (within `redis_command_timeout`).
    ///
    /// # Errors
    /// [`BrokerSetupError`]: Redis settings missing, contradictory or out of range, Redis
    /// unreachable, or not in this build.
    pub async fn connect(config: &ServerConfig) -> Result<ServerBroker, BrokerSetupError> {
        match config.broker {
            BrokerKind::Memory => {
                if config.redis_url.is_some() {
                    return Err(BrokerSetupError::RedisWithoutBroker {
                        flag: "--redis-url",
                    });
                }
                if !config.redis_cluster_nodes.is_empty() {
                    return Err(BrokerSetupError::RedisWithoutBroker {
                        flag: "--redis-cluster-nodes",
                    });
                }
                for (set, flag) in [
                    (config.redis_tls_ca_file.is_some(), "--redis-tls-ca-file"),
                    (
                        config.redis_tls_cert_file.is_some(),
                        "--redis-tls-cert-file",
                    ),
                    (config.redis_tls_key_file.is_some(), "--redis-tls-key-file"),
                ] {
                    if set {
                        return Err(BrokerSetupError::RedisWithoutBroker { flag });
                    }
                }
                Ok(ServerBroker::Memory(Arc::new(
                    InMemoryBroker::new(config.history_config())
                        .with_run_limits(config.run_limits()),
                )))
            }
            #[cfg(feature = "redis")]
            BrokerKind::Redis => connect_redis(config).await,
            #[cfg(not(feature = "redis"))]
            BrokerKind::Redis => Err(BrokerSetupError::RedisNotBuilt),
        }
    }

    /// The broker, as the manager takes it.
    pub fn broker(&self) -> Arc<dyn Broker> {
        match self {
            ServerBroker::Memory(b) => b.clone(),
            #[cfg(feature = "redis")]
            ServerBroker::Redis(b) => Arc::new(b.clone()),
        }
    }

    /// A manager with the bounds of `config` over this broker: on Redis, one node of the
    /// cluster sharing it (the per-user limit counted across the nodes, the admin's
    /// requests answered by all of them).
    pub fn manager(&self, config: &ServerConfig) -> UnifiedWebSocketManager {
        match self {
            ServerBroker::Memory(_) => {
                UnifiedWebSocketManager::new(config.manager_config(), self.broker())
            }
            #[cfg(feature = "redis")]
            ServerBroker::Redis(b) => UnifiedWebSocketManager::clustered(
                config.manager_config(),
                self.broker(),
                b.cluster(),
            ),
        }
    }

    /// The publish rate limiter: this node's with the in-memory broker, the cluster's on
    /// Redis (one rate per key for every node).
    pub fn rates(&self) -> Arc<dyn PublishRates> {
        match self {
            ServerBroker::Memory(_) => Arc::new(InMemoryRates::default()),
            #[cfg(feature = "redis")]
            ServerBroker::Redis(b) => Arc::new(b.rates()),
        }
    }

    /// The Redis broker, with `--broker redis`.
    #[cfg(feature = "redis")]
    pub fn redis(&self) -> Option<&agentwire_redis::RedisBroker> {
        match self {
            ServerBroker::Redis(b) => Some(b),
            ServerBroker::Memory(_) => None,
        }
    }
}

/// The Redis broker's configuration: where Redis is (exactly one of `--redis-url` and
/// `--redis-cluster-nodes`), the key prefix, and the bounds the server's history, dedupe,
/// batch and run-state settings give, each raised to what the Redis broker requires of the
/// others (a dedupe window at least the history age, …). `--history-max-bytes` does not
/// apply: Redis's own `maxmemory` bounds the total.
///
/// # Errors
/// [`BrokerSetupError`] when the address is missing, doubled or invalid, or a setting is
/// out of range.
#[cfg(feature = "redis")]
pub fn redis_config(
    config: &ServerConfig,
) -> Result<agentwire_redis::RedisConfig, BrokerSetupError> {
    use agentwire_redis::{RedisConfig, RedisTarget, RedisTls};
    let target = match (&config.redis_url, config.redis_cluster_nodes.as_slice()) {
        (Some(url), []) => RedisTarget::Standalone(url.clone()),
        (None, []) => return Err(BrokerSetupError::NoRedisTarget),
        (None, nodes) => RedisTarget::Cluster(nodes.to_vec()),
        (Some(_), _) => return Err(BrokerSetupError::TwoRedisTargets),
    };
    // The Redis broker's own defaults, for the bounds the server has no setting of.
    let defaults = RedisConfig::builder(target.clone()).build()?;
    let history = config.history_config();
    let max_events = history.max_events_per_user.max(1);
    let max_age = history.max_age.max(Duration::from_millis(1));
    let dedupe_window = history.dedupe_window.max(max_age);
    Ok(RedisConfig::builder(target)
        .key_prefix(config.redis_key_prefix.clone())
        .max_events_per_user(max_events)
        .max_age(max_age)
        .dedupe_window(dedupe_window)
        .max_dedupe_per_user(defaults.max_dedupe_per_user().max(max_events))
        .stream_idle_ttl(defaults.stream_idle_ttl().max(dedupe_window))
        .command_timeout(config.redis_command_timeout)
        .connection_lease(config.connection_lease)
        .control_wait(config.redis_control_wait)
        .max_batch_events(defaults.max_batch_events().max(config.max_batch))
        .run_limits(config.run_limits())
        .tls(RedisTls::from_files(
            config.redis_tls_ca_file.as_deref(),
            config.redis_tls_cert_file.as_deref(),
            config.redis_tls_key_file.as_deref(),
        )?)
        .build()?)
}

/// Where `target` is, for messages: URLs with their passwords hidden.
#[cfg(feature = "redis")]
fn describe(target: &agentwire_redis::RedisTarget) -> String {
    use agentwire_redis::{RedisTarget, redact_url};
    match target {
        RedisTarget::Standalone(url) => redact_url(url),
        RedisTarget::Cluster(nodes) => {
            let nodes: Vec<String> = nodes.iter().map(|n| redact_url(n)).collect();
            format!("the cluster of {}", nodes.join(", "))
        }
        _ => "the configured Redis".to_owned(),
    }
}

#[cfg(feature = "redis")]
async fn connect_redis(config: &ServerConfig) -> Result<ServerBroker, BrokerSetupError> {
    let redis = redis_config(config)?;
    let target = describe(redis.target());
    let timeout = redis.command_timeout();
    let broker = agentwire_redis::RedisBroker::connect(redis)
        .await
        .map_err(|source| BrokerSetupError::Unreachable {
            target: target.clone(),
            timeout,
            source,
        })?;
    tracing::info!(
        redis = %target,
        key_prefix = %config.redis_key_prefix,
        "connected to Redis: this node shares every user's stream with the others"
    );
    Ok(ServerBroker::Redis(broker))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(feature = "redis")]
    fn redis(change: impl FnOnce(&mut ServerConfig)) -> ServerConfig {
        let mut c = ServerConfig {
            broker: BrokerKind::Redis,
            ..ServerConfig::default()
        };
        change(&mut c);
        c
    }

    #[tokio::test]
    async fn the_memory_broker_stays_the_default_and_refuses_a_redis_address() {
        let memory = ServerBroker::connect(&ServerConfig::default())
            .await
            .expect("memory");
        assert!(matches!(memory, ServerBroker::Memory(_)));
        let stray = ServerConfig {
            redis_url: Some("redis://127.0.0.1:6379".into()),
            ..ServerConfig::default()
        };
        let e = ServerBroker::connect(&stray).await.expect_err("stray URL");
        assert!(e.to_string().contains("--broker redis"), "{e}");
    }

    #[cfg(feature = "redis")]
    #[tokio::test]
    async fn redis_needs_exactly_one_valid_address() {
        let e = ServerBroker::connect(&redis(|_| {}))
            .await
            .expect_err("no address");
        assert!(matches!(e, BrokerSetupError::NoRedisTarget), "{e}");
        let both = redis(|c| {
            c.redis_url = Some("redis://127.0.0.1:6379".into());
            c.redis_cluster_nodes = vec!["redis://127.0.0.1:7000".into()];
        });
        let e = ServerBroker::connect(&both).await.expect_err("two");
        assert!(matches!(e, BrokerSetupError::TwoRedisTargets), "{e}");
        let bad = redis(|c| c.redis_url = Some("http://:hunter2@127.0.0.1:6379".into()));
        let e = ServerBroker::connect(&bad).await.expect_err("bad URL");
        assert!(matches!(e, BrokerSetupError::RedisConfig(_)), "{e}");
        assert!(!e.to_string().contains("hunter2"), "{e}");
        let prefix = redis(|c| {
            c.redis_url = Some("redis://127.0.0.1:6379".into());
            c.redis_key_prefix = "has space".into();
        });
        let e = ServerBroker::connect(&prefix).await.expect_err("prefix");
        assert!(e.to_string().contains("key prefix"), "{e}");
    }

    #[cfg(feature = "redis")]
    #[tokio::test]
    async fn an_unreachable_redis_is_named_without_its_password() {
        // A port nothing listens on: bind one, note it, close it.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let c = redis(|c| {
            c.redis_url = Some(format!("redis://:hunter2@127.0.0.1:{port}"));
            c.redis_command_timeout = Duration::from_millis(500);
        });
        let e = ServerBroker::connect(&c).await.expect_err("unreachable");
        assert!(matches!(e, BrokerSetupError::Unreachable { .. }), "{e}");
        let text = e.to_string();
        assert!(text.contains(&format!("127.0.0.1:{port}")), "{text}");
        assert!(!text.contains("hunter2"), "{text}");
    }

    #[cfg(feature = "redis")]
    #[test]
    fn the_server_settings_become_the_redis_bounds() {
        let c = redis(|c| {
            c.redis_url = Some("redis://127.0.0.1:6379".into());
            c.redis_key_prefix = "tenant-7:".into();
            c.history_max_events = 20_000;
            c.history_max_age = Duration::from_secs(60);
            c.dedupe_window = Some(Duration::from_secs(30));
            c.max_batch = 5_000;
            c.max_runs = 7;
        });
        let r = redis_config(&c).expect("valid");
        assert_eq!(r.key_prefix(), "tenant-7:");
        assert_eq!(r.max_events_per_user(), 20_000);
        assert_eq!(r.max_age(), Duration::from_secs(60));
        // Never shorter than history, as on one node.
        assert_eq!(r.dedupe_window(), Duration::from_secs(60));
        assert_eq!(r.max_dedupe_per_user(), 20_000);
        assert_eq!(r.max_batch_events(), 5_000);
        assert_eq!(r.run_limits().max_runs, 7);
        assert_eq!(r.command_timeout(), c.redis_command_timeout);
        assert_eq!(r.connection_lease(), c.connection_lease);
        assert_eq!(r.control_wait(), c.redis_control_wait);
        let cluster = redis(|c| {
            c.redis_cluster_nodes = vec!["redis://127.0.0.1:7000".into()];
        });
        assert!(matches!(
            redis_config(&cluster).expect("cluster").target(),
            agentwire_redis::RedisTarget::Cluster(nodes) if nodes.len() == 1
        ));
    }
}
