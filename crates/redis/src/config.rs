//! [`RedisConfig`]: where Redis is, and every bound the Redis broker keeps.

use std::time::Duration;

use agentwire_manager::RunLimits;

use crate::error::ConfigError;
use crate::tls::RedisTls;

/// Which Redis to use.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RedisTarget {
    /// One Redis server (or a primary behind a stable address), e.g.
    /// `redis://127.0.0.1:6379`.
    Standalone(String),
    /// A Redis Cluster, given by one or more of its nodes, e.g.
    /// `["redis://10.0.0.1:7000", "redis://10.0.0.2:7000"]`; the rest are discovered.
    Cluster(Vec<String>),
}

/// Longest key prefix accepted, in bytes.
pub const MAX_KEY_PREFIX_BYTES: usize = 64;

/// Where Redis is and the bounds the broker keeps there and in this process. Built with
/// [`RedisConfig::builder`]; every setting has a default named on its builder method.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisConfig {
    pub(crate) target: RedisTarget,
    pub(crate) key_prefix: String,
    pub(crate) max_events_per_user: usize,
    pub(crate) max_age: Duration,
    pub(crate) dedupe_window: Duration,
    pub(crate) max_dedupe_per_user: usize,
    pub(crate) stream_idle_ttl: Duration,
    pub(crate) command_timeout: Duration,
    pub(crate) max_batch_events: usize,
    pub(crate) subscribe_batch: usize,
    pub(crate) max_pending_subscriptions: usize,
    pub(crate) reconnect_min: Duration,
    pub(crate) reconnect_max: Duration,
    pub(crate) ping_interval: Duration,
    pub(crate) run_limits: RunLimits,
    pub(crate) connection_lease: Duration,
    pub(crate) control_wait: Duration,
    pub(crate) tls: RedisTls,
}

impl RedisConfig {
    /// A builder with every default, for `target`.
    pub fn builder(target: RedisTarget) -> RedisConfigBuilder {
        RedisConfigBuilder {
            config: RedisConfig {
                target,
                key_prefix: "agentwire:".to_owned(),
                max_events_per_user: 1_000,
                max_age: Duration::from_secs(600),
                dedupe_window: Duration::from_secs(600),
                max_dedupe_per_user: 10_000,
                stream_idle_ttl: Duration::from_secs(24 * 3600),
                command_timeout: Duration::from_secs(2),
                max_batch_events: 1_000,
                subscribe_batch: 256,
                max_pending_subscriptions: 10_000,
                reconnect_min: Duration::from_millis(50),
                reconnect_max: Duration::from_secs(5),
                ping_interval: Duration::from_secs(5),
                run_limits: RunLimits::default(),
                connection_lease: Duration::from_secs(30),
                control_wait: Duration::from_secs(1),
                tls: RedisTls::new(),
            },
        }
    }

    /// The Redis in use.
    pub fn target(&self) -> &RedisTarget {
        &self.target
    }

    /// The TLS settings of `rediss://` addresses.
    pub fn tls(&self) -> &RedisTls {
        &self.tls
    }

    /// The prefix of every key and channel.
    pub fn key_prefix(&self) -> &str {
        &self.key_prefix
    }

    /// Most events kept per user.
    pub fn max_events_per_user(&self) -> usize {
        self.max_events_per_user
    }

    /// Oldest event kept in history.
    pub fn max_age(&self) -> Duration {
        self.max_age
    }

    /// How long an accepted `event_id` is recognised.
    pub fn dedupe_window(&self) -> Duration {
        self.dedupe_window
    }

    /// Most `event_id`s recognised per user.
    pub fn max_dedupe_per_user(&self) -> usize {
        self.max_dedupe_per_user
    }

    /// How long a user's epoch and newest seq outlive the user's last publish or read.
    pub fn stream_idle_ttl(&self) -> Duration {
        self.stream_idle_ttl
    }

    /// Longest wait for one Redis command.
    pub fn command_timeout(&self) -> Duration {
        self.command_timeout
    }

    /// Most events in one `publish_many` call.
    pub fn max_batch_events(&self) -> usize {
        self.max_batch_events
    }

    /// The bounds of the run state kept for guarded events.
    pub fn run_limits(&self) -> &RunLimits {
        &self.run_limits
    }

    /// How long a connection lease counts without renewal.
    pub fn connection_lease(&self) -> Duration {
        self.connection_lease
    }

    /// How long a control request waits for the other nodes.
    pub fn control_wait(&self) -> Duration {
        self.control_wait
    }
}

