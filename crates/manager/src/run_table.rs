//! The in-memory broker's run table: the state of every run that guarded events touched
//! (rule 11 of [`crate::Broker`]), under the bounds of [`RunLimits`].
//!
//! One table for the node, behind one mutex that the broker takes inside a user's shard
//! lock, only for batches holding guarded events (lock order: shard, then table; the table
//! never takes a shard lock). Its critical section is a few map operations per event, and
//! the bounds are exact because they are one set of counters: a per-shard split would
//! give each user 1/32 of them.
//!
//! Runs are ordered by their last event (`by_touch`, for the TTL); finished runs also in a
//! second index of the same ticks (`finished`), the order in which they make room. A run's
//! place in `by_touch` may be older than its last event: an event moves it only in `runs`,
//! and the expiry moves it in `by_touch` when it gets to the front (so an event costs no
//! move in the index, and the expiry still forgets runs exactly `ttl` after their last
//! event).

use std::collections::BTreeMap;
use std::collections::hash_map::Entry;
use std::time::Duration;

use agentwire_protocol::{RunId, RunState, RunStep, RunViolation, UserId};
use foldhash::HashMap;
use tokio::time::Instant;

use crate::broker::BrokerError;
use crate::capacity::{give_back_empty_tree, give_back_map_capacity};
use crate::runs::{
    PublisherId, RunGuard, RunLimit, RunLimits, RunPresence, RunStats, run_base_bytes,
    tool_call_bytes,
};

type RunKey = (UserId, RunId);

#[derive(Debug)]
struct Run {
    state: RunState,
    owner: PublisherId,
    /// What the run is counted as: [`run_base_bytes`] plus its open tool calls.
    bytes: usize,
    /// The tick of its last event.
    tick: u64,
    /// Its key in `by_touch`: the tick of its last event, or of an earlier one.
    filed: u64,
    /// When its last event came (for the TTL).
    touched: Instant,
    /// When its last event or heartbeat came (for a stall claim, rule 12).
    active: Instant,
    /// Its own stall timeout, from its `Start`.
    stall_timeout: Option<Duration>,
}

/// What one publisher's runs in progress hold.
#[derive(Debug, Default, Clone, Copy)]
struct OwnerUse {
    live: usize,
    live_bytes: usize,
}

/// A run as a batch being checked leaves it.
#[derive(Debug)]
struct Draft {
    run_id: RunId,
    state: RunState,
    owner: PublisherId,
    bytes: usize,
    active: Instant,
    stall_timeout: Option<Duration>,
}

/// The run states of one in-memory broker.
#[derive(Debug)]
pub(crate) struct RunTable {
    limits: RunLimits,
    runs: HashMap<RunKey, Run>,
    /// Every run by the tick of its last event (or of an earlier one: see [`Run::filed`]),
    /// oldest first, with the time of that event: when it is not `ttl` old, no run is.
    by_touch: BTreeMap<u64, (RunKey, Instant)>,
    /// The finished runs among them.
    finished: BTreeMap<u64, RunKey>,
    owners: HashMap<PublisherId, OwnerUse>,
    live: usize,
    live_bytes: usize,
    bytes: usize,
    next_tick: u64,
    evicted: u64,
    expired: u64,
    violations: [u64; RunViolation::NAMES.len()],
    refused: [u64; 4],
    /// Empty between checks: the buffers [`RunTable::check`] drafts a batch's runs in.
    drafts: Vec<Draft>,
    draft_owners: Vec<(PublisherId, OwnerUse)>,
}

impl RunTable {
    pub(crate) fn new(limits: RunLimits) -> Self {
        RunTable {
            limits,
            runs: HashMap::default(),
            by_touch: BTreeMap::new(),
            finished: BTreeMap::new(),
            owners: HashMap::default(),
            live: 0,
            live_bytes: 0,
            bytes: 0,
            next_tick: 0,
            evicted: 0,
            expired: 0,
            violations: [0; RunViolation::NAMES.len()],
            refused: [0; 4],
            drafts: Vec::new(),
            draft_owners: Vec::new(),
        }
    }

    pub(crate) fn limits(&self) -> &RunLimits {
        &self.limits
    }

