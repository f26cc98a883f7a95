//! [`RedisControl`]: the control channel of the nodes sharing a Redis — evictions addressed
//! to one node, the admin's requests to every node and their answers — over classic
//! pub/sub (on a cluster, classic `PUBLISH` reaches every node's subscribers), with each
//! node's presence in a ZSET so a requester knows whose answer to wait for.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use agentwire_manager::{
    Answers, BrokerError, ClusterControl, ConnectionInfo, ControlHandler, Lease, NodeId,
};
use agentwire_protocol::{CloseCode, ConnectionId, Seq, UserId};
use async_trait::async_trait;
use futures_util::StreamExt;
use redis::Script;
use tokio::sync::mpsc;

use crate::config::{RedisConfig, RedisTarget};
use crate::connect::{self, Backoff, Commands};
use crate::metrics::{Counters, bump};
use crate::tls::RedisTls;

/// Requests of this node waiting for answers at once; more are refused as unavailable.
pub const MAX_PENDING_CONTROL_REQUESTS: usize = 1_024;

/// Why the control channel refuses a request and the node is not ready.
const CONTROL_DOWN: &str =
    "the Redis control channel (admin disconnects, evictions between nodes) is down; reconnecting";

/// The control channel on Redis, made by
/// [`RedisBroker::cluster`](crate::RedisBroker::cluster): one dedicated pub/sub connection
/// per broker subscribed to the broadcast channel `<prefix>{%ctl}:all` and to this node's
/// `<prefix>{%ctl}:node:<node>`, and a presence entry in `<prefix>{%ctl}:nodes` (a ZSET
/// scored by expiry, refreshed every third of the connection lease).
///
/// A request (`connections_of`, `disconnect_user`) is published on the broadcast channel;
/// every other live node answers on the requester's channel; the requester waits for the
/// nodes present in the ZSET, at most
/// [`control_wait`](crate::RedisConfigBuilder::control_wait), and names those that did
/// not answer. When the pub/sub connection is down the request fails (a 503 upstream);
/// the task reconnects with the broker's backoff. Messages lost while it is down are not
/// replayed: an eviction notice is made good by the lease renewal.
#[derive(Debug, Clone)]
pub struct RedisControl {
    inner: Arc<ControlInner>,
}

struct ControlInner {
    node: NodeId,
    config: RedisConfig,
    commands: Commands,
    counters: Arc<Counters>,
    handler: OnceLock<Arc<dyn ControlHandler>>,
    pending: Mutex<HashMap<u64, mpsc::UnboundedSender<(NodeId, String)>>>,
    next_request: AtomicU64,
    link_up: AtomicBool,
    presence: Script,
    all: String,
    mine: String,
    nodes_key: String,
    task: OnceLock<tokio::task::AbortHandle>,
}

impl std::fmt::Debug for ControlInner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisControl")
            .field("node", &self.node)
            .field("link_up", &self.link_up.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl Drop for ControlInner {
    fn drop(&mut self) {
        if let Some(task) = self.task.get() {
            task.abort();
        }
    }
}

/// Removes a request's entry when its caller is done (or cancelled).
struct PendingGuard<'a> {
    inner: &'a ControlInner,
    id: u64,
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        self.inner
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.id);
    }
}

impl RedisControl {
    pub(crate) fn start(
        node: NodeId,
        config: RedisConfig,
        commands: Commands,
        counters: Arc<Counters>,
    ) -> Self {
        let tag = format!("{}{{%ctl}}", config.key_prefix);
        let inner = Arc::new(ControlInner {
            all: format!("{tag}:all"),
            mine: format!("{tag}:node:{node}"),
            nodes_key: format!("{tag}:nodes"),
            node,
            config,
            commands,
            counters,
            handler: OnceLock::new(),
            pending: Mutex::new(HashMap::new()),
            next_request: AtomicU64::new(1),
            link_up: AtomicBool::new(false),
            presence: Script::new(crate::script::PRESENCE),
            task: OnceLock::new(),
        });
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            let task = handle.spawn(run(Arc::downgrade(&inner))).abort_handle();
            let _ = inner.task.set(task);
        }
        RedisControl { inner }
    }

    /// Whether the control channel's pub/sub connection is up.
    pub fn link_up(&self) -> bool {
        self.inner.link_up.load(Ordering::Acquire)
    }
}

