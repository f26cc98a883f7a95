//! [`RedisBroker`]: the [`Broker`] on Redis — scripts for publish, history and lookup on
//! the command connection, and the subscription task on its own connection.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use std::sync::atomic::Ordering;

use agentwire_manager::{
    Accepted, BatchError, Broker, BrokerError, BrokerStats, History, NewEvent, NodeId, RunLimit,
    RunPresence, RunStats, StoredEvent, Subscriber, TOOL_CALL_OVERHEAD_BYTES,
};
use agentwire_protocol::{
    Epoch, EventId, MAX_OPEN_MESSAGES, MAX_OPEN_TOOL_CALLS, RunId, Seq, Timestamp, UserId,
};
use async_trait::async_trait;
use bytes::Bytes;
use redis::{ErrorKind, RedisError, Script, ServerErrorKind, Value};

use crate::config::{RedisConfig, RedisTarget};
use crate::connect::{Commands, PUBSUB_CLIENT_NAME};
use crate::control::RedisControl;
use crate::keys::{RegistryKeys, UserKeys};
use crate::metrics::{Counters, RedisMetrics, add, bump};
use crate::pubsub::{self, Link, SubscribeRefused, SubscribeWait, Subscriptions};
use crate::runs::{
    self, BatchRuns, Growth, RegistryAnswer, RegistryOp, RunAfter, RunSlot, int, text,
};
use crate::script::{self, Entry, FrameParts, Malformed};

/// The [`Broker`] on Redis 7, standalone or cluster: many agentwire nodes share each
/// user's stream. See the crate docs for the data layout and the scripts.
///
/// Cloning is cheap and shares the connections; the subscription task stops when the last
/// clone is dropped.
#[derive(Debug, Clone)]
pub struct RedisBroker {
    inner: Arc<Inner>,
}

#[derive(Debug)]
pub(crate) struct Inner {
    pub(crate) config: RedisConfig,
    pub(crate) commands: Commands,
    pub(crate) scripts: Scripts,
    subs: Arc<Subscriptions>,
    pub(crate) counters: Arc<Counters>,
    /// This node's name among the nodes sharing the Redis (connection leases).
    node: NodeId,
    /// The control channel, started by the first `cluster()`.
    control: std::sync::OnceLock<RedisControl>,
    registry: RegistryKeys,
    /// `PUBLISH` on a standalone Redis, `SPUBLISH` (sharded) on a cluster.
    publish_command: &'static str,
    task: tokio::task::AbortHandle,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.subs.close();
        self.task.abort();
    }
}

