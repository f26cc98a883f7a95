//! A new connection: the limits, the subscription, `connection_established` and where its
//! stream starts (resume planning).

use std::sync::Arc;
use std::sync::atomic::Ordering;

use agentwire_protocol::{CloseCode, ConnectionEstablished, Epoch, Seq, ServerFrame, UserId};
use bytes::Bytes;
use tokio::sync::OnceCell;

use super::cluster::LeaseGuard;
use super::connection::{ConnShared, Connection};
use super::{UnifiedWebSocketManager, UserEntry};
use crate::broker::BrokerError;
use crate::config::LimitPolicy;
use crate::leases::Admission;

/// Where a new connection's stream starts.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Resume {
    /// Everything history still holds, then live events (default: events published while
    /// the user had no connection arrive on connect).
    #[default]
    FromHistoryStart,
    /// Events after `last_seq` of `epoch`, then live events; a `replay_gap` first when
    /// history cannot serve that.
    After {
        /// The newest `seq` the client has.
        last_seq: Seq,
        /// The epoch that `last_seq` belongs to.
        epoch: Epoch,
    },
    /// Only events accepted from now on.
    LiveOnly,
}

/// Options of [`UnifiedWebSocketManager::connect_user`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ConnectOptions {
    /// Where the stream starts.
    pub resume: Resume,
}

/// Why a connection was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// The node holds `max_connections` connections.
    #[error("node connection limit of {limit} reached")]
    NodeFull {
        /// The limit.
        limit: usize,
    },
    /// The user holds `max_connections_per_user` connections and the policy is `reject`.
    #[error("user connection limit of {limit} reached")]
    UserLimit {
        /// The limit.
        limit: usize,
    },
    /// The broker could not subscribe or read history.
    #[error(transparent)]
    Broker(#[from] BrokerError),
}

impl ConnectError {
    /// The close code that tells the client what happened.
    pub fn close_code(&self) -> CloseCode {
        match self {
            ConnectError::NodeFull { .. } => CloseCode::TryAgainLater,
            ConnectError::UserLimit { .. } => CloseCode::Rejected,
            ConnectError::Broker(_) => CloseCode::InternalError,
        }
    }
}

