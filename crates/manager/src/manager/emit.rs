//! Emitting: validate and serialize an event once (`prepare_event`), publish it through the
//! broker (`emit_prepared`, `emit_prepared_many`), and both at once
//! (`emit_critical_event`).

use foldhash::HashMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use agentwire_protocol::{
    DecodeError, Event, EventId, EventType, PublishedEvent, RunId, RunStep, RunViolation, Seq,
    ThreadId, UserId,
};
use bytes::Bytes;

use super::UnifiedWebSocketManager;
use crate::broker::{Accepted, BrokerError, EventDigest, NewEvent};
use crate::runs::{PublisherId, RunGuard, RunLimit};

/// Why an event was not emitted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EmitError {
    /// The event is invalid (e.g. a run event without `run_id`).
    #[error("invalid event: {0}")]
    Invalid(#[from] DecodeError),
    /// The serialized event is larger than `max_event_bytes`.
    #[error("event is {size} bytes; the limit is {limit}")]
    TooLarge {
        /// Its size in bytes.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// The `event_id` was already accepted (as `seq`) for a different event: ids name one
    /// event each. Nothing was stored; retrying cannot help.
    #[error("event_id {event_id} was already accepted as seq {} for a different event", seq.get())]
    Conflict {
        /// The reused id.
        event_id: EventId,
        /// Where the id's first event sits in the stream.
        seq: Seq,
    },
    /// The event breaks its run's lifecycle, as the broker found it with the event's run
    /// guard ([`PreparedEvent::guarded`]). Nothing was stored; retrying cannot help.
    #[error("run lifecycle violation: {0}")]
    Violation(RunViolation),
    /// The event's run does not fit the broker's run-state bounds (see
    /// [`crate::RunLimits`]). Nothing was stored; it may fit once other runs have ended.
    #[error("no room for the run's state: {0}")]
    TooManyRuns(RunLimit),
    /// Not published because another event of the same user in the same
    /// [`UnifiedWebSocketManager::emit_prepared_many`] call — the one at `index` — was
    /// refused: the broker takes a user's events all or nothing.
    #[error("not published: event [{index}] of the same user was refused")]
    BatchRefused {
        /// Where the refused event sits among the events of the call.
        index: usize,
    },
    /// The broker did not accept it.
    #[error(transparent)]
    Broker(BrokerError),
}

impl From<BrokerError> for EmitError {
    fn from(e: BrokerError) -> Self {
        match e {
            BrokerError::Conflict { event_id, seq } => EmitError::Conflict { event_id, seq },
            BrokerError::Violation(v) => EmitError::Violation(v),
            BrokerError::TooManyRuns(limit) => EmitError::TooManyRuns(limit),
            other => EmitError::Broker(other),
        }
    }
}

impl EmitError {
    /// Whether retrying the same event may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, EmitError::Broker(e) if e.is_transient())
    }
}

/// An event validated and serialized once, with its `event_id` fixed, ready to publish —
/// and to publish again after a transient failure without risk of a duplicate.
#[derive(Debug, Clone)]
pub struct PreparedEvent {
    user: UserId,
    event_type: EventType,
    event_id: EventId,
    body: Bytes,
    digest: EventDigest,
    /// The run it names (a `custom` event may name one too).
    run_id: Option<RunId>,
    /// The step it takes in its run, for a run event.
    step: Option<RunStep>,
    /// Its thread, for the watchdog's `agent_error` in the same thread.
    thread_id: Option<ThreadId>,
    /// The run's own stall timeout, on `agent_started`.
    stall_timeout: Option<Duration>,
    /// Set on the watchdog's claim (rule 12 of [`crate::Broker`]).
    if_stalled: Option<Duration>,
    /// Who a run the event starts counts against, when the broker checks its run.
    owner: Option<PublisherId>,
}

impl PreparedEvent {
    /// Whose stream it goes to.
    pub fn user_id(&self) -> &UserId {
        &self.user
    }

    /// Its type.
    pub fn event_type(&self) -> EventType {
        self.event_type
    }