#[derive(Debug)]
pub(crate) struct Scripts {
    publish: Script,
    history: Script,
    lookup: Script,
    runs: Script,
    heartbeat: Script,
    pub(crate) leases: Script,
    pub(crate) rate: Script,
    pub(crate) receipts: Script,
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl RedisBroker {
    /// Connects the command connection and the pub/sub connection and starts the
    /// subscription task (on the current tokio runtime).
    ///
    /// # Errors
    /// [`BrokerError::Unavailable`] (or [`BrokerError::Timeout`]) when Redis cannot be
    /// reached within the command timeout.
    pub async fn connect(config: RedisConfig) -> Result<Self, BrokerError> {
        let timeout = config.command_timeout;
        let commands = tokio::time::timeout(
            timeout,
            Commands::connect(&config.target, timeout, &config.tls),
        )
        .await
        .map_err(|e| BrokerError::timeout("connecting to Redis timed out", e))?
        .map_err(|e| BrokerError::unavailable("cannot connect to Redis", e))?;
        let counters = Arc::new(Counters::default());
        let subs = Subscriptions::new(&config, counters.clone());
        let link = tokio::time::timeout(
            timeout,
            Link::connect(
                &config.target,
                timeout,
                &config.tls,
                subs.push_handler(0),
                &config.key_prefix,
            ),
        )
        .await
        .map_err(|e| BrokerError::timeout("connecting to Redis pub/sub timed out", e))?
        .map_err(|e| BrokerError::unavailable("cannot connect to Redis pub/sub", e))?;
        subs.started();
        let task = tokio::spawn(pubsub::run(subs.clone(), config.clone(), link)).abort_handle();
        let publish_command = match config.target {
            RedisTarget::Cluster(_) => "SPUBLISH",
            _ => "PUBLISH",
        };
        let registry = RegistryKeys::new(&config.key_prefix);
        Ok(RedisBroker {
            inner: Arc::new(Inner {
                registry,
                config,
                commands,
                scripts: Scripts {
                    publish: Script::new(script::PUBLISH),
                    history: Script::new(script::HISTORY),
                    lookup: Script::new(script::LOOKUP),
                    runs: Script::new(script::RUNS),
                    heartbeat: Script::new(script::HEARTBEAT),
                    leases: Script::new(script::LEASES),
                    rate: Script::new(script::RATE),
                    receipts: Script::new(script::RECEIPTS),
                },
                node: NodeId::random(),
                control: std::sync::OnceLock::new(),
                subs,
                counters,
                publish_command,
                task,
            }),
        })
    }

    /// The configuration in force.
    pub fn config(&self) -> &RedisConfig {
        &self.inner.config
    }

    /// What this broker counted since it connected.
    pub fn metrics(&self) -> RedisMetrics {
        self.inner.counters.snapshot()
    }

    /// The name the pub/sub connection carries on a standalone Redis (`CLIENT LIST`).
    pub fn pubsub_client_name(&self) -> String {
        format!("{PUBSUB_CLIENT_NAME}:{}", self.inner.config.key_prefix)
    }

    /// The name of this node among the nodes sharing the Redis: a fresh random
    /// [`NodeId`] per broker, which its connection leases carry.
    pub fn node(&self) -> &NodeId {
        &self.inner.node
    }

    /// The control channel of this broker's node, started on first use.
    pub(crate) fn control(&self) -> &RedisControl {
        self.inner.control.get_or_init(|| {
            RedisControl::start(
                self.inner.node.clone(),
                self.inner.config.clone(),
                self.inner.commands.clone(),
                self.inner.counters.clone(),
            )
        })
    }

    /// Whether this node's control channel (started by [`cluster`](Self::cluster)) is
    /// subscribed and its presence announced.
    pub fn control_up(&self) -> bool {
        self.inner.control.get().is_some_and(RedisControl::link_up)
    }

    pub(crate) fn inner(&self) -> &Inner {
        &self.inner
    }

    pub(crate) fn user_keys(&self, user: &UserId) -> UserKeys {
        self.keys(user)
    }

    fn keys(&self, user: &UserId) -> UserKeys {
        UserKeys::new(&self.inner.config.key_prefix, user)
    }

    /// Runs one round trip under the command timeout, timing it and mapping its error.
    pub(crate) async fn round_trip<T>(
        &self,
        what: &'static str,
        call: impl Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, BrokerError> {
        let started = Instant::now();
        let result = tokio::time::timeout(self.inner.config.command_timeout, call).await;
        self.inner.counters.record_round_trip(started.elapsed());
        match result {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => Err(self.map_error(what, e)),
            Err(elapsed) => {
                bump(&self.inner.counters.timeouts);
                Err(BrokerError::timeout(
                    format!("Redis {what} did not answer within the command timeout"),
                    elapsed,
                ))
            }
        }
    }

    fn map_error(&self, what: &'static str, e: RedisError) -> BrokerError {
        let counters = &self.inner.counters;
        if e.is_timeout() {
            bump(&counters.timeouts);
            return BrokerError::timeout(format!("Redis {what} timed out"), e);
        }
        let transient_server = matches!(
            e.kind(),
            ErrorKind::Server(
                ServerErrorKind::BusyLoading
                    | ServerErrorKind::TryAgain
                    | ServerErrorKind::ClusterDown
                    | ServerErrorKind::MasterDown
                    | ServerErrorKind::ReadOnly
                    | ServerErrorKind::Moved
                    | ServerErrorKind::Ask
            )
        ) || matches!(e.code(), Some("OOM" | "BUSY" | "LOADING"));
        if e.is_io_error()
            || e.is_connection_dropped()
            || e.is_unrecoverable_error()
            || transient_server
        {
            bump(&counters.unavailable);
            return BrokerError::unavailable(format!("Redis {what} failed"), e);
        }
        // Anything else is an error raised inside a script: a bug, or a store that does not
        // hold what the scripts write. Counted, and answered as unavailable, so a publisher
        // retries (with the same ids: safe) rather than dropping the event.
        bump(&counters.script_errors);
        tracing::error!(error = %e, what, "Redis script error");
        BrokerError::unavailable(format!("Redis {what} script failed"), e)
    }

    pub(crate) fn malformed(&self, e: Malformed) -> BrokerError {
        bump(&self.inner.counters.script_errors);
        BrokerError::unavailable("Redis answered with something the scripts do not write", e)
    }

    /// One script call for a whole batch of one user's events — with the run registry
    /// before it (reserving the room of runs the batch starts, and more room when a run
    /// needs it, then calling the script again) and after it (a run that ended, a
    /// reservation the batch did not use) when the batch holds guarded events.
    async fn publish_batch(
        &self,
        user: &UserId,
        events: Vec<NewEvent>,
    ) -> Result<Vec<Accepted>, BatchError> {
        let config = &self.inner.config;
        if events.len() > config.max_batch_events {
            bump(&self.inner.counters.batches_refused);
            return Err(BatchError::new(
                Vec::new(),
                BrokerError::Rejected(
                    format!(
                        "a batch of {} events exceeds max_batch_events ({})",
                        events.len(),
                        config.max_batch_events
                    )
                    .into(),
                ),
            ));
        }
        if events.is_empty() {
            return Ok(Vec::new());
        }
        let fail = |error| BatchError::new(Vec::new(), error);
        if let Some(i) = events
            .iter()
            .position(|e| e.run.as_ref().is_some_and(|g| !runs::claim_ends_run(g)))
        {
            return Err(BatchError::refused(
                i,
                BrokerError::Rejected("a stall claim must end its run".into()),
            ));
        }
        let keys = self.keys(user);
        let mut runs = BatchRuns::of(&keys, user, &events);
        let mut ids = Vec::with_capacity(events.len());
        let mut parts = Vec::with_capacity(events.len());
        for event in &events {
            let id = event.event_id.clone().unwrap_or_else(EventId::generate);
            let p = FrameParts::new(event.event_type, &id, &event.body).map_err(|_| {
                fail(BrokerError::Rejected(
                    "the frame layout of compose_frame is not understood".into(),
                ))
            })?;
            ids.push(id);
            parts.push(p);
        }
        self.reserve_runs(&mut runs).await.map_err(fail)?;
        // A second round follows only when a run needed more room than it had; a third
        // only when another node changed the run in between.
        for _ in 0..MAX_PUBLISH_ROUNDS {
            let mut call = self.inner.scripts.publish.prepare_invoke();
            for key in keys.script_keys() {
                call.key(key);
            }
            for slot in &runs.slots {
                call.key(&slot.key);
            }
            call.arg(Epoch::generate().as_str())
                .arg(config.max_events_per_user)
                .arg(millis(config.max_age))
                .arg(millis(config.dedupe_window))
                .arg(config.max_dedupe_per_user)
                .arg(millis(config.stream_idle_ttl))
                .arg(self.inner.publish_command)
                .arg(events.len())
                .arg(millis(config.run_limits.ttl))
                .arg(TOOL_CALL_OVERHEAD_BYTES)
                .arg(MAX_OPEN_TOOL_CALLS)
                .arg(runs.slots.len())
                .arg(MAX_OPEN_MESSAGES);
            for slot in &runs.slots {
                let (token, refusal) = match (&slot.reserved, slot.refusal) {
                    (_, Some(limit)) => ("", limit.name()),
                    (Some((_, token)), None) => (token.as_str(), ""),
                    (None, None) => ("", ""),
                };
                call.arg(token)
                    .arg(slot.grant.map(|g| g.to_string()).unwrap_or_default())
                    .arg(refusal)
                    .arg(slot.owner.as_str())
                    .arg(slot.base);
            }
            for ((event, (id, p)), ((run, _), (code, arg))) in events
                .iter()
                .zip(ids.iter().zip(&parts))
                .zip(runs.of_event.iter().zip(&runs.args))
            {
                call.arg(id.as_str())
                    .arg(event.digest.to_string())
                    .arg(event.event_type.as_str())
                    .arg(&p.head[..])
                    .arg(&p.mid[..])
                    .arg(&p.tail[..])
                    .arg(*run)
                    .arg(code)
                    .arg(arg);
            }
            // On an error the script may or may not have run: the reservations stay, and
            // a retry of the batch finds them (or the registry's expiry drops them).
            let reply: Vec<Value> = self
                .round_trip("publish", self.inner.commands.invoke(&call))
                .await
                .map_err(fail)?;
            match self.publish_reply(reply, &ids, &runs) {
                Ok(PublishReply::Accepted { accepted, after }) => {
                    self.settle_runs(&runs, &after).await;
                    return Ok(accepted);
                }
                Ok(PublishReply::Refused { index, error }) => {
                    self.undo_reservations(&runs).await;
                    return Err(BatchError::refused(index, error));
                }
                Ok(PublishReply::Grow(needs)) => {
                    if let Err((index, error)) = self.grow_runs(&mut runs, needs).await {
                        // The script wrote nothing: undoing is safe.
                        self.undo_reservations(&runs).await;
                        return Err(match index {
                            Some(index) => BatchError::refused(index, error),
                            None => fail(error),
                        });
                    }
                }
                Err(e) => {
                    self.undo_reservations(&runs).await;
                    return Err(fail(self.malformed(e)));
                }
            }
        }
        self.undo_reservations(&runs).await;
        Err(fail(BrokerError::Unavailable(
            "the run state kept changing between calls; retry".into(),
        )))
    }

    /// One call of the run registry (`lua/runs.lua`), keeping its sizes as gauges.
    async fn registry(
        &self,
        op: RegistryOp<'_>,
        member: &str,
        token: &str,
    ) -> Result<RegistryAnswer, BrokerError> {
        let limits = &self.inner.config.run_limits;
        let counters = &self.inner.counters;
        let mut call = self.inner.scripts.runs.prepare_invoke();
        for key in self.inner.registry.script_keys() {
            call.key(key);
        }
        call.arg(op.name())
            .arg(member)
            .arg(token)
            .arg(limits.max_runs)
            .arg(limits.max_bytes)
            .arg(limits.max_runs_per_owner)
            .arg(limits.max_bytes_per_owner)
            .arg(millis(limits.ttl));
        for a in op.args() {
            call.arg(a);
        }
        bump(&counters.run_registry_calls);
        let reply: Vec<Value> = self
            .round_trip("run registry", self.inner.commands.invoke(&call))
            .await?;
        let (answer, totals) = runs::registry_answer(&op, reply).map_err(|e| self.malformed(e))?;
        if let Some(t) = totals {
            counters.runs_held.store(t.runs, Ordering::Relaxed);
            counters.runs_in_progress.store(t.live, Ordering::Relaxed);
            counters.run_bytes.store(t.bytes, Ordering::Relaxed);
            add(&counters.runs_expired, t.expired);
        }
        match &answer {
            RegistryAnswer::Reserved { evicted, .. } => {
                add(&counters.runs_evicted, evicted.len() as u64);
            }
            RegistryAnswer::Full(limit) => bump(&counters.runs_refused[limit.index()]),
            _ => {}
        }
        Ok(answer)
    }

    /// Reserves the room of every run the batch starts, and deletes the state of the
    /// finished runs the registry forgot for it.
    async fn reserve_runs(&self, runs: &mut BatchRuns) -> Result<(), BrokerError> {
        let starting: Vec<usize> = (0..runs.slots.len())
            .filter(|&j| runs.slots[j].starts)
            .collect();
        if starting.is_empty() {
            return Ok(());
        }
        let tokens: Vec<String> = starting
            .iter()
            .map(|_| format!("{:016x}", rand::random::<u64>()))
            .collect();
        let calls = starting.iter().zip(&tokens).map(|(&j, token)| {
            let slot = &runs.slots[j];
            let op = RegistryOp::Reserve {
                owner: slot.owner.as_str(),
                base: slot.base,
            };
            self.registry(op, &slot.key, token)
        });
        let answers = futures_util::future::join_all(calls).await;
        let mut evicted = Vec::new();
        let mut failure = None;
        for (&j, answer) in starting.iter().zip(answers) {
            let slot = &mut runs.slots[j];
            match answer {
                Ok(RegistryAnswer::Reserved {
                    kind,
                    token,
                    allowance,
                    evicted: gone,
                }) => {
                    slot.reserved = Some((kind, token));
                    slot.grant = Some(allowance);
                    evicted.extend(gone);
                }
                Ok(RegistryAnswer::Full(limit)) => slot.refusal = Some(limit),
                Ok(_) => {
                    failure.get_or_insert(self.malformed(Malformed {
                        what: "run registry reserve reply",
                    }));
                }
                Err(e) => {
                    failure.get_or_insert(e);
                }
            }
        }
        self.forget_states(&evicted).await;
        if let Some(e) = failure {
            self.undo_reservations(runs).await;
            return Err(e);
        }
        Ok(())
    }

    /// Deletes the state keys of runs the registry forgot to make room. A key that stays
    /// (the call failed) expires with its ttl; until then its run answers as finished.
    async fn forget_states(&self, keys: &[String]) {
        let deletes = keys.iter().map(|key| {
            let mut del = redis::cmd("DEL");
            del.arg(key);
            async move {
                self.round_trip("run state delete", self.inner.commands.query::<i64>(&del))
                    .await
            }
        });
        for result in futures_util::future::join_all(deletes).await {
            if let Err(e) = result {
                bump(&self.inner.counters.run_registry_failures);
                tracing::warn!(error = %e, "could not delete an evicted run's state");
            }
        }
    }

    /// Asks the registry for the room the runs need; returns the first refusal in batch
    /// order (with its event's index), or the error that stopped it.
    async fn grow_runs(
        &self,
        runs: &mut BatchRuns,
        needs: Vec<Growth>,
    ) -> Result<(), (Option<usize>, BrokerError)> {
        let mut refused: Option<(usize, RunLimit)> = None;
        for need in needs {
            let slot = runs
                .slots
                .get_mut(need.run.wrapping_sub(1))
                .ok_or_else(|| {
                    (
                        None,
                        self.malformed(Malformed {
                            what: "publish grow reply",
                        }),
                    )
                })?;
            let mut answer = self
                .registry(
                    RegistryOp::Grow {
                        needed: need.needed,
                    },
                    &slot.key,
                    &need.token,
                )
                .await
                .map_err(|e| (None, e))?;
            if answer == RegistryAnswer::Gone {
                // The registry forgot the run (its entry expired): reserve it again, for
                // what it holds now.
                let op = RegistryOp::Reserve {
                    owner: &need.owner,
                    base: need.needed,
                };
                answer = self
                    .registry(op, &slot.key, &need.token)
                    .await
                    .map_err(|e| (None, e))?;
            }
            match answer {
                RegistryAnswer::Grown { allowance }
                | RegistryAnswer::Reserved { allowance, .. } => slot.grant = Some(allowance),
                RegistryAnswer::Full(limit) => {
                    if refused.is_none_or(|(i, _)| need.index < i) {
                        refused = Some((need.index, limit));
                    }
                }
                _ => {
                    return Err((
                        None,
                        self.malformed(Malformed {
                            what: "run registry grow reply",
                        }),
                    ));
                }
            }
        }
        match refused {
            Some((index, limit)) => Err((Some(index), BrokerError::TooManyRuns(limit))),
            None => Ok(()),
        }
    }

    /// After an accepted batch: tells the registry which runs ended and which are still
    /// going, and drops the holds on reservations the batch did not start a run on (a
    /// duplicate `agent_started`, a lost race). A failure is counted and logged; the
    /// registry's expiry corrects it.
    async fn settle_runs(&self, runs: &BatchRuns, after: &[RunAfter]) {
        let mut calls = Vec::new();
        for (slot, after) in runs.slots.iter().zip(after) {
            if let Some((_, token)) = &slot.reserved
                && !after.started
            {
                calls.push((RegistryOp::Drop { base: slot.base }, slot, token));
            }
            if after.ended {
                calls.push((RegistryOp::Finish { base: slot.base }, slot, &after.token));
            } else if after.refresh {
                calls.push((RegistryOp::Refresh, slot, &after.token));
            }
        }
        self.registry_follow_ups(calls).await;
    }

    /// Drops this call's holds on its reservations, after a batch that started no run.
    async fn undo_reservations(&self, runs: &BatchRuns) {
        let calls = runs
            .slots
            .iter()
            .filter_map(|slot| {
                let (_, token) = slot.reserved.as_ref()?;
                Some((RegistryOp::Drop { base: slot.base }, slot, token))
            })
            .collect();
        self.registry_follow_ups(calls).await;
    }

    async fn registry_follow_ups(&self, calls: Vec<(RegistryOp<'_>, &RunSlot, &String)>) {
        let calls = calls
            .into_iter()
            .map(|(op, slot, token)| self.registry(op, &slot.key, token));
        for result in futures_util::future::join_all(calls).await {
            if let Err(e) = result {
                bump(&self.inner.counters.run_registry_failures);
                tracing::warn!(error = %e, "run registry update failed; its expiry corrects it");
            }
        }
    }

    /// Decodes the publish script's reply.
    fn publish_reply(
        &self,
        reply: Vec<Value>,
        ids: &[EventId],
        runs: &BatchRuns,
    ) -> Result<PublishReply, Malformed> {
        let counters = &self.inner.counters;
        let bad = |what| Malformed { what };
        let mut items = reply.into_iter();
        let kind = items.next().as_ref().and_then(text);
        let mut number = |what| items.next().as_ref().and_then(int).ok_or(bad(what));
        match kind.as_deref() {
            Some("conflict") => {
                let index = number("conflict index")?;
                let seq = number("conflict seq")?;
                let event_id = usize::try_from(index)
                    .ok()
                    .and_then(|i| ids.get(i).cloned())
                    .ok_or(bad("conflict index"))?;
                bump(&counters.conflicts);
                Ok(PublishReply::Refused {
                    index: index as usize,
                    error: BrokerError::Conflict {
                        event_id,
                        seq: Seq(seq),
                    },
                })
            }
            Some("violation") => {
                let index = number("violation index")? as usize;
                let name = items.next().as_ref().and_then(text);
                let terminal = items.next().as_ref().and_then(text).unwrap_or_default();
                let violation = name
                    .zip(runs.step(index))
                    .and_then(|(name, step)| runs::violation(&name, step, &terminal))
                    .ok_or(bad("violation"))?;
                bump(&counters.run_violations[violation.index()]);
                Ok(PublishReply::Refused {
                    index,
                    error: BrokerError::Violation(violation),
                })
            }
            Some("active") => {
                let index = number("active index")? as usize;
                let due_in = match items.next() {
                    Some(Value::Int(ms)) => u64::try_from(ms).ok().map(Duration::from_millis),
                    _ => return Err(bad("active due")),
                };
                Ok(PublishReply::Refused {
                    index,
                    error: BrokerError::NotStalled { due_in },
                })
            }
            Some("full") => {
                let index = number("full index")? as usize;
                let limit = items
                    .next()
                    .as_ref()
                    .and_then(text)
                    .and_then(|b| RunLimit::from_name(&b))
                    .ok_or(bad("full bound"))?;
                bump(&counters.runs_refused[limit.index()]);
                Ok(PublishReply::Refused {
                    index,
                    error: BrokerError::TooManyRuns(limit),
                })
            }
            Some("grow") => {
                let rest: Vec<Value> = items.collect();
                let needs = rest
                    .chunks(5)
                    .map(|c| match c {
                        [run, needed, index, token, owner] => Some(Growth {
                            run: int(run)? as usize,
                            needed: int(needed)?,
                            index: int(index)? as usize,
                            token: text(token)?,
                            owner: text(owner)?,
                        }),
                        _ => None,
                    })
                    .collect::<Option<Vec<_>>>()
                    .ok_or(bad("grow reply"))?;
                Ok(PublishReply::Grow(needs))
            }
            Some("ok") => {
                let epoch = items
                    .next()
                    .as_ref()
                    .and_then(epoch)
                    .ok_or(bad("publish epoch"))?;
                let mut number = |what| items.next().as_ref().and_then(int).ok_or(bad(what));
                add(&counters.epochs_created, number("publish created")?);
                add(&counters.history_trimmed, number("publish trimmed")?);
                add(&counters.dedupe_forgotten, number("publish forgotten")?);
                let mut accepted = Vec::with_capacity(ids.len());
                for event_id in ids {
                    let seq = number("publish seq")?;
                    let ts = number("publish ts")?;
                    let duplicate = number("publish duplicate")? == 1;
                    if duplicate {
                        bump(&counters.duplicates);
                    }
                    accepted.push(Accepted {
                        seq: Seq(seq),
                        event_id: event_id.clone(),
                        ts: Timestamp(ts),
                        epoch: epoch.clone(),
                        duplicate,
                    });
                }
                let mut after = Vec::with_capacity(runs.slots.len());
                for _ in &runs.slots {
                    let token = items
                        .next()
                        .as_ref()
                        .and_then(text)
                        .ok_or(bad("publish run token"))?;
                    let mut flag = |what| {
                        items
                            .next()
                            .as_ref()
                            .and_then(int)
                            .map(|n| n == 1)
                            .ok_or(bad(what))
                    };
                    after.push(RunAfter {
                        token,
                        started: flag("publish run started")?,
                        ended: flag("publish run ended")?,
                        refresh: flag("publish run refresh")?,
                    });
                }
                Ok(PublishReply::Accepted { accepted, after })
            }
            _ => Err(bad("publish reply")),
        }
    }
}

/// Most script calls for one batch (see [`RedisBroker::publish_batch`]).
const MAX_PUBLISH_ROUNDS: usize = 3;

/// What the publish script answered.
enum PublishReply {
    Accepted {
        accepted: Vec<Accepted>,
        after: Vec<RunAfter>,
    },
    /// Event `index` was refused, and the batch with it.
    Refused { index: usize, error: BrokerError },
    /// Runs need more room; nothing was written.
    Grow(Vec<Growth>),
}

fn epoch(v: &Value) -> Option<Epoch> {
    Epoch::new(text(v)?).ok()
}

/// One stream entry of an `XRANGE` reply: `[id, [field, value, …]]`.
fn stored_event(entry: Value, epoch: &Epoch) -> Result<StoredEvent, Malformed> {
    let bad = |what| Malformed { what };
    let Value::Array(parts) = entry else {
        return Err(bad("stream entry"));
    };
    let mut parts = parts.into_iter();
    let id = parts
        .next()
        .as_ref()
        .and_then(text)
        .ok_or_else(|| bad("stream entry id"))?;
    let (seq, ts) = script::entry_id(&id)?;
    let Some(Value::Array(fields)) = parts.next() else {
        return Err(bad("stream entry fields"));
    };
    let mut fields = fields.into_iter();
    let raw = match (fields.next(), fields.next()) {
        (Some(name), Some(Value::BulkString(raw))) if text(&name).as_deref() == Some("m") => raw,
        _ => return Err(bad("stream entry fields")),
    };
    let entry = Entry::decode(&Bytes::from(raw))?;
    Ok(StoredEvent {
        seq,
        event_id: entry.event_id,
        ts,
        event_type: entry.event_type,
        epoch: epoch.clone(),
        frame: entry.frame,
    })
}

/// Undoes a subscription whose `subscribe` call did not complete (an error, or the
/// caller's future was dropped).
struct SubscribeGuard<'a> {
    subs: &'a Subscriptions,
    channel: &'a str,
    subscriber: &'a Arc<dyn Subscriber>,
    armed: bool,
}

impl Drop for SubscribeGuard<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.subs.remove(self.channel, self.subscriber);
        }
    }
}