impl UnifiedWebSocketManager {
    /// Connects `user`: registers a connection under the limits, subscribes the node to
    /// the user's stream, queues `connection_established` and starts the stream at the
    /// requested point. History is replayed in the background, paced by the writer.
    ///
    /// # Errors
    /// [`ConnectError`]; its [`ConnectError::close_code`] is what to tell the client.
    ///
    /// # Cancel safety
    /// Cancelling drops the half-made connection, which removes it. A broker subscribe
    /// already under way completes in its own task and is undone once the user has no
    /// connection left, so nothing stays subscribed.
    pub async fn connect_user(
        &self,
        user: UserId,
        options: ConnectOptions,
    ) -> Result<Connection, ConnectError> {
        self.start_sweeper();
        let config = &self.inner.config;
        let counters = &self.inner.counters;
        let shared = Arc::new(ConnShared::new(user.clone(), config.queue));
        shared.touch();
        // With a lease store the per-user limit is the store's, for the whole cluster: the
        // lease is taken before the connection is registered, so every lease names a
        // connection that is (or was) registered, and the registry checks only the node cap.
        let mut lease_guard = None;
        let mut evicted_leases = Vec::new();
        if let Some(leases) = self.leases() {
            let admission = leases
                .admit(
                    &user,
                    &shared.id,
                    config.max_connections_per_user,
                    config.limit_policy,
                )
                .await;
            let guard = LeaseGuard {
                leases: Some(leases.clone()),
                user: user.clone(),
                connection: shared.id.clone(),
            };
            match admission {
                Ok(Admission::Admitted { evicted }) => {
                    evicted_leases = evicted;
                    lease_guard = Some(guard);
                }
                Ok(_) => {
                    guard.disarm();
                    counters
                        .rejections_user_limit
                        .fetch_add(1, Ordering::Relaxed);
                    return Err(ConnectError::UserLimit {
                        limit: config.max_connections_per_user,
                    });
                }
                Err(e) => {
                    counters.lease_failures.fetch_add(1, Ordering::Relaxed);
                    return Err(e.into());
                }
            }
        }
        let (subscription, evicted) = {
            let mut shard = self.shard(&user);
            let entry = shard.entry(user.clone()).or_insert_with(|| UserEntry {
                conns: Vec::new(),
                subscription: Arc::new(OnceCell::new()),
            });
            let mut evicted = None;
            if lease_guard.is_none() && entry.conns.len() >= config.max_connections_per_user {
                match config.limit_policy {
                    LimitPolicy::Reject => {
                        if entry.conns.is_empty() {
                            shard.remove(&user);
                        }
                        drop(shard);
                        counters
                            .rejections_user_limit
                            .fetch_add(1, Ordering::Relaxed);
                        return Err(ConnectError::UserLimit {
                            limit: config.max_connections_per_user,
                        });
                    }
                    LimitPolicy::EvictOldest => {
                        let oldest = entry.conns.remove(0);
                        // A `remove` of that connection may be under way (it unregisters
                        // before it takes this lock): then it frees the slot and counts the
                        // close, and this is no eviction.
                        if oldest.registered.swap(false, Ordering::AcqRel) {
                            evicted = Some(oldest);
                        }
                    }
                }
            }
            // An eviction hands its slot to the new connection, so only a connection that
            // adds to the node's count is checked against the node cap.
            if evicted.is_none()
                && self.inner.total.fetch_add(1, Ordering::AcqRel) >= config.max_connections
            {
                self.inner.total.fetch_sub(1, Ordering::AcqRel);
                if entry.conns.is_empty() {
                    shard.remove(&user);
                }
                drop(shard);
                counters
                    .rejections_node_full
                    .fetch_add(1, Ordering::Relaxed);
                return Err(ConnectError::NodeFull {
                    limit: config.max_connections,
                });
            }
            entry.conns.push(shared.clone());
            (entry.subscription.clone(), evicted)
        };
        if let Some(old) = evicted {
            counters.closed.fetch_add(1, Ordering::Relaxed);
            counters.evictions.fetch_add(1, Ordering::Relaxed);
            old.close(CloseCode::Replaced);
        }
        if let Some(guard) = lease_guard {
            // Registered: its removal drops the lease from now on.
            guard.disarm();
            self.evicted_leases(&user, evicted_leases);
        }
        counters.opened.fetch_add(1, Ordering::Relaxed);
        let connection = Connection {
            shared: shared.clone(),
            manager: self.clone(),
        };

        if !subscription.initialized() {
            match self.subscribe_entry(&user, subscription).await {
                Ok(result) => result?,
                Err(e) if e.is_cancelled() => return Err(BrokerError::Closed.into()),
                Err(e) => {
                    return Err(BrokerError::unavailable("subscribe task failed", e).into());
                }
            }
        }
        let broker = &self.inner.broker;

        let page = config.replay_page.max(1);
        let first = match &options.resume {
            Resume::FromHistoryStart => broker.history(&user, Seq::ZERO, page).await?,
            Resume::LiveOnly => broker.history(&user, Seq(u64::MAX), 0).await?,
            Resume::After { last_seq, epoch } => {
                let h = broker.history(&user, *last_seq, page).await?;
                if h.epoch == *epoch {
                    h
                } else {
                    broker.history(&user, Seq::ZERO, page).await?
                }
            }
        };
        // Where the stream starts for this connection, and the gap it must be told of.
        let skip_trimmed = first.gap.map_or(Seq::ZERO, |(_, to)| to);
        let (start, gap, resumed) = match &options.resume {
            Resume::FromHistoryStart => (skip_trimmed, None, false),
            Resume::LiveOnly => (first.last_seq, None, false),
            Resume::After { last_seq, epoch } if first.epoch != *epoch => (
                skip_trimmed,
                (last_seq.get() > 0).then_some((Seq(1), *last_seq)),
                false,
            ),
            Resume::After { last_seq, .. } if *last_seq > first.last_seq => (
                first.last_seq,
                Some((first.last_seq.next(), *last_seq)),
                false,
            ),
            Resume::After { last_seq, .. } => match first.gap {
                Some(g) => (g.1, Some(g), false),
                None => (*last_seq, None, true),
            },
        };
        let hello = ServerFrame::ConnectionEstablished(ConnectionEstablished {
            connection_id: shared.id.clone(),
            user_id: user.clone(),
            epoch: first.epoch.clone(),
            heartbeat_interval_ms: u64::try_from(config.heartbeat.interval.as_millis())
                .unwrap_or(u64::MAX),
            last_seq: first.last_seq,
            resumed,
        });
        shared.push_control(Bytes::from(hello.to_json()), counters);
        if let Some((from, to)) = gap {
            shared.push_gap(from, to, counters);
        }
        shared.begin(first.epoch.clone(), start);
        let first = (start < first.last_seq).then_some(first);
        self.spawn_catch_up(shared, first);
        Ok(connection)
    }
}