    /// Checks the guarded events of one batch of `user`, in order (`guards` holds each
    /// one's index in the batch), each against the state the earlier ones leave. With
    /// `commit`, applies them all when every one passes; a refusal changes nothing and
    /// names the refused event's index.
    pub(crate) fn check(
        &mut self,
        user: &UserId,
        guards: &[(usize, &RunGuard)],
        commit: bool,
    ) -> Result<(), (usize, BrokerError)> {
        // The drafts' buffers are kept from one check to the next: most batches hold one
        // guarded event, and would otherwise allocate two vectors for it.
        let mut drafts = std::mem::take(&mut self.drafts);
        let mut owners = std::mem::take(&mut self.draft_owners);
        let checked = self.check_with(user, guards, commit, &mut drafts, &mut owners);
        drafts.clear();
        owners.clear();
        self.drafts = drafts;
        self.draft_owners = owners;
        checked
    }

    /// [`RunTable::check`], with empty buffers for the drafts of runs and owners.
    fn check_with(
        &mut self,
        user: &UserId,
        guards: &[(usize, &RunGuard)],
        commit: bool,
        drafts: &mut Vec<Draft>,
        owners: &mut Vec<(PublisherId, OwnerUse)>,
    ) -> Result<(), (usize, BrokerError)> {
        let now = Instant::now();
        self.expire(now);
        let (mut live, mut live_bytes) = (self.live, self.live_bytes);
        for &(i, guard) in guards {
            let d = match drafts.iter().position(|d| d.run_id == guard.run_id) {
                Some(d) => d,
                None => {
                    drafts.push(self.draft(user, guard, now));
                    drafts.len() - 1
                }
            };
            let draft = &mut drafts[d];
            if let Some(claim) = guard.if_stalled
                && matches!(draft.state, RunState::Running { .. })
            {
                let timeout = draft.stall_timeout.unwrap_or(claim);
                let idle = now.saturating_duration_since(draft.active);
                if timeout.is_zero() || idle < timeout {
                    let due_in = (!timeout.is_zero()).then(|| timeout - idle);
                    return Err((i, BrokerError::NotStalled { due_in }));
                }
            }
            // A delta opens its message only when the message is not open yet.
            let opens_message = match (&guard.step, &draft.state) {
                (RunStep::StreamMessage(id), RunState::Running { open_messages, .. }) => {
                    !open_messages.contains(id)
                }
                _ => false,
            };
            if let Err(v) = draft.state.apply_step(&guard.step) {
                self.violations[v.index()] += 1;
                return Err((i, BrokerError::Violation(v)));
            }
            draft.active = now;
            let base = run_base_bytes(user, &guard.run_id);
            // The bytes the step adds to runs in progress (negative: frees), and whether it
            // adds a run.
            let (grow, starts): (isize, bool) = match &guard.step {
                RunStep::Start => {
                    draft.owner = guard.owner.clone();
                    draft.stall_timeout = guard.stall_timeout;
                    (base as isize, true)
                }
                RunStep::OpenToolCall(id) => (tool_call_bytes(id) as isize, false),
                RunStep::CloseToolCall(id) => (-(tool_call_bytes(id) as isize), false),
                RunStep::StreamMessage(id) if opens_message => {
                    (tool_call_bytes(id) as isize, false)
                }
                RunStep::StreamMessage(_) => (0, false),
                RunStep::CloseMessage(id) => (-(tool_call_bytes(id) as isize), false),
                RunStep::End(_) => (-(draft.bytes as isize) + base as isize, false),
                RunStep::Think => (0, false),
            };
            let ends = matches!(guard.step, RunStep::End(_));
            if grow == 0 && !starts && !ends {
                // Counts nothing, for the run or its owner (a thought, a delta of an open
                // message): the owner's use is not looked up.
                continue;
            }
            let o = match owners.iter().position(|(p, _)| *p == draft.owner) {
                Some(o) => o,
                None => {
                    let now_use = self.owners.get(&draft.owner).copied().unwrap_or_default();
                    owners.push((draft.owner.clone(), now_use));
                    owners.len() - 1
                }
            };
            let owner = &mut owners[o].1;
            if grow > 0 {
                let grow = grow as usize;
                let limits = &self.limits;
                let full = if starts && live + 1 > limits.max_runs {
                    Some(RunLimit::Runs)
                } else if live_bytes + grow > limits.max_bytes {
                    Some(RunLimit::Bytes)
                } else if starts && owner.live + 1 > limits.max_runs_per_owner {
                    Some(RunLimit::OwnerRuns)
                } else if owner.live_bytes + grow > limits.max_bytes_per_owner {
                    Some(RunLimit::OwnerBytes)
                } else {
                    None
                };
                if let Some(limit) = full {
                    self.refused[limit.index()] += 1;
                    return Err((i, BrokerError::TooManyRuns(limit)));
                }
            }
            match &guard.step {
                RunStep::End(_) => {
                    // Leaves the runs in progress; stays held as a finished run of `base`.
                    live -= 1;
                    live_bytes -= draft.bytes;
                    owner.live -= 1;
                    owner.live_bytes -= draft.bytes;
                    draft.bytes = base;
                }
                _ => {
                    if starts {
                        live += 1;
                        owner.live += 1;
                    }
                    live_bytes = live_bytes.saturating_add_signed(grow);
                    owner.live_bytes = owner.live_bytes.saturating_add_signed(grow);
                    draft.bytes = draft.bytes.saturating_add_signed(grow);
                }
            }
        }
        if commit {
            self.commit(user, drafts, owners, now);
            self.live = live;
            self.live_bytes = live_bytes;
            self.evict();
        }
        Ok(())
    }