    /// Its id; every publish attempt uses it.
    pub fn event_id(&self) -> &EventId {
        &self.event_id
    }

    /// Its digest: what an `event_id` reused for another event is told apart by.
    pub fn digest(&self) -> EventDigest {
        self.digest
    }

    /// The step the event takes in its run (`None` for a `custom` event).
    pub fn run_step(&self) -> Option<&RunStep> {
        self.step.as_ref()
    }

    /// The run it names, if any (a `custom` event may name one too).
    pub fn run_id(&self) -> Option<&RunId> {
        self.run_id.as_ref()
    }

    /// The same event, checked by the broker against its run's lifecycle atomically with
    /// its append (rule 11 of [`crate::Broker`]); a run it starts counts against `owner`.
    /// A `custom` event stays unchecked.
    #[must_use]
    pub fn guarded(mut self, owner: PublisherId) -> Self {
        self.owner = Some(owner);
        self
    }

    /// The guard the broker checks the event with, if it is guarded.
    pub fn run_guard(&self) -> Option<RunGuard> {
        let (run_id, step) = self.run_id.as_ref().zip(self.step.as_ref())?;
        let owner = self.owner.as_ref()?;
        let guard = RunGuard::new(run_id.clone(), step.clone(), owner.clone())
            .with_stall_timeout(self.stall_timeout);
        Some(match self.if_stalled {
            Some(timeout) => guard.if_stalled(timeout),
            None => guard,
        })
    }

    /// The same event as a stall claim under `timeout` ([`RunGuard::if_stalled`]).
    pub(super) fn if_stalled(mut self, timeout: Duration) -> Self {
        self.if_stalled = Some(timeout);
        self
    }

    /// Whether it is the watchdog's stall claim.
    pub(super) fn is_stall_claim(&self) -> bool {
        self.if_stalled.is_some()
    }

    /// Its thread.
    pub(super) fn thread_id(&self) -> Option<&ThreadId> {
        self.thread_id.as_ref()
    }

    /// The run's own stall timeout, on `agent_started`.
    pub(super) fn stall_timeout(&self) -> Option<Duration> {
        self.stall_timeout
    }

    /// Who its run counts against, when it is guarded.
    pub(super) fn owner(&self) -> Option<&PublisherId> {
        self.owner.as_ref()
    }

    fn to_new_event(&self) -> NewEvent {
        NewEvent::with_digest(
            self.event_type,
            Some(self.event_id.clone()),
            self.body.clone(),
            self.digest,
            self.run_guard(),
        )
    }
}

impl UnifiedWebSocketManager {
    /// Validates `event` and serializes it once, fixing its `event_id` (a fresh UUIDv7
    /// when `event_id` is `None`).
    ///
    /// # Errors
    /// [`EmitError::Invalid`] or [`EmitError::TooLarge`].
    pub fn prepare_event(
        &self,
        user: &UserId,
        event: &Event,
        event_id: Option<EventId>,
    ) -> Result<PreparedEvent, EmitError> {
        self.prepare_published(PublishedEvent::new(user.clone(), event_id, event)?)
    }

    /// Prepares an event already checked and serialized (by the publish API's decoding,
    /// [`agentwire_protocol::PublishBody::decode_events`]), fixing its `event_id` (a fresh
    /// UUIDv7 when it has none).
    ///
    /// # Errors
    /// [`EmitError::TooLarge`].
    pub fn prepare_published(&self, event: PublishedEvent) -> Result<PreparedEvent, EmitError> {
        let (user, event_id, facts, body) = event.into_parts();
        let limit = self.inner.config.max_event_bytes;
        if body.len() > limit {
            return Err(EmitError::TooLarge {
                size: body.len(),
                limit,
            });
        }
        let body = Bytes::from(body);
        Ok(PreparedEvent {
            user,
            event_type: facts.event_type,
            event_id: event_id.unwrap_or_else(EventId::generate),
            digest: EventDigest::of(facts.event_type, &body),
            body,
            run_id: facts.run_id,
            step: facts.step,
            thread_id: facts.thread_id,
            stall_timeout: facts.stall_timeout_ms.map(Duration::from_millis),
            if_stalled: None,
            owner: None,
        })
    }

