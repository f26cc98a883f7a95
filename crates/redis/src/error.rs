//! [`ConfigError`]: why a Redis setting cannot be used, for [`RedisConfig`] and
//! [`RedisTls`] alike.
//!
//! [`RedisConfig`]: crate::RedisConfig
//! [`RedisTls`]: crate::RedisTls

/// Why a [`RedisConfig`](crate::RedisConfig) cannot be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A cluster target with no node.
    #[error("a Redis Cluster target needs at least one node address")]
    NoClusterNodes,
    /// The key prefix breaks a rule (see
    /// [`RedisConfigBuilder::key_prefix`](crate::RedisConfigBuilder::key_prefix)).
    #[error("invalid key prefix {prefix:?}: {reason}")]
    KeyPrefix {
        /// The rejected prefix.
        prefix: String,
        /// The rule it breaks.
        reason: &'static str,
    },
    /// A Redis address that does not parse (`redis://host:port[/db]`, `rediss://` for
    /// TLS, or `unix://` for a standalone Redis). The URL is shown with its password
    /// hidden.
    #[error("invalid Redis URL {url:?}: {reason}")]
    Url {
        /// The rejected URL, its password replaced by `***`.
        url: String,
        /// Why it does not parse.
        reason: String,
    },
    /// A TLS setting that cannot be used: a file that cannot be read, a PEM that holds no
    /// certificate or key, a certificate without its key, or TLS settings for an address
    /// that is not `rediss://`.
    #[error("{what}: {reason}")]
    Tls {
        /// What is wrong, e.g. `the Redis CA certificate`.
        what: String,
        /// Why.
        reason: String,
    },
    /// A bound is zero or out of its range.
    #[error("invalid {name}: {reason}")]
    Bound {
        /// The setting's name.
        name: &'static str,
        /// What is wrong with it.
        reason: String,
    },
}