/// Builds a [`RedisConfig`]; [`build`](Self::build) checks the settings together.
#[derive(Debug, Clone)]
pub struct RedisConfigBuilder {
    config: RedisConfig,
}

impl RedisConfigBuilder {
    /// Prefix of every key and channel (default `agentwire:`), so several deployments or
    /// tests can share one Redis. At most [`MAX_KEY_PREFIX_BYTES`] bytes, no `{` or `}`
    /// (the user is the hash tag), no whitespace or control characters.
    #[must_use]
    pub fn key_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.config.key_prefix = prefix.into();
        self
    }

    /// Most events kept per user (default 1,000): each append trims the oldest beyond it
    /// (`XADD … MAXLEN`, exact). Counted in `history_trimmed`.
    #[must_use]
    pub fn max_events_per_user(mut self, n: usize) -> Self {
        self.config.max_events_per_user = n;
        self
    }

    /// Oldest event kept in history (default 10 minutes): publishes and reads trim older
    /// events (`XTRIM … MINID`), and a stream unused this long expires whole. Counted in
    /// `history_trimmed`.
    #[must_use]
    pub fn max_age(mut self, age: Duration) -> Self {
        self.config.max_age = age;
        self
    }

    /// How long an accepted `event_id` is recognised (default 10 minutes, at least
    /// [`max_age`](Self::max_age)): a publish with a known id inside it answers the first
    /// acceptance, and `lookup` finds it. Dedupe entries past it are dropped; counted in
    /// `dedupe_forgotten`.
    #[must_use]
    pub fn dedupe_window(mut self, window: Duration) -> Self {
        self.config.dedupe_window = window;
        self
    }

    /// Most `event_id`s recognised per user (default 10,000, at least
    /// [`max_events_per_user`](Self::max_events_per_user)): the oldest beyond it are
    /// forgotten even inside the window. Counted in `dedupe_forgotten`.
    #[must_use]
    pub fn max_dedupe_per_user(mut self, n: usize) -> Self {
        self.config.max_dedupe_per_user = n;
        self
    }

    /// How long a user's epoch and newest seq outlive the user's last publish or history
    /// read (default 24 hours, at least the dedupe window). When it passes, the user's
    /// next publish or read starts a new epoch; counted in `epochs_created`.
    #[must_use]
    pub fn stream_idle_ttl(mut self, ttl: Duration) -> Self {
        self.config.stream_idle_ttl = ttl;
        self
    }

    /// Longest wait for one Redis command or script call (default 2 s); past it the call
    /// fails with `BrokerError::Timeout`. Counted in `timeouts`.
    #[must_use]
    pub fn command_timeout(mut self, timeout: Duration) -> Self {
        self.config.command_timeout = timeout;
        self
    }

    /// Most events in one `publish_many` call (default 1,000): one script call carries
    /// them all, so this bounds a script's arguments and run time. A larger batch is
    /// refused whole (`BrokerError::Rejected`); counted in `batches_refused`.
    #[must_use]
    pub fn max_batch_events(mut self, n: usize) -> Self {
        self.config.max_batch_events = n;
        self
    }

    /// Most channels in one `SSUBSCRIBE`/`SUNSUBSCRIBE` command (default 256); pending
    /// changes beyond it go in further commands of the same round. Counted in
    /// `subscribe_commands`.
    #[must_use]
    pub fn subscribe_batch(mut self, n: usize) -> Self {
        self.config.subscribe_batch = n;
        self
    }

    /// Most channel changes waiting for the subscription task (default 10,000); a
    /// `subscribe` beyond it fails with `BrokerError::Unavailable`. Counted in
    /// `subscribes_refused`.
    #[must_use]
    pub fn max_pending_subscriptions(mut self, n: usize) -> Self {
        self.config.max_pending_subscriptions = n;
        self
    }

    /// Reconnect backoff of the pub/sub connection (defaults 50 ms and 5 s): each failed
    /// attempt doubles the ceiling up to `max`, and the wait is drawn uniformly below the
    /// ceiling (full jitter), so nodes that lost Redis together do not return together.
    /// Counted in `reconnects`.
    #[must_use]
    pub fn reconnect_backoff(mut self, min: Duration, max: Duration) -> Self {
        self.config.reconnect_min = min;
        self.config.reconnect_max = max;
        self
    }

    /// How often the pub/sub connection is checked with `PING` (default 5 s), so a
    /// connection that died without a word is replaced. Counted in `ping_failures`.
    #[must_use]
    pub fn ping_interval(mut self, interval: Duration) -> Self {
        self.config.ping_interval = interval;
        self
    }

    /// The bounds of the run state kept for guarded events (default
    /// [`RunLimits::default`]), for the whole cluster: the run registry counts every run of
    /// every node (see the crate docs). Counted in `runs_refused`, `runs_evicted` and
    /// `runs_expired`.
    #[must_use]
    pub fn run_limits(mut self, limits: RunLimits) -> Self {
        self.config.run_limits = limits;
        self
    }

    /// How long a connection's lease counts against its user's limit without being renewed
    /// (default 30 s; at least 30 ms): the longest a connection of a node that died, or
    /// lost Redis, keeps counting. Nodes renew every third of it. Counted in
    /// `lease_evictions`, `lease_rejections`, `leases_lost`, `leases_restored`,
    /// `evicted_leases_forgotten`.
    #[must_use]
    pub fn connection_lease(mut self, lease: Duration) -> Self {
        self.config.connection_lease = lease;
        self
    }

    /// How long a request on the control channel (an admin's list or disconnect of a
    /// user's connections on every node) waits for the other nodes' answers (default 1 s).
    /// Nodes that did not answer in time are named in the answer and counted in
    /// `control_unanswered`.
    #[must_use]
    pub fn control_wait(mut self, wait: Duration) -> Self {
        self.config.control_wait = wait;
        self
    }

    /// The CA to trust and the client certificate to present on `rediss://` addresses
    /// (default: the system's CA certificates, no client certificate). Every address must
    /// then be `rediss://`.
    #[must_use]
    pub fn tls(mut self, tls: RedisTls) -> Self {
        self.config.tls = tls;
        self
    }

    /// Checks the settings together.
    ///
    /// # Errors
    /// [`ConfigError`] naming the first setting that is out of range.
    pub fn build(self) -> Result<RedisConfig, ConfigError> {
        let c = self.config;
        if let RedisTarget::Cluster(nodes) = &c.target
            && nodes.is_empty()
        {
            return Err(ConfigError::NoClusterNodes);
        }
        let urls: &[String] = match &c.target {
            RedisTarget::Standalone(url) => std::slice::from_ref(url),
            RedisTarget::Cluster(nodes) => nodes,
        };
        for url in urls {
            let info =
                redis::IntoConnectionInfo::into_connection_info(url.as_str()).map_err(|e| {
                    ConfigError::Url {
                        url: redact_url(url),
                        reason: e.to_string(),
                    }
                })?;
            if c.tls.is_set() && !matches!(info.addr(), redis::ConnectionAddr::TcpTls { .. }) {
                return Err(ConfigError::Tls {
                    what: "the Redis TLS settings".to_owned(),
                    reason: format!("need rediss:// addresses; {} is not one", redact_url(url)),
                });
            }
        }
        let prefix_error = |reason| ConfigError::KeyPrefix {
            prefix: c.key_prefix.clone(),
            reason,
        };
        if c.key_prefix.len() > MAX_KEY_PREFIX_BYTES {
            return Err(prefix_error("longer than 64 bytes"));
        }
        if c.key_prefix.contains(['{', '}']) {
            return Err(prefix_error(
                "holds `{` or `}`, which would move the hash tag",
            ));
        }
        if c.key_prefix
            .chars()
            .any(|ch| ch.is_whitespace() || ch.is_control())
        {
            return Err(prefix_error("holds whitespace or a control character"));
        }
        let bound = |name, reason: String| Err(ConfigError::Bound { name, reason });
        for (name, n) in [
            ("max_events_per_user", c.max_events_per_user),
            ("max_dedupe_per_user", c.max_dedupe_per_user),
            ("max_batch_events", c.max_batch_events),
            ("subscribe_batch", c.subscribe_batch),
            ("max_pending_subscriptions", c.max_pending_subscriptions),
        ] {
            if n == 0 {
                return bound(name, "must be at least 1".into());
            }
        }
        for (name, n) in [
            ("run_limits.max_runs", c.run_limits.max_runs),
            ("run_limits.max_bytes", c.run_limits.max_bytes),
            (
                "run_limits.max_runs_per_owner",
                c.run_limits.max_runs_per_owner,
            ),
            (
                "run_limits.max_bytes_per_owner",
                c.run_limits.max_bytes_per_owner,
            ),
        ] {
            if n == 0 {
                return bound(name, "must be at least 1".into());
            }
        }
        for (name, d) in [
            ("run_limits.ttl", c.run_limits.ttl),
            ("max_age", c.max_age),
            ("command_timeout", c.command_timeout),
            ("reconnect_backoff", c.reconnect_min),
            ("ping_interval", c.ping_interval),
            ("control_wait", c.control_wait),
        ] {
            if d < Duration::from_millis(1) {
                return bound(name, "must be at least 1 ms".into());
            }
        }
        if c.connection_lease < Duration::from_millis(30) {
            return bound("connection_lease", "must be at least 30 ms".into());
        }
        if c.reconnect_max < c.reconnect_min {
            return bound("reconnect_backoff", "max is below min".into());
        }
        if c.dedupe_window < c.max_age {
            return bound(
                "dedupe_window",
                format!(
                    "{:?} is shorter than max_age {:?}",
                    c.dedupe_window, c.max_age
                ),
            );
        }
        if c.max_dedupe_per_user < c.max_events_per_user {
            return bound(
                "max_dedupe_per_user",
                format!(
                    "{} is below max_events_per_user {}",
                    c.max_dedupe_per_user, c.max_events_per_user
                ),
            );
        }
        if c.stream_idle_ttl < c.dedupe_window {
            return bound(
                "stream_idle_ttl",
                format!(
                    "{:?} is shorter than dedupe_window {:?}",
                    c.stream_idle_ttl, c.dedupe_window
                ),
            );
        }
        Ok(c)
    }
}