impl ControlInner {
    fn lease_ms(&self) -> u64 {
        u64::try_from(self.config.connection_lease.as_millis()).unwrap_or(u64::MAX)
    }

    async fn timed<T>(
        &self,
        what: &'static str,
        call: impl Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, BrokerError> {
        match tokio::time::timeout(self.config.command_timeout, call).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => {
                bump(&self.counters.control_failures);
                Err(BrokerError::unavailable(format!("Redis {what} failed"), e))
            }
            Err(e) => {
                bump(&self.counters.timeouts);
                bump(&self.counters.control_failures);
                Err(BrokerError::timeout(
                    format!("Redis {what} did not answer within the command timeout"),
                    e,
                ))
            }
        }
    }

    async fn publish(&self, channel: &str, message: String) -> Result<(), BrokerError> {
        let mut cmd = redis::cmd("PUBLISH");
        cmd.arg(channel).arg(message);
        let _: i64 = self
            .timed("control publish", self.commands.query(&cmd))
            .await?;
        bump(&self.counters.control_sent);
        Ok(())
    }

    /// Refreshes this node's presence (`beat`) or reads the live nodes (`live`).
    async fn presence(&self, op: &str) -> Result<Vec<String>, BrokerError> {
        let mut call = self.presence.prepare_invoke();
        call.key(&self.nodes_key)
            .arg(op)
            .arg(self.node.as_str())
            .arg(self.lease_ms());
        self.timed("presence", self.commands.invoke(&call)).await
    }

    fn handler(&self) -> Option<&Arc<dyn ControlHandler>> {
        self.handler.get()
    }

    /// Acts on one message of the channel.
    fn on_message(self: &Arc<Self>, payload: &[u8]) {
        let Ok(text) = std::str::from_utf8(payload) else {
            bump(&self.counters.control_malformed);
            return;
        };
        bump(&self.counters.control_received);
        if self.dispatch(text).is_none() {
            bump(&self.counters.control_malformed);
        }
    }

    fn dispatch(self: &Arc<Self>, text: &str) -> Option<()> {
        let (kind, rest) = text.split_once('\n')?;
        match kind {
            "evict" => {
                let (user, connection) = rest.split_once('\n')?;
                let user = UserId::new(user).ok()?;
                let connection = ConnectionId::new(connection).ok()?;
                if let Some(h) = self.handler() {
                    h.evict(&user, &connection);
                }
            }
            "list" | "disconnect" => {
                let (id, rest) = rest.split_once('\n')?;
                let (from, rest) = rest.split_once('\n')?;
                if from == self.node.as_str() {
                    return Some(());
                }
                let from = NodeId::new(from).ok()?;
                let answer = if kind == "list" {
                    let user = UserId::new(rest).ok()?;
                    let conns = self
                        .handler()
                        .map(|h| h.connections_of(&user))
                        .unwrap_or_default();
                    encode_connections(&conns)
                } else {
                    let (code, user) = rest.split_once('\n')?;
                    let code = CloseCode::from_code(code.parse().ok()?)?;
                    let user = UserId::new(user).ok()?;
                    let n = self.handler().map_or(0, |h| h.disconnect_user(&user, code));
                    n.to_string()
                };
                let reply = format!("answer\n{id}\n{}\n{answer}", self.node);
                let channel = format!("{}{{%ctl}}:node:{from}", self.config.key_prefix);
                let this = self.clone();
                tokio::spawn(async move {
                    if let Err(e) = this.publish(&channel, reply).await {
                        tracing::debug!(error = %e, "control answer not sent");
                    }
                });
            }
            "answer" => {
                let (id, rest) = rest.split_once('\n')?;
                let (node, answer) = rest.split_once('\n')?;
                let id: u64 = id.parse().ok()?;
                let node = NodeId::new(node).ok()?;
                let pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
                if let Some(tx) = pending.get(&id) {
                    let _ = tx.send((node, answer.to_owned()));
                }
            }
            _ => return None,
        }
        Some(())
    }