#[async_trait]
impl Broker for RedisBroker {
    async fn publish(&self, user: &UserId, event: NewEvent) -> Result<Accepted, BrokerError> {
        let mut accepted = self
            .publish_batch(user, vec![event])
            .await
            .map_err(|e| e.error)?;
        accepted.pop().ok_or_else(|| {
            self.malformed(Malformed {
                what: "publish reply",
            })
        })
    }

    /// One script call for the whole batch: all or nothing, in one round trip; calls for
    /// different users share the connection and are pipelined.
    async fn publish_many(
        &self,
        user: &UserId,
        events: Vec<NewEvent>,
    ) -> Result<Vec<Accepted>, BatchError> {
        self.publish_batch(user, events).await
    }

    /// In effect when it returns: the first subscriber of a user on this node waits until
    /// Redis confirmed the channel subscription (batched with others pending), at most
    /// the command timeout.
    ///
    /// # Cancel safety
    /// Cancelling the call undoes the subscription, as an error does.
    async fn subscribe(
        &self,
        user: &UserId,
        subscriber: Arc<dyn Subscriber>,
    ) -> Result<(), BrokerError> {
        let subs = &self.inner.subs;
        let channel = self.keys(user).channel;
        let wait = match subs.add(&channel, user, subscriber.clone()) {
            Ok(wait) => wait,
            Err(SubscribeRefused::TooManyPending) => {
                return Err(BrokerError::Unavailable(
                    "too many subscriptions are waiting for Redis (max_pending_subscriptions)"
                        .into(),
                ));
            }
            Err(SubscribeRefused::Closed) => return Err(BrokerError::Closed),
        };
        let SubscribeWait::Pending(confirmed) = wait else {
            return Ok(());
        };
        let mut guard = SubscribeGuard {
            subs,
            channel: &channel,
            subscriber: &subscriber,
            armed: true,
        };
        match tokio::time::timeout(subs.timeout(), confirmed).await {
            Ok(Ok(())) => {
                guard.armed = false;
                Ok(())
            }
            Ok(Err(_)) => Err(BrokerError::Closed),
            Err(elapsed) => {
                bump(&self.inner.counters.timeouts);
                Err(BrokerError::timeout(
                    "Redis did not confirm the subscription within the command timeout",
                    elapsed,
                ))
            }
        }
    }