/// `url` with the password of its user information replaced by `***`
/// (`redis://user:***@host:6379`), for logs and error messages.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            // Without a colon the one part may be a password (`redis://secret@host`).
            let user = userinfo.split_once(':').map_or("", |(user, _)| user);
            format!("{scheme}://{user}:***@{host}{path}")
        }
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn local() -> RedisConfigBuilder {
        RedisConfig::builder(RedisTarget::Standalone("redis://127.0.0.1:6379".into()))
    }

    #[test]
    fn defaults_build() {
        let c = local().build().expect("defaults are valid");
        assert_eq!(c.key_prefix(), "agentwire:");
        assert!(c.dedupe_window() >= c.max_age());
    }

    #[test]
    fn prefixes_that_would_break_the_hash_tag_are_refused() {
        for bad in ["a{b", "a}", "has space", "tab\t", &"x".repeat(65)] {
            assert!(
                matches!(
                    local().key_prefix(bad).build(),
                    Err(ConfigError::KeyPrefix { .. })
                ),
                "{bad:?}"
            );
        }
        assert!(local().key_prefix("").build().is_ok());
        assert!(local().key_prefix("tenant-7:agentwire:").build().is_ok());
    }

    #[test]
    fn bad_urls_are_refused_with_their_password_hidden() {
        let bad = RedisConfig::builder(RedisTarget::Standalone(
            "http://user:hunter2@127.0.0.1:6379".into(),
        ))
        .build()
        .expect_err("not a redis URL");
        let ConfigError::Url { url, .. } = &bad else {
            panic!("{bad:?}");
        };
        assert_eq!(url, "http://user:***@127.0.0.1:6379");
        assert!(!bad.to_string().contains("hunter2"), "{bad}");
        let cluster = RedisConfig::builder(RedisTarget::Cluster(vec![
            "redis://127.0.0.1:7000".into(),
            "127.0.0.1:7001:x".into(),
        ]))
        .build();
        assert!(
            matches!(cluster, Err(ConfigError::Url { .. })),
            "{cluster:?}"
        );
        assert_eq!(redact_url("redis://:pw@h:1/0"), "redis://:***@h:1/0");
        assert_eq!(redact_url("redis://h:1"), "redis://h:1");
        assert_eq!(redact_url("redis://secret@h:1"), "redis://:***@h:1");
    }

    #[test]
    fn the_dedupe_window_covers_history() {
        let short = local()
            .max_age(Duration::from_secs(60))
            .dedupe_window(Duration::from_secs(30))
            .build();
        assert!(matches!(
            short,
            Err(ConfigError::Bound {
                name: "dedupe_window",
                ..
            })
        ));
        let few = local()
            .max_events_per_user(100)
            .max_dedupe_per_user(50)
            .build();
        assert!(matches!(
            few,
            Err(ConfigError::Bound {
                name: "max_dedupe_per_user",
                ..
            })
        ));
        assert!(matches!(
            RedisConfig::builder(RedisTarget::Cluster(vec![])).build(),
            Err(ConfigError::NoClusterNodes)
        ));
    }
}
