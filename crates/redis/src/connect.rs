//! Connections to Redis: the shared command connection ([`Commands`]) and the client
//! settings the pub/sub link uses too.

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::{FromRedisValue, IntoConnectionInfo, ProtocolVersion, RedisResult, ScriptInvocation};

use crate::config::RedisTarget;
use crate::tls::{RedisTls, install_crypto_provider};

/// The name the pub/sub connection gives itself on a standalone Redis (`CLIENT SETNAME`),
/// followed by the key prefix, so operators can tell it in `CLIENT LIST`.
pub const PUBSUB_CLIENT_NAME: &str = "agentwire-pubsub";

/// A client for one server, speaking RESP3 (pushes on a connection that also answers
/// commands), over TLS as `tls` says when the address is `rediss://`.
pub(crate) fn client(url: &str, tls: &RedisTls) -> RedisResult<redis::Client> {
    client_speaking(url, tls, ProtocolVersion::RESP3)
}

/// A client for one server speaking `protocol`, over TLS as `tls` says when the address
/// is `rediss://` (the system's CA certificates when `tls` sets none).
pub(crate) fn client_speaking(
    url: &str,
    tls: &RedisTls,
    protocol: ProtocolVersion,
) -> RedisResult<redis::Client> {
    let info = url.into_connection_info()?;
    let settings = info.redis_settings().clone().set_protocol(protocol);
    let info = info.set_redis_settings(settings);
    if matches!(info.addr(), redis::ConnectionAddr::TcpTls { .. }) {
        install_crypto_provider();
        if tls.is_set() {
            return redis::Client::build_with_tls(info, tls.certificates());
        }
    }
    redis::Client::open(info)
}

/// A cluster client builder with the broker's timeouts and TLS settings. Retries inside
/// the client are few: the broker's own timeout bounds every call, and the pub/sub task
/// has its own backoff.
pub(crate) fn cluster_builder(
    nodes: &[String],
    timeout: Duration,
    tls: &RedisTls,
) -> ClusterClientBuilder {
    let builder = ClusterClientBuilder::new(nodes.to_vec())
        .use_protocol(ProtocolVersion::RESP3)
        .connection_timeout(timeout)
        .response_timeout(timeout)
        .retries(2);
    if nodes.iter().any(|n| n.starts_with("rediss:")) {
        install_crypto_provider();
    }
    if tls.is_set() {
        builder.certs(tls.certificates())
    } else {
        builder
    }
}

/// The connection every command and script call goes through: one multiplexed connection
/// that reconnects by itself (standalone), or a cluster connection that routes each call
/// to the node owning its keys' slot. Concurrent calls share it and are pipelined on the
/// wire.
#[derive(Clone)]
pub(crate) enum Commands {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl std::fmt::Debug for Commands {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Commands::Single(_) => "Commands::Single",
            Commands::Cluster(_) => "Commands::Cluster",
        })
    }
}

impl Commands {
    pub(crate) async fn connect(
        target: &RedisTarget,
        timeout: Duration,
        tls: &RedisTls,
    ) -> RedisResult<Self> {
        Ok(match target {
            RedisTarget::Standalone(url) => {
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(timeout))
                    .set_response_timeout(Some(timeout))
                    .set_number_of_retries(1);
                Commands::Single(
                    ConnectionManager::new_with_config(client(url, tls)?, config).await?,
                )
            }
            RedisTarget::Cluster(nodes) => Commands::Cluster(
                cluster_builder(nodes, timeout, tls)
                    .build()?
                    .get_async_connection()
                    .await?,
            ),
        })
    }

    /// Runs a script (`EVALSHA`, loading it on `NOSCRIPT`).
    pub(crate) async fn invoke<T: FromRedisValue>(
        &self,
        script: &ScriptInvocation<'_>,
    ) -> RedisResult<T> {
        match self {
            Commands::Single(c) => script.invoke_async(&mut c.clone()).await,
            Commands::Cluster(c) => script.invoke_async(&mut c.clone()).await,
        }
    }

    /// Runs one command.
    pub(crate) async fn query<T: FromRedisValue>(&self, cmd: &redis::Cmd) -> RedisResult<T> {
        match self {
            Commands::Single(c) => cmd.query_async(&mut c.clone()).await,
            Commands::Cluster(c) => cmd.query_async(&mut c.clone()).await,
        }
    }
}

/// Exponential backoff with full jitter between reconnect attempts: each wait is random
/// up to a ceiling that starts at `min` and doubles up to `max`.
#[derive(Debug)]
pub(crate) struct Backoff {
    ceiling: Duration,
    min: Duration,
    max: Duration,
}

impl Backoff {
    pub(crate) fn new(min: Duration, max: Duration) -> Self {
        Backoff {
            ceiling: min,
            min,
            max,
        }
    }

    /// Waits before the next attempt.
    pub(crate) async fn wait(&mut self) {
        tokio::time::sleep(rand::random_range(Duration::ZERO..=self.ceiling)).await;
        self.ceiling = (self.ceiling * 2).min(self.max);
    }

    /// Starts again from `min` (after a success).
    pub(crate) fn reset(&mut self) {
        self.ceiling = self.min;
    }
}