    /// The subscription is undone once every event accepted before the call has reached
    /// `subscriber`: a barrier message is published on the user's channel and awaited (at
    /// most the command timeout) first. Every call does so, not only one that undoes the
    /// last subscription: another call of the same subscriber may be waiting for a
    /// barrier published before this call's events, and end delivery once it passes. The
    /// channel is unsubscribed in Redis (batched) when its last local subscriber left.
    /// Never fails: the subscription is undone locally even when Redis cannot be reached.
    async fn unsubscribe(
        &self,
        user: &UserId,
        subscriber: &Arc<dyn Subscriber>,
    ) -> Result<(), BrokerError> {
        let channel = self.keys(user).channel;
        let publish_barrier = |message: Vec<u8>| {
            let mut publish = redis::cmd(self.inner.publish_command);
            publish.arg(&channel).arg(message);
            async move {
                self.round_trip(
                    "unsubscribe barrier",
                    self.inner.commands.query::<i64>(&publish),
                )
                .await
                .is_ok()
            }
        };
        self.inner
            .subs
            .unsubscribe(&channel, subscriber, publish_barrier)
            .await;
        Ok(())
    }

    async fn history(
        &self,
        user: &UserId,
        after: Seq,
        limit: usize,
    ) -> Result<History, BrokerError> {
        let config = &self.inner.config;
        let keys = self.keys(user);
        let limit = limit.min(config.max_events_per_user);
        let mut call = self.inner.scripts.history.prepare_invoke();
        for key in keys.script_keys() {
            call.key(key);
        }
        call.arg(Epoch::generate().as_str())
            .arg(millis(config.max_age))
            .arg(millis(config.stream_idle_ttl))
            .arg(after.get())
            .arg(limit);
        let reply: Vec<Value> = self
            .round_trip("history", self.inner.commands.invoke(&call))
            .await?;
        let bad = |what| self.malformed(Malformed { what });
        let mut items = reply.into_iter();
        let epoch = items
            .next()
            .as_ref()
            .and_then(epoch)
            .ok_or_else(|| bad("history epoch"))?;
        let mut number = |what| items.next().as_ref().and_then(int).ok_or_else(|| bad(what));
        add(
            &self.inner.counters.epochs_created,
            number("history created")?,
        );
        add(
            &self.inner.counters.history_trimmed,
            number("history trimmed")?,
        );
        let last_seq = Seq(number("history last_seq")?);
        let first_held = Seq(number("history first_held")?);
        let entries = match items.next() {
            Some(Value::Array(entries)) => entries,
            _ => return Err(bad("history entries")),
        };
        let events = entries
            .into_iter()
            .map(|e| stored_event(e, &epoch))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| self.malformed(e))?;
        let gap = (after.next() < first_held && after < last_seq)
            .then(|| (after.next(), Seq(first_held.get() - 1)));
        Ok(History {
            epoch,
            last_seq,
            gap,
            events,
        })
    }

    async fn lookup(
        &self,
        user: &UserId,
        event_id: &EventId,
    ) -> Result<Option<Accepted>, BrokerError> {
        let keys = self.keys(user);
        let mut call = self.inner.scripts.lookup.prepare_invoke();
        for key in keys.script_keys() {
            call.key(key);
        }
        call.arg(event_id.as_str())
            .arg(millis(self.inner.config.dedupe_window));
        let reply: Value = self
            .round_trip("lookup", self.inner.commands.invoke(&call))
            .await?;
        let items = match reply {
            Value::Nil => return Ok(None),
            Value::Array(items) => items,
            _ => {
                return Err(self.malformed(Malformed {
                    what: "lookup reply",
                }));
            }
        };
        let found = (|| {
            let epoch = epoch(items.first()?)?;
            Some(Accepted {
                seq: Seq(int(items.get(1)?)?),
                event_id: event_id.clone(),
                ts: Timestamp(int(items.get(2)?)?),
                epoch,
                duplicate: true,
            })
        })();
        found.map(Some).ok_or_else(|| {
            self.malformed(Malformed {
                what: "lookup reply",
            })
        })
    }

    async fn heartbeat_run(
        &self,
        user: &UserId,
        run_id: &RunId,
    ) -> Result<RunPresence, BrokerError> {
        let mut call = self.inner.scripts.heartbeat.prepare_invoke();
        call.key(self.keys(user).run(run_id));
        let reply: String = self
            .round_trip("heartbeat", self.inner.commands.invoke(&call))
            .await?;
        match reply.as_str() {
            "running" => Ok(RunPresence::Running),
            "ended" => Ok(RunPresence::Ended),
            "unknown" => Ok(RunPresence::Unknown),
            _ => Err(self.malformed(Malformed {
                what: "heartbeat reply",
            })),
        }
    }

    /// `PING` on the command connection, and the pub/sub connection up with every wanted
    /// channel subscribed: a node that cannot deliver is not ready either.
    async fn health(&self) -> Result<(), BrokerError> {
        let _: String = self
            .round_trip("PING", self.inner.commands.query(&redis::cmd("PING")))
            .await?;
        if !self.inner.subs.link_up() {
            return Err(BrokerError::Unavailable(
                "the Redis pub/sub connection is down; reconnecting".into(),
            ));
        }
        Ok(())
    }

    /// What this node counted; history sizes live in Redis and are not fetched here.
    fn stats(&self) -> BrokerStats {
        let m = self.metrics();
        let mut runs = RunStats::default();
        runs.runs = m.runs_held;
        runs.live_runs = m.runs_in_progress;
        runs.bytes = m.run_bytes;
        runs.evicted = m.runs_evicted;
        runs.expired = m.runs_expired;
        runs.violations = m.run_violations;
        runs.refused = m.runs_refused;
        BrokerStats {
            history_trimmed: m.history_trimmed,
            duplicates: m.duplicates,
            conflicts: m.conflicts,
            runs,
            ..BrokerStats::default()
        }
    }
}