    /// The state `guard`'s run is in now.
    fn draft(&self, user: &UserId, guard: &RunGuard, now: Instant) -> Draft {
        match self.runs.get(&(user.clone(), guard.run_id.clone())) {
            Some(run) => Draft {
                run_id: guard.run_id.clone(),
                state: run.state.clone(),
                owner: run.owner.clone(),
                bytes: run.bytes,
                active: run.active,
                stall_timeout: run.stall_timeout,
            },
            None => Draft {
                run_id: guard.run_id.clone(),
                state: RunState::NotStarted,
                owner: guard.owner.clone(),
                bytes: 0,
                active: now,
                stall_timeout: None,
            },
        }
    }

    /// A heartbeat of `user`'s run `run_id` (rule 12 of [`crate::Broker`]): a run in
    /// progress takes it as a sign of life.
    pub(crate) fn heartbeat(&mut self, user: &UserId, run_id: &RunId) -> RunPresence {
        let now = Instant::now();
        self.expire(now);
        match self.runs.get_mut(&(user.clone(), run_id.clone())) {
            None => RunPresence::Unknown,
            Some(run) if run.state.is_finished() => RunPresence::Ended,
            Some(run) => {
                run.active = now;
                RunPresence::Running
            }
        }
    }

    fn commit(
        &mut self,
        user: &UserId,
        drafts: &mut Vec<Draft>,
        owners: &mut Vec<(PublisherId, OwnerUse)>,
        now: Instant,
    ) {
        for draft in drafts.drain(..) {
            let tick = self.next_tick;
            self.next_tick += 1;
            let finished = draft.state.is_finished();
            match self.runs.entry((user.clone(), draft.run_id)) {
                Entry::Occupied(mut slot) => {
                    // Stays where it is in `by_touch` (see `Run::filed`).
                    let run = slot.get_mut();
                    if run.state.is_finished() {
                        self.finished.remove(&run.tick);
                    }
                    self.bytes = self.bytes - run.bytes + draft.bytes;
                    run.state = draft.state;
                    run.bytes = draft.bytes;
                    run.tick = tick;
                    run.touched = now;
                    run.active = draft.active;
                    run.stall_timeout = draft.stall_timeout;
                    if finished {
                        self.finished.insert(tick, slot.key().clone());
                    }
                }
                Entry::Vacant(slot) => {
                    self.bytes += draft.bytes;
                    let key = slot.key().clone();
                    slot.insert(Run {
                        state: draft.state,
                        owner: draft.owner,
                        bytes: draft.bytes,
                        tick,
                        filed: tick,
                        touched: now,
                        active: draft.active,
                        stall_timeout: draft.stall_timeout,
                    });
                    if finished {
                        self.finished.insert(tick, key.clone());
                    }
                    self.by_touch.insert(tick, (key, now));
                }
            }
        }
        for (owner, use_) in owners.drain(..) {
            if use_.live == 0 && use_.live_bytes == 0 {
                self.owners.remove(&owner);
            } else {
                self.owners.insert(owner, use_);
            }
        }
    }