    /// Publishes a request to every node and gathers the answers of the live ones.
    async fn request(&self, kind: &str, body: &str) -> Result<Answers<String>, BrokerError> {
        if !self.link_up.load(Ordering::Acquire) {
            bump(&self.counters.control_failures);
            return Err(BrokerError::Unavailable(CONTROL_DOWN.into()));
        }
        let mut waiting: Vec<NodeId> = self
            .presence("live")
            .await?
            .into_iter()
            .filter_map(|n| NodeId::new(n).ok())
            .filter(|n| *n != self.node)
            .collect();
        let id = self.next_request.fetch_add(1, Ordering::Relaxed);
        let (tx, mut rx) = mpsc::unbounded_channel();
        {
            let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
            if pending.len() >= MAX_PENDING_CONTROL_REQUESTS {
                bump(&self.counters.control_refused);
                return Err(BrokerError::Unavailable(
                    "too many control requests in flight".into(),
                ));
            }
            pending.insert(id, tx);
        }
        let _guard = PendingGuard { inner: self, id };
        self.publish(&self.all, format!("{kind}\n{id}\n{}\n{body}", self.node))
            .await?;
        let mut answers = Answers::default();
        let deadline = tokio::time::Instant::now() + self.config.control_wait;
        while !waiting.is_empty() {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some((node, answer))) => {
                    if answers.answers.iter().any(|(n, _)| *n == node) {
                        continue;
                    }
                    waiting.retain(|n| *n != node);
                    answers.answers.push((node, answer));
                }
                Ok(None) | Err(_) => break,
            }
        }
        if !waiting.is_empty() {
            bump(&self.counters.control_unanswered);
        }
        answers.unanswered = waiting;
        Ok(answers)
    }
}

/// One line per connection: `<id>\t<connected ms>\t<acked seq>\t<frames>\t<bytes>`.
/// Connection ids hold no control characters, so tabs and newlines separate.
fn encode_connections(conns: &[ConnectionInfo]) -> String {
    let mut out = String::new();
    for c in conns {
        out.push_str(&format!(
            "{}\t{}\t{}\t{}\t{}\n",
            c.connection_id.as_str(),
            c.connected_for.as_millis(),
            c.acked_seq.get(),
            c.queued_frames,
            c.queued_bytes
        ));
    }
    out
}

fn decode_connections(text: &str) -> Option<Vec<ConnectionInfo>> {
    text.lines()
        .filter(|l| !l.is_empty())
        .map(|line| {
            let mut f = line.split('\t');
            let connection_id = ConnectionId::new(f.next()?).ok()?;
            let connected_for = Duration::from_millis(f.next()?.parse().ok()?);
            let acked_seq = Seq(f.next()?.parse().ok()?);
            let queued_frames = f.next()?.parse().ok()?;
            let queued_bytes = f.next()?.parse().ok()?;
            Some(ConnectionInfo {
                connection_id,
                connected_for,
                acked_seq,
                queued_frames,
                queued_bytes,
            })
        })
        .collect()
}

/// A dedicated (RESP2) pub/sub connection to a standalone Redis, or to the first cluster
/// node that answers.
async fn pubsub(target: &RedisTarget, tls: &RedisTls) -> redis::RedisResult<redis::aio::PubSub> {
    let urls: Vec<&String> = match target {
        RedisTarget::Standalone(url) => vec![url],
        RedisTarget::Cluster(nodes) => nodes.iter().collect(),
    };
    let mut last = None;
    for url in urls {
        match connect::client_speaking(url, tls, redis::ProtocolVersion::RESP2) {
            Ok(client) => match client.get_async_pubsub().await {
                Ok(ps) => return Ok(ps),
                Err(e) => last = Some(e),
            },
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| {
        redis::RedisError::from((redis::ErrorKind::Client, "no Redis node to connect to"))
    }))
}

