//! [`RedisLeases`]: the per-user connection limit for every node sharing a Redis — one
//! script (`lua/leases.lua`) on the user's slot admits, renews and releases.

use std::sync::Arc;
use std::time::Duration;

use agentwire_manager::{
    Admission, BrokerError, Cluster, ConnectionLeases, Lease, LimitPolicy,
    MAX_EVICTED_LEASES_PER_USER, NodeId, Renewal,
};
use agentwire_protocol::{ConnectionId, UserId};
use async_trait::async_trait;
use redis::Value;

use crate::broker::RedisBroker;
use crate::metrics::{add, bump};
use crate::runs::{int, text};
use crate::script::Malformed;

/// The [`ConnectionLeases`] store on Redis, made by [`RedisBroker::leases`]: it shares the
/// broker's connection, key prefix and counters, and admits for the broker's node
/// ([`RedisBroker::node`]).
///
/// A lease is a member `<node>/<connection>` of two keys under the user's hash tag
/// (`…:leases`, a HASH of expiries; `…:lease_order`, a ZSET by admission), so one script
/// call does each step atomically on a cluster too. Evicted leases are remembered (at most
/// [`MAX_EVICTED_LEASES_PER_USER`] per user, the others forgotten and counted in
/// [`RedisMetrics::evicted_leases_forgotten`](crate::RedisMetrics::evicted_leases_forgotten))
/// until they would have expired, so a renewal tells an evicted lease (the node closes it,
/// 4003) from one that merely expired (taken again when the user has room).
#[derive(Debug, Clone)]
pub struct RedisLeases {
    broker: RedisBroker,
}

impl RedisBroker {
    /// The connection lease store on this broker's Redis. Its lease time is
    /// [`RedisConfigBuilder::connection_lease`](crate::RedisConfigBuilder::connection_lease).
    pub fn leases(&self) -> RedisLeases {
        RedisLeases {
            broker: self.clone(),
        }
    }

    /// What makes a manager over this broker one node of the cluster sharing its Redis
    /// (`UnifiedWebSocketManager::clustered`): the connection leases and the control
    /// channel, both under this broker's [`node`](Self::node). The control channel is
    /// started on the first call (on the current tokio runtime) and shared by later ones.
    pub fn cluster(&self) -> Cluster {
        let control = self.control().clone();
        Cluster {
            leases: Arc::new(self.leases()),
            control: Some(Arc::new(control)),
            receipts: Some(Arc::new(self.receipts())),
        }
    }
}

fn member(node: &NodeId, connection: &ConnectionId) -> String {
    format!("{node}/{}", connection.as_str())
}

fn parse_member(v: &Value) -> Option<Lease> {
    let m = text(v)?;
    let (node, connection) = m.split_once('/')?;
    Some(Lease {
        node: NodeId::new(node).ok()?,
        connection: ConnectionId::new(connection).ok()?,
    })
}

impl RedisLeases {
    async fn call(
        &self,
        what: &'static str,
        user: &UserId,
        op: &str,
        limit: usize,
        args: &[&str],
    ) -> Result<Vec<Value>, BrokerError> {
        let inner = self.broker.inner();
        let keys = self.broker.user_keys(user);
        let mut call = inner.scripts.leases.prepare_invoke();
        call.key(&keys.leases)
            .key(&keys.lease_order)
            .arg(op)
            .arg(millis(inner.config.connection_lease))
            .arg(limit)
            .arg(MAX_EVICTED_LEASES_PER_USER);
        for a in args {
            call.arg(*a);
        }
        let reply: Value = self
            .broker
            .round_trip(what, inner.commands.invoke(&call))
            .await
            .inspect_err(|_| bump(&inner.counters.lease_failures))?;
        // Every reply opens with the count of evicted leases forgotten for the bound.
        match reply {
            Value::Array(mut items) => match items.first().and_then(int) {
                Some(forgotten) => {
                    add(&inner.counters.evicted_leases_forgotten, forgotten);
                    items.remove(0);
                    Ok(items)
                }
                None => Err(self.broker.malformed(Malformed { what })),
            },
            _ => Err(self.broker.malformed(Malformed { what })),
        }
    }

    fn malformed(&self, what: &'static str) -> BrokerError {
        self.broker.malformed(Malformed { what })
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[async_trait]
impl ConnectionLeases for RedisLeases {
    fn node(&self) -> &NodeId {
        self.broker.node()
    }

    fn lease_time(&self) -> Duration {
        self.broker.inner().config.connection_lease
    }

    async fn admit(
        &self,
        user: &UserId,
        connection: &ConnectionId,
        limit: usize,
        policy: LimitPolicy,
    ) -> Result<Admission, BrokerError> {
        let policy_arg = match policy {
            LimitPolicy::Reject => "reject",
            LimitPolicy::EvictOldest => "evict",
        };
        let m = member(self.node(), connection);
        let reply = self
            .call("lease admit", user, "admit", limit, &[policy_arg, &m])
            .await?;
        let counters = &self.broker.inner().counters;
        match reply.first().and_then(text).as_deref() {
            Some("admitted") => {
                let evicted = reply[1..]
                    .iter()
                    .map(parse_member)
                    .collect::<Option<Vec<_>>>()
                    .ok_or_else(|| self.malformed("lease admit reply"))?;
                add(&counters.lease_evictions, evicted.len() as u64);
                Ok(Admission::Admitted { evicted })
            }
            Some("rejected") => {
                bump(&counters.lease_rejections);
                Ok(Admission::Rejected)
            }
            _ => Err(self.malformed("lease admit reply")),
        }
    }

    async fn renew(
        &self,
        user: &UserId,
        connections: &[ConnectionId],
        limit: usize,
    ) -> Result<Renewal, BrokerError> {
        if connections.is_empty() {
            return Ok(Renewal::default());
        }
        let node = self.node();
        let members: Vec<String> = connections.iter().map(|c| member(node, c)).collect();
        let args: Vec<&str> = members.iter().map(String::as_str).collect();
        let reply = self
            .call("lease renew", user, "renew", limit, &args)
            .await?;
        let lost = reply
            .first()
            .and_then(int)
            .and_then(|n| usize::try_from(n).ok())
            .filter(|n| *n < reply.len())
            .ok_or_else(|| self.malformed("lease renew reply"))?;
        let ids = |values: &[Value]| {
            values
                .iter()
                .map(|v| parse_member(v).map(|l| l.connection))
                .collect::<Option<Vec<_>>>()
        };
        let (lost, restored) = reply[1..].split_at(lost);
        let mut renewal = Renewal::default();
        renewal.lost = ids(lost).ok_or_else(|| self.malformed("lease renew reply"))?;
        renewal.restored = ids(restored).ok_or_else(|| self.malformed("lease renew reply"))?;
        let counters = &self.broker.inner().counters;
        add(&counters.leases_lost, renewal.lost.len() as u64);
        add(&counters.leases_restored, renewal.restored.len() as u64);
        Ok(renewal)
    }

    async fn release(&self, user: &UserId, connection: &ConnectionId) -> Result<(), BrokerError> {
        let m = member(self.node(), connection);
        self.call("lease release", user, "release", 0, &[&m])
            .await
            .map(|_| ())
    }
}