    /// Forgets the oldest finished runs while the table is over a bound.
    fn evict(&mut self) {
        while self.runs.len() > self.limits.max_runs || self.bytes > self.limits.max_bytes {
            let Some((_, key)) = self.finished.pop_first() else {
                break;
            };
            if let Some(run) = self.runs.remove(&key) {
                self.by_touch.remove(&run.filed);
                self.bytes -= run.bytes;
                self.evicted += 1;
            }
        }
    }

    /// Forgets every run whose last event is `ttl` old, then shrinks the run maps when
    /// they are a quarter full or less.
    pub(crate) fn expire(&mut self, now: Instant) {
        while let Some((&filed, (key, filed_at))) = self.by_touch.first_key_value() {
            if now.saturating_duration_since(*filed_at) < self.limits.ttl {
                // The oldest filing is not `ttl` old, and every run's last event came at
                // its filing or later.
                break;
            }
            let refile = match self.runs.get_mut(key) {
                Some(run) if now.saturating_duration_since(run.touched) < self.limits.ttl => {
                    // Events came since it was filed: filed again at its last one.
                    run.filed = run.tick;
                    Some((run.tick, run.touched))
                }
                _ => None,
            };
            let Some((_, (key, _))) = self.by_touch.pop_first() else {
                break;
            };
            debug_assert!(refile.is_none_or(|(tick, _)| tick != filed));
            if let Some((tick, touched)) = refile {
                self.by_touch.insert(tick, (key, touched));
                continue;
            }
            let Some(run) = self.runs.remove(&key) else {
                continue;
            };
            if run.state.is_finished() {
                self.finished.remove(&run.tick);
            }
            self.bytes -= run.bytes;
            self.expired += 1;
            if !run.state.is_finished() {
                self.live -= 1;
                self.live_bytes -= run.bytes;
                if let Some(owner) = self.owners.get_mut(&run.owner) {
                    owner.live -= 1;
                    owner.live_bytes -= run.bytes;
                    if owner.live == 0 && owner.live_bytes == 0 {
                        self.owners.remove(&run.owner);
                    }
                }
            }
        }
        // Forgotten runs leave their slots behind: give them back (at most once per map
        // per sweep, and only a quarter full or less).
        give_back_map_capacity(&mut self.runs);
        give_back_map_capacity(&mut self.owners);
        give_back_empty_tree(&mut self.by_touch);
        give_back_empty_tree(&mut self.finished);
    }

    pub(crate) fn stats(&self) -> RunStats {
        RunStats {
            runs: self.runs.len() as u64,
            live_runs: self.live as u64,
            bytes: self.bytes as u64,
            evicted: self.evicted,
            expired: self.expired,
            violations: self.violations,
            refused: self.refused,
        }
    }