/// The control task: connects, subscribes, refreshes the node's presence and pings every
/// third of the lease, hands messages to the node, and reconnects with backoff.
async fn run(weak: Weak<ControlInner>) {
    let mut backoff = None;
    loop {
        let Some(inner) = weak.upgrade() else { return };
        let (target, timeout) = (inner.config.target.clone(), inner.config.command_timeout);
        let tls = inner.config.tls.clone();
        let backoff = backoff.get_or_insert_with(|| {
            Backoff::new(inner.config.reconnect_min, inner.config.reconnect_max)
        });
        let channels = [inner.all.clone(), inner.mine.clone()];
        let period = (inner.config.connection_lease / 3).max(Duration::from_millis(10));
        drop(inner);
        let connected = tokio::time::timeout(timeout, async {
            let mut ps = pubsub(&target, &tls).await?;
            ps.subscribe(&channels).await?;
            Ok::<_, redis::RedisError>(ps)
        })
        .await;
        let ps = match connected {
            Ok(Ok(ps)) => ps,
            _ => {
                backoff.wait().await;
                continue;
            }
        };
        backoff.reset();
        let (mut sink, mut stream) = ps.split();
        {
            let Some(inner) = weak.upgrade() else { return };
            if inner.presence("beat").await.is_err() {
                tracing::debug!("presence not refreshed");
            }
            inner.counters.control_up.store(1, Ordering::Relaxed);
            inner.link_up.store(true, Ordering::Release);
        }
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tokio::select! {
                msg = stream.next() => {
                    let Some(msg) = msg else { break };
                    let Some(inner) = weak.upgrade() else { return };
                    inner.on_message(msg.get_payload_bytes());
                }
                _ = tick.tick() => {
                    let Some(inner) = weak.upgrade() else { return };
                    let alive = tokio::time::timeout(timeout, sink.ping::<String>()).await;
                    if !matches!(alive, Ok(Ok(_))) {
                        break;
                    }
                    let _ = inner.presence("beat").await;
                }
            }
        }
        if let Some(inner) = weak.upgrade() {
            inner.counters.control_up.store(0, Ordering::Relaxed);
            inner.link_up.store(false, Ordering::Release);
            bump(&inner.counters.control_reconnects);
        }
    }
}

#[async_trait]
impl ClusterControl for RedisControl {
    fn node(&self) -> &NodeId {
        &self.inner.node
    }

    fn attach(&self, handler: Arc<dyn ControlHandler>) {
        let _ = self.inner.handler.set(handler);
    }

    fn health(&self) -> Result<(), BrokerError> {
        if self.link_up() {
            Ok(())
        } else {
            Err(BrokerError::Unavailable(CONTROL_DOWN.into()))
        }
    }

    async fn evict(&self, user: &UserId, lease: &Lease) -> Result<(), BrokerError> {
        let channel = format!(
            "{}{{%ctl}}:node:{}",
            self.inner.config.key_prefix, lease.node
        );
        self.inner
            .publish(
                &channel,
                format!("evict\n{}\n{}", user.as_str(), lease.connection.as_str()),
            )
            .await
    }

    async fn connections_of(
        &self,
        user: &UserId,
    ) -> Result<Answers<Vec<ConnectionInfo>>, BrokerError> {
        let raw = self.inner.request("list", user.as_str()).await?;
        let mut out = Answers {
            answers: Vec::new(),
            unanswered: raw.unanswered,
        };
        for (node, text) in raw.answers {
            match decode_connections(&text) {
                Some(conns) => out.answers.push((node, conns)),
                None => {
                    bump(&self.inner.counters.control_malformed);
                    out.unanswered.push(node);
                }
            }
        }
        Ok(out)
    }

    async fn disconnect_user(
        &self,
        user: &UserId,
        code: CloseCode,
    ) -> Result<Answers<usize>, BrokerError> {
        let raw = self
            .inner
            .request("disconnect", &format!("{}\n{}", code.code(), user.as_str()))
            .await?;
        let mut out = Answers {
            answers: Vec::new(),
            unanswered: raw.unanswered,
        };
        for (node, text) in raw.answers {
            match text.parse() {
                Ok(n) => out.answers.push((node, n)),
                Err(_) => {
                    bump(&self.inner.counters.control_malformed);
                    out.unanswered.push(node);
                }
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_lists_round_trip() {
        let conns = vec![
            ConnectionInfo {
                connection_id: ConnectionId::new("c_1").expect("id"),
                connected_for: Duration::from_millis(1500),
                acked_seq: Seq(7),
                queued_frames: 2,
                queued_bytes: 300,
            },
            ConnectionInfo {
                connection_id: ConnectionId::new("c 2").expect("id"),
                connected_for: Duration::ZERO,
                acked_seq: Seq(0),
                queued_frames: 0,
                queued_bytes: 0,
            },
        ];
        assert_eq!(decode_connections(&encode_connections(&conns)), Some(conns));
        assert_eq!(decode_connections(""), Some(Vec::new()));
        assert_eq!(decode_connections("c_1\tx\t1\t1\t1\n"), None);
    }
}
