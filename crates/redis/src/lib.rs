//! `agentwire-redis`: the agentwire broker on Redis 7. (Crate docs in progress.)

mod broker;
mod config;
mod connect;
mod keys;
mod metrics;
mod pubsub;
mod script;

pub use broker::RedisBroker;
pub use config::{ConfigError, MAX_KEY_PREFIX_BYTES, RedisConfig, RedisConfigBuilder, RedisTarget};
pub use connect::PUBSUB_CLIENT_NAME;
pub use metrics::{LatencyHistogram, ROUND_TRIP_BUCKETS_MICROS, RedisMetrics};

#[cfg(feature = "testing")]
pub mod testing;