    /// The state of `user`'s run `run_id` as the table holds it.
    #[cfg(test)]
    pub(crate) fn state(&self, user: &UserId, run_id: &RunId) -> Option<&RunState> {
        self.runs
            .get(&(user.clone(), run_id.clone()))
            .map(|r| &r.state)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use agentwire_protocol::{RunOutcome, RunViolation};

    fn user(s: &str) -> UserId {
        UserId::new(s).expect("user")
    }

    fn guard(run: &str, step: RunStep, owner: &str) -> RunGuard {
        RunGuard::new(
            run.parse().expect("run"),
            step,
            PublisherId::new(owner).expect("owner"),
        )
    }

    fn one(table: &mut RunTable, u: &UserId, g: &RunGuard) -> Result<(), BrokerError> {
        table.check(u, &[(0, g)], true).map_err(|(_, e)| e)
    }

    /// The counters stay equal to what the held runs add up to, through starts, tool
    /// calls, ends, evictions and expiry.
    fn assert_consistent(table: &RunTable) {
        let bytes: usize = table.runs.values().map(|r| r.bytes).sum();
        assert_eq!(table.bytes, bytes);
        let live: Vec<&Run> = table
            .runs
            .values()
            .filter(|r| !r.state.is_finished())
            .collect();
        assert_eq!(table.live, live.len());
        assert_eq!(
            table.live_bytes,
            live.iter().map(|r| r.bytes).sum::<usize>()
        );
        assert_eq!(table.by_touch.len(), table.runs.len());
        assert_eq!(table.finished.len(), table.runs.len() - live.len());
        for (owner, use_) in &table.owners {
            let mine: Vec<&&Run> = live.iter().filter(|r| r.owner == *owner).collect();
            assert_eq!(use_.live, mine.len());
            assert_eq!(use_.live_bytes, mine.iter().map(|r| r.bytes).sum::<usize>());
        }
    }

    #[tokio::test(start_paused = true)]
    async fn counts_follow_the_runs() {
        let mut t = RunTable::new(RunLimits::default());
        let u = user("alice");
        one(&mut t, &u, &guard("r1", RunStep::Start, "k")).expect("start");
        one(
            &mut t,
            &u,
            &guard("r1", RunStep::OpenToolCall("tc".into()), "k"),
        )
        .expect("open");
        assert_consistent(&t);
        assert_eq!(
            t.bytes,
            run_base_bytes(&u, &"r1".parse().expect("run")) + tool_call_bytes("tc")
        );
        one(
            &mut t,
            &u,
            &guard("r1", RunStep::End(RunOutcome::Failed), "k"),
        )
        .expect("end");
        assert_consistent(&t);
        assert_eq!(t.live, 0);
        assert!(t.owners.is_empty());
        assert_eq!(
            one(&mut t, &u, &guard("r1", RunStep::Think, "k")),
            Err(BrokerError::Violation(RunViolation::AfterTerminal {
                event: agentwire_protocol::EventType::AgentThinking,
                ended_with: agentwire_protocol::EventType::AgentError,
            }))
        );
        tokio::time::advance(Duration::from_secs(3600)).await;
        t.expire(Instant::now());
        assert_consistent(&t);
        assert_eq!((t.runs.len(), t.bytes, t.expired), (0, 0, 1));
    }

    /// A run is forgotten `ttl` after its last event, whatever order the runs started in:
    /// an early run kept busy outlives a later one gone quiet, to the millisecond.
    #[tokio::test(start_paused = true)]
    async fn runs_expire_ttl_after_their_last_event() {
        let ttl = RunLimits::default().ttl;
        let ms = Duration::from_millis(1);
        let mut t = RunTable::new(RunLimits::default());
        let u = user("alice");
        let (r1, r2) = ("r1".parse().expect("run"), "r2".parse().expect("run"));
        let at = |t0: Instant, d: Duration| async move {
            tokio::time::advance((t0 + d).saturating_duration_since(Instant::now())).await;
        };
        let t0 = Instant::now();
        one(&mut t, &u, &guard("r1", RunStep::Start, "k")).expect("start");
        at(t0, Duration::from_secs(1)).await;
        one(&mut t, &u, &guard("r2", RunStep::Start, "k")).expect("start");
        for k in 1..=3 {
            at(t0, Duration::from_secs(1) + ttl / 4 * k).await;
            one(&mut t, &u, &guard("r1", RunStep::Think, "k")).expect("think");
            assert_consistent(&t);
        }
        let (r1_last, r2_last) = (Duration::from_secs(1) + ttl / 4 * 3, Duration::from_secs(1));
        at(t0, r2_last + ttl - ms).await;
        t.expire(Instant::now());
        assert!(t.state(&u, &r2).is_some(), "r2 is kept until ttl passes");
        at(t0, r2_last + ttl).await;
        t.expire(Instant::now());
        assert_consistent(&t);
        assert!(t.state(&u, &r2).is_none(), "r2 went quiet ttl ago");
        assert!(t.state(&u, &r1).is_some(), "r1 had an event since");
        at(t0, r1_last + ttl - ms).await;
        t.expire(Instant::now());
        assert!(t.state(&u, &r1).is_some());
        at(t0, r1_last + ttl).await;
        t.expire(Instant::now());
        assert_consistent(&t);
        assert_eq!((t.runs.len(), t.expired, t.live, t.bytes), (0, 2, 0, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn a_refused_batch_changes_nothing() {
        let mut t = RunTable::new(RunLimits::default());
        let u = user("alice");
        let (start, open, bad) = (
            guard("r1", RunStep::Start, "k"),
            guard("r1", RunStep::OpenToolCall("a".into()), "k"),
            guard("r1", RunStep::CloseToolCall("b".into()), "k"),
        );
        let err = t.check(&u, &[(0, &start), (1, &open), (4, &bad)], true);
        assert!(
            matches!(err, Err((4, BrokerError::Violation(_)))),
            "{err:?}"
        );
        assert!(t.runs.is_empty());
        assert_consistent(&t);
        // Checked without commit: nothing either.
        t.check(&u, &[(0, &start)], false).expect("fits");
        assert!(t.state(&u, &start.run_id).is_none());
    }
}