    /// The single point every event passes: validates `event`, serializes it once and
    /// publishes it to the broker, whose subscription then fans it out to the user's
    /// connections on every node. A user with no connection is not an error: the event
    /// waits in history.
    ///
    /// # Errors
    /// [`EmitError`]; [`EmitError::is_transient`] says whether a retry can help.
    pub async fn emit_critical_event(
        &self,
        user: &UserId,
        event: Event,
    ) -> Result<Accepted, EmitError> {
        let prepared = self.prepare_event(user, &event, None)?;
        self.emit_prepared(&prepared).await
    }

    /// Publishes a prepared event. Publishing it again (a retry) cannot duplicate it: the
    /// broker answers the first acceptance.
    ///
    /// # Errors
    /// [`EmitError::Broker`].
    pub async fn emit_prepared(&self, event: &PreparedEvent) -> Result<Accepted, EmitError> {
        let result = self
            .inner
            .broker
            .publish(&event.user, event.to_new_event())
            .await;
        match &result {
            Ok(a) => self.count_accepted(event, a),
            Err(e) => self.count_failure(e, 1),
        }
        Ok(result?)
    }

    /// Counts `events` emits that failed with `error` (one refusal).
    pub(super) fn count_failure(&self, error: &BrokerError, events: u64) {
        let counters = &self.inner.counters;
        counters.emit_failures.fetch_add(events, Ordering::Relaxed);
        if matches!(error, BrokerError::Conflict { .. }) {
            counters.conflicts.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub(super) fn count_accepted(&self, event: &PreparedEvent, accepted: &Accepted) {
        let counters = &self.inner.counters;
        if accepted.duplicate {
            counters.deduplicated.fetch_add(1, Ordering::Relaxed);
        } else {
            counters.emitted.fetch_add(1, Ordering::Relaxed);
            let i = EventType::ALL
                .iter()
                .position(|t| *t == event.event_type)
                .unwrap_or(0);
            counters.emitted_by_type[i].fetch_add(1, Ordering::Relaxed);
            self.watch(event);
            self.tell_run_end(event, accepted);
        }
    }

    /// Publishes prepared events, possibly of several users: one
    /// [`Broker::publish_many`](crate::Broker::publish_many) per user, the users' batches
    /// concurrently. Per user the batch is all or nothing under a refusal: the refused
    /// event answers why ([`EmitError::Conflict`], [`EmitError::Violation`],
    /// [`EmitError::TooManyRuns`]) and the user's other events
    /// [`EmitError::BatchRefused`] naming it. On a transient error, the events known to be
    /// accepted answer `Ok` and the rest the error (retrying them all with the same ids is
    /// safe).
    ///
    /// Answers are in the order of `events`.
    ///
    /// # Cancel safety
    /// Cancelling may leave some users' batches accepted and others not; publishing the
    /// same prepared events again completes them without duplicates.
    pub async fn emit_prepared_many(
        &self,
        events: &[PreparedEvent],
    ) -> Vec<Result<Accepted, EmitError>> {
        let groups = UserGroups::of(events, PreparedEvent::user_id);
        let broker = &self.inner.broker;
        let calls = groups.iter().map(|(user, idx)| {
            let batch = idx.iter().map(|&i| events[i].to_new_event()).collect();
            broker.publish_many(user, batch)
        });
        // The in-memory broker delivers every user's events while the calls are polled:
        // their direct writes go out together when each poll ends.
        let answers = super::held::poll_holding(futures_util::future::join_all(calls)).await;
        let mut out: Vec<Option<Result<Accepted, EmitError>>> = vec![None; events.len()];
        for ((_, idx), answer) in groups.iter().zip(answers) {
            let (accepted, error, refused) = match answer {
                Ok(accepted) => (accepted, None, None),
                Err(e) => {
                    self.count_failure(&e.error, idx.len().saturating_sub(e.accepted.len()) as u64);
                    // The refused event, as an index into `events`.
                    let refused = e.refused_at.and_then(|at| idx.get(at).copied());
                    (e.accepted, Some(EmitError::from(e.error)), refused)
                }
            };
            let mut accepted = accepted.into_iter();
            for &i in idx {
                out[i] = Some(match (accepted.next(), &error, refused) {
                    (Some(a), _, _) => {
                        self.count_accepted(&events[i], &a);
                        Ok(a)
                    }
                    (None, Some(_), Some(r)) if r != i => Err(EmitError::BatchRefused { index: r }),
                    (None, Some(e), _) => Err(e.clone()),
                    (None, None, _) => Err(EmitError::Broker(BrokerError::Rejected(
                        "the broker answered fewer events than the batch held".into(),
                    ))),
                });
            }
        }
        out.into_iter()
            .map(|r| {
                r.unwrap_or_else(|| {
                    Err(EmitError::Broker(BrokerError::Rejected(
                        "event missing from its batch".into(),
                    )))
                })
            })
            .collect()
    }
}

/// The events of a call grouped by user, each user's in their order, in the order of each
/// user's first event: one array of the events' indexes, a user's group a run of it (a
/// call holds many users' events, and this runs for every publish, so no array per user).
struct UserGroups<'a> {
    /// Each group's user and where its run starts in `order`.
    groups: Vec<(&'a UserId, usize)>,
    /// The indexes of the events, group after group.
    order: Vec<usize>,
}

impl<'a> UserGroups<'a> {
    /// Groups `events` by the user `user_of` reads of each.
    fn of<T>(events: &'a [T], user_of: impl Fn(&'a T) -> &'a UserId) -> Self {
        let mut group_of: HashMap<&UserId, usize> = HashMap::default();
        group_of.reserve(events.len());
        // Each event's group, and each group's user and size.
        let mut groups: Vec<(&UserId, usize)> = Vec::with_capacity(events.len());
        let in_group: Vec<usize> = events
            .iter()
            .map(|e| {
                let user = user_of(e);
                let g = *group_of.entry(user).or_insert_with(|| {
                    groups.push((user, 0));
                    groups.len() - 1
                });
                groups[g].1 += 1;
                g
            })
            .collect();
        // Sizes to where each run ends; then, last event first, each event into the last
        // free place of its group's run, which leaves each group at where its run starts.
        let mut end = 0;
        for (_, size) in &mut groups {
            end += *size;
            *size = end;
        }
        let mut order = vec![0; events.len()];
        for (i, &g) in in_group.iter().enumerate().rev() {
            groups[g].1 -= 1;
            order[groups[g].1] = i;
        }
        UserGroups { groups, order }
    }

    /// Each user with the indexes of its events, in order.
    fn iter(&self) -> impl Iterator<Item = (&'a UserId, &[usize])> {
        let ends = self.groups.iter().skip(1).map(|&(_, start)| start);
        self.groups
            .iter()
            .zip(ends.chain([self.order.len()]))
            .map(|(&(user, start), end)| (user, &self.order[start..end]))
    }
}

#[cfg(test)]
mod tests {
    use super::UserGroups;
    use agentwire_protocol::UserId;
    use proptest::prelude::*;

    proptest! {
        /// Every event is in its user's group once, each group holds its user's events in
        /// their order, and the groups come in the order of each user's first event.
        #[test]
        fn user_groups_keep_each_users_events_in_order(users in prop::collection::vec(0u8..6, 0..60)) {
            let ids: Vec<UserId> = users.iter().map(|u| format!("u{u}").parse().expect("id")).collect();
            let groups = UserGroups::of(&ids, |u| u);
            let mut firsts: Vec<&UserId> = Vec::new();
            for u in &ids {
                if !firsts.contains(&u) {
                    firsts.push(u);
                }
            }
            let got: Vec<(&UserId, Vec<usize>)> =
                groups.iter().map(|(u, run)| (u, run.to_vec())).collect();
            let want: Vec<(&UserId, Vec<usize>)> = firsts
                .into_iter()
                .map(|u| (u, (0..ids.len()).filter(|&i| ids[i] == *u).collect()))
                .collect();
            prop_assert_eq!(got, want);
        }
    }
}
