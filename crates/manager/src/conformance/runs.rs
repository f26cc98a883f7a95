//! One property per part of rule 11 (the run lifecycle, atomic with the append), checked
//! against [`RunState`], the reference.

use std::sync::Arc;
use std::time::Duration;

use agentwire_protocol::{
    AgentCompleted, AgentError, AgentStarted, AgentThinking, Custom, Event, EventData, EventId,
    EventType, MAX_OPEN_MESSAGES, MAX_OPEN_TOOL_CALLS, MessageCompleted, MessageDelta, RunId,
    RunOutcome, RunState, RunStep, RunViolation, Seq, ToolCompleted, ToolExecuting, UserId,
};
use bytes::Bytes;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::broker::{Accepted, BatchError, Broker, BrokerError, NewEvent};
use crate::runs::{PublisherId, RunGuard, RunLimit, RunLimits, run_base_bytes, tool_call_bytes};

use super::support::*;
use super::{Checked, Harness};

/// The publisher the properties' runs count against, unless a property says otherwise.
fn owner() -> PublisherId {
    publisher("conformance")
}

fn publisher(name: &str) -> PublisherId {
    PublisherId::new(name).expect("a valid publisher name")
}

fn run_id(name: &str) -> RunId {
    name.parse().expect("a valid run id")
}

/// The event taking `step`, numbered `n` (so two events of one step differ).
fn data_of(step: &RunStep, n: u64) -> EventData {
    match step {
        RunStep::Start => AgentStarted::default().into(),
        RunStep::Think => AgentThinking {
            thought: "…".into(),
            step: Some(n),
            ..Default::default()
        }
        .into(),
        RunStep::OpenToolCall(id) => ToolExecuting {
            tool_call_id: id.clone(),
            tool_name: "search".into(),
            ..Default::default()
        }
        .into(),
        RunStep::CloseToolCall(id) => ToolCompleted {
            tool_call_id: id.clone(),
            tool_name: "search".into(),
            ..Default::default()
        }
        .into(),
        RunStep::StreamMessage(id) => MessageDelta {
            message_id: id.clone(),
            delta: format!("piece {n} "),
            ..Default::default()
        }
        .into(),
        RunStep::CloseMessage(id) => MessageCompleted {
            message_id: id.clone(),
            ..Default::default()
        }
        .into(),
        RunStep::End(RunOutcome::Completed) => AgentCompleted::default().into(),
        RunStep::End(RunOutcome::Failed) => AgentError {
            message: "failed".into(),
            ..Default::default()
        }
        .into(),
    }
}

/// A guarded event of `run` taking `step` for publisher `by` — an event of the step's type
/// with a payload of its own (numbered `n`, so two events of one step differ) — under
/// `event_id` if given: what the properties publish, for broker crates' own run tests.
pub fn guarded_event(
    run: &RunId,
    step: RunStep,
    n: u64,
    event_id: Option<EventId>,
    by: &PublisherId,
) -> NewEvent {
    let thread = format!("t{n}").parse().expect("a valid thread id");
    let event = Event::new(Some(thread), Some(run.clone()), data_of(&step, n));
    NewEvent::new(step.event_type(), event_id, Bytes::from(event.body_json()))
        .with_run(RunGuard::new(run.clone(), step, by.clone()))
}

fn run_event(run: &RunId, step: RunStep, n: u64) -> NewEvent {
    guarded_event(run, step, n, None, &owner())
}

fn open(id: &str) -> RunStep {
    RunStep::OpenToolCall(id.into())
}

fn close(id: &str) -> RunStep {
    RunStep::CloseToolCall(id.into())
}

fn stream(id: &str) -> RunStep {
    RunStep::StreamMessage(id.into())
}

fn finish(id: &str) -> RunStep {
    RunStep::CloseMessage(id.into())
}

/// A `custom` event naming `run`, without a guard: outside every run.
fn custom_of(run: &RunId, n: u64) -> NewEvent {
    let event = Event::new(
        None,
        Some(run.clone()),
        Custom {
            name: "note".into(),
            value: n.into(),
            extra: Default::default(),
        },
    );
    NewEvent::new(EventType::Custom, None, Bytes::from(event.body_json()))
}

async fn violation_of<B: Broker + ?Sized>(
    broker: &B,
    user: &UserId,
    event: NewEvent,
) -> RunViolation {
    match broker.publish(user, event).await {
        Err(BrokerError::Violation(v)) => v,
        other => panic!("expected a run violation, got {other:?}"),
    }
}

async fn refused_at_limit<B: Broker + ?Sized>(
    broker: &B,
    user: &UserId,
    event: NewEvent,
) -> RunLimit {
    match broker.publish(user, event).await {
        Err(BrokerError::TooManyRuns(limit)) => limit,
        other => panic!("expected a run-state bound to refuse the event, got {other:?}"),
    }
}

fn not_started(event: EventType) -> RunViolation {
    RunViolation::NotStarted { event }
}

/// A random step of a run, naming one of three tool calls or messages.
fn random_step(rng: &mut StdRng) -> RunStep {
    let tool = format!("tc{}", rng.random_range(0..3));
    let message = format!("m{}", rng.random_range(0..3));
    match rng.random_range(0..16) {
        0 | 1 => RunStep::Start,
        2 | 3 => RunStep::Think,
        4..=6 => RunStep::OpenToolCall(tool),
        7..=9 => RunStep::CloseToolCall(tool),
        10..=12 => RunStep::StreamMessage(message),
        13 | 14 => RunStep::CloseMessage(message),
        _ if rng.random_bool(0.5) => RunStep::End(RunOutcome::Completed),
        _ => RunStep::End(RunOutcome::Failed),
    }
}

/// Random run events of two runs (and unguarded `custom` events between them), published
/// one by one and in batches, decide exactly as [`RunState`] does: every accepted event is
/// stored and delivered; every refused one is refused with the reference's violation,
/// naming the batch's first refused event, and stores nothing, its batch with it.
///
/// `cases` sequences of up to 40 events; the seed is in the failure message.
pub async fn run_lifecycle_matches_reference<H: Harness>(harness: &H, cases: usize) -> Checked {
    let broker = harness.make().await;
    let seed: u64 = rand::random();
    let mut rng = StdRng::seed_from_u64(seed);
    for case in 0..cases {
        let user = fresh_user("run-ref");
        let rec = Recorder::new();
        subscribe(&broker, &user, &rec).await;
        let runs = [run_id("r0"), run_id("r1")];
        let mut model = [RunState::default(), RunState::default()];
        let mut stored: Vec<EventType> = Vec::new();
        let mut n = 0u64;
        let len = rng.random_range(1..=40);
        while n < len {
            let batch_len = if rng.random_bool(0.6) {
                1
            } else {
                rng.random_range(2..=4)
            };
            let mut events = Vec::new();
            let mut next = model.clone();
            let mut expected: Result<(), (usize, RunViolation)> = Ok(());
            let mut types = Vec::new();
            for i in 0..batch_len {
                n += 1;
                if rng.random_bool(0.1) {
                    events.push(custom_of(&runs[0], n));
                    types.push(EventType::Custom);
                    continue;
                }
                let r = rng.random_range(0..runs.len());
                let step = random_step(&mut rng);
                types.push(step.event_type());
                if expected.is_ok()
                    && let Err(v) = next[r].apply_step(&step)
                {
                    expected = Err((i, v));
                }
                events.push(run_event(&runs[r], step, n));
            }
            let context = || format!("seed {seed}, case {case}, events {types:?}");
            let answer = if events.len() == 1 {
                let event = events.pop().expect("one event");
                broker
                    .publish(&user, event)
                    .await
                    .map(|a| vec![a])
                    .map_err(|error| BatchError::refused(0, error))
            } else {
                broker.publish_many(&user, events).await
            };
            match (answer, expected) {
                (Ok(accepted), Ok(())) => {
                    assert!(
                        accepted.iter().all(|a| !a.duplicate),
                        "fresh events answered as duplicates ({})",
                        context()
                    );
                    model = next;
                    stored.extend(types);
                }
                (Err(e), Err((i, want))) => {
                    assert_eq!(
                        (e.refused_at, &e.error),
                        (Some(i), &BrokerError::Violation(want)),
                        "refused otherwise than the reference ({})",
                        context()
                    );
                    assert!(e.accepted.is_empty(), "a refused batch accepted events");
                }
                (got, want) => panic!(
                    "the broker answered {got:?}, the reference {want:?} ({})",
                    context()
                ),
            }
        }
        let h = history(&broker, &user, Seq::ZERO, 1_000).await;
        let kinds: Vec<EventType> = h.events.iter().map(|e| e.event_type).collect();
        assert_eq!(
            kinds, stored,
            "history holds other events (seed {seed}, case {case})"
        );
        if !stored.is_empty() {
            rec.wait_for_seqs(&user, stored.len() as u64).await;
        }
        rec.quiet().await;
        assert_eq!(
            rec.seqs(&user),
            seqs(&h.events),
            "a refused event was delivered (seed {seed}, case {case})"
        );
        unsubscribe(&broker, &user, &rec).await;
    }
    Checked::Held
}

/// The edges of the rule: at most [`MAX_OPEN_TOOL_CALLS`] open calls and
/// [`MAX_OPEN_MESSAGES`] open messages; a closed call's or message's id may open again; a
/// message completes once; a run may end with calls and messages open; runs are per user;
/// an unguarded event (of any type) changes no run, and a `custom` event is never checked.
pub async fn run_lifecycle_edges<H: Harness>(harness: &H) -> Checked {
    let broker = harness.make().await;
    let (alice, bob) = (fresh_user("run-edges"), fresh_user("run-edges"));
    let r = run_id("r1");
    // An unguarded agent_started starts nothing.
    let unguarded = Event::new(None, Some(r.clone()), AgentStarted::default());
    let unguarded = NewEvent::new(
        EventType::AgentStarted,
        None,
        Bytes::from(unguarded.body_json()),
    );
    publish(&broker, &alice, unguarded).await;
    assert_eq!(
        violation_of(&broker, &alice, run_event(&r, RunStep::Think, 1)).await,
        not_started(EventType::AgentThinking)
    );
    publish(&broker, &alice, run_event(&r, RunStep::Start, 2)).await;
    // Bob's r1 is another run.
    assert_eq!(
        violation_of(&broker, &bob, run_event(&r, open("a"), 3)).await,
        not_started(EventType::ToolExecuting)
    );
    let opens: Vec<NewEvent> = (0..MAX_OPEN_TOOL_CALLS)
        .map(|i| run_event(&r, open(&format!("call-{i}")), 4))
        .collect();
    for chunk in opens.chunks(64) {
        publish_many(&broker, &alice, chunk.to_vec()).await;
    }
    assert_eq!(
        violation_of(&broker, &alice, run_event(&r, open("one-more"), 5)).await,
        RunViolation::TooManyOpenToolCalls
    );
    assert_eq!(
        violation_of(&broker, &alice, run_event(&r, open("call-7"), 6)).await,
        RunViolation::DuplicateToolCall {
            tool_call_id: "call-7".into()
        }
    );
    publish(&broker, &alice, run_event(&r, close("call-7"), 7)).await;
    publish(&broker, &alice, run_event(&r, open("call-7"), 8)).await;
    let deltas: Vec<NewEvent> = (0..MAX_OPEN_MESSAGES)
        .map(|i| run_event(&r, stream(&format!("msg-{i}")), 8))
        .collect();
    for chunk in deltas.chunks(64) {
        publish_many(&broker, &alice, chunk.to_vec()).await;
    }
    assert_eq!(
        violation_of(&broker, &alice, run_event(&r, stream("one-more"), 8)).await,
        RunViolation::TooManyOpenMessages
    );
    // An open message streams on at the bound; completed, its id may open again.
    publish_many(
        &broker,
        &alice,
        vec![
            run_event(&r, stream("msg-3"), 8),
            run_event(&r, finish("msg-3"), 8),
            run_event(&r, stream("one-more"), 8),
        ],
    )
    .await;
    assert_eq!(
        violation_of(&broker, &alice, run_event(&r, finish("msg-3"), 8)).await,
        RunViolation::UnknownMessage {
            message_id: "msg-3".into()
        }
    );
    publish(&broker, &alice, run_event(&r, stream("msg-4"), 8)).await;
    publish(&broker, &alice, custom_of(&r, 9)).await;
    let failed = RunStep::End(RunOutcome::Failed);
    publish(&broker, &alice, run_event(&r, failed, 10)).await;
    assert_eq!(
        violation_of(&broker, &alice, run_event(&r, close("call-1"), 11)).await,
        RunViolation::AfterTerminal {
            event: EventType::ToolCompleted,
            ended_with: EventType::AgentError
        }
    );
    publish(&broker, &alice, custom_of(&r, 12)).await;
    let h = history(&broker, &alice, Seq::ZERO, 1_000).await;
    assert_eq!(
        h.last_seq,
        Seq(2 + MAX_OPEN_TOOL_CALLS as u64 + MAX_OPEN_MESSAGES as u64 + 9)
    );
    Checked::Held
}

/// Dedupe comes first: an event answered as a duplicate is not checked again (a retried
/// `agent_started` or terminal event is answered with its first acceptance), inside a
/// batch too; a reused id with another event is a conflict, whatever its run would say;
/// a conflict changes no run.
pub async fn run_dedupe_before_lifecycle<H: Harness>(harness: &H) -> Checked {
    let broker = harness.make().await;
    let user = fresh_user("run-dedupe");
    let r = run_id("r1");
    let (start_id, end_id) = (fresh_event_id("start"), fresh_event_id("end"));
    let start = guarded_event(&r, RunStep::Start, 1, Some(start_id.clone()), &owner());
    let first = publish(&broker, &user, start.clone()).await;
    let completed = RunStep::End(RunOutcome::Completed);
    let end = guarded_event(&r, completed, 2, Some(end_id.clone()), &owner());
    let ended = publish(&broker, &user, end.clone()).await;
    for (again, was) in [(start.clone(), &first), (end, &ended)] {
        let a = publish(&broker, &user, again).await;
        assert!(a.duplicate, "a retry was checked against its run");
        assert_eq!((a.seq, a.ts), (was.seq, was.ts));
    }
    // In a batch: the duplicate is answered, the fresh event after it is checked.
    let refused = broker
        .publish_many(&user, vec![start, run_event(&r, RunStep::Think, 3)])
        .await
        .expect_err("thinking after the end");
    assert_eq!(refused.refused_at, Some(1));
    assert!(matches!(
        refused.error,
        BrokerError::Violation(RunViolation::AfterTerminal { .. })
    ));
    // Another event under the start's id: a conflict, not a violation.
    let reused = guarded_event(&r, RunStep::Think, 4, Some(start_id), &owner());
    assert!(matches!(
        broker.publish(&user, reused).await,
        Err(BrokerError::Conflict { seq, .. }) if seq == first.seq
    ));
    // A conflict changes no run: another run, whose start conflicts, is still unstarted.
    let r2 = run_id("r2");
    let conflicting = guarded_event(&r2, RunStep::Start, 5, Some(end_id), &owner());
    assert!(matches!(
        broker.publish(&user, conflicting).await,
        Err(BrokerError::Conflict { .. })
    ));
    assert_eq!(
        violation_of(&broker, &user, run_event(&r2, RunStep::Think, 6)).await,
        not_started(EventType::AgentThinking)
    );
    publish(&broker, &user, run_event(&r2, RunStep::Start, 7)).await;
    let h = history(&broker, &user, Seq::ZERO, 100).await;
    assert_eq!(seqs(&h.events), vec![1, 2, 3]);
    Checked::Held
}

/// A batch's guarded events are checked in order against the state the earlier ones
/// leave: a whole run in one batch is accepted; a batch whose event `k` breaks its run is
/// refused whole (`refused_at == k`), stores nothing and changes no run; of several
/// refusals the first in batch order is answered, of whatever kind.
pub async fn run_batches_all_or_nothing<H: Harness>(harness: &H) -> Checked {
    let broker = harness.make().await;
    let user = fresh_user("run-batch");
    let (r1, r2) = (run_id("r1"), run_id("r2"));
    let whole = vec![
        run_event(&r1, RunStep::Start, 1),
        run_event(&r1, open("a"), 2),
        run_event(&r2, RunStep::Start, 3),
        run_event(&r1, close("a"), 4),
        run_event(&r1, RunStep::End(RunOutcome::Completed), 5),
    ];
    let accepted = publish_many(&broker, &user, whole).await;
    let got: Vec<u64> = accepted.iter().map(|a| a.seq.get()).collect();
    assert_eq!(got, [1, 2, 3, 4, 5]);
    let bad = vec![
        run_event(&r2, open("x"), 6),
        run_event(&r2, RunStep::Think, 7),
        run_event(&r2, close("y"), 8),
        run_event(&r1, RunStep::Think, 9),
    ];
    let e = broker
        .publish_many(&user, bad)
        .await
        .expect_err("an unknown tool call");
    assert_eq!(e.refused_at, Some(2));
    assert_eq!(
        e.error,
        BrokerError::Violation(RunViolation::UnknownToolCall {
            tool_call_id: "y".into()
        })
    );
    assert!(e.accepted.is_empty());
    // Nothing of it applied: "x" did not open.
    assert_eq!(
        violation_of(&broker, &user, run_event(&r2, close("x"), 10)).await,
        RunViolation::UnknownToolCall {
            tool_call_id: "x".into()
        }
    );
    // A violation, then a conflict: the violation, which comes first, is answered.
    let id = accepted[0].event_id.clone();
    let e = broker
        .publish_many(
            &user,
            vec![
                run_event(&r1, RunStep::Think, 11),
                guarded_event(&r2, RunStep::Think, 12, Some(id), &owner()),
            ],
        )
        .await
        .expect_err("a violation, then a conflict");
    assert_eq!(e.refused_at, Some(0));
    assert!(matches!(e.error, BrokerError::Violation(_)), "{e:?}");
    let h = history(&broker, &user, Seq::ZERO, 100).await;
    assert_eq!(h.last_seq, Seq(5), "a refused batch stored something");
    Checked::Held
}

/// Many tasks publishing `agent_started` of one run at once (each under its own id):
/// exactly one is accepted, every other is refused `AlreadyStarted`; the same for opening
/// and for closing one tool call.
pub async fn run_concurrent_starts<H: Harness>(harness: &H) -> Checked {
    const TASKS: u64 = 12;
    let broker = Arc::new(harness.make().await);
    let user = fresh_user("run-race");
    let r = run_id("contended");
    let races = [
        (RunStep::Start, RunViolation::AlreadyStarted),
        (
            open("t"),
            RunViolation::DuplicateToolCall {
                tool_call_id: "t".into(),
            },
        ),
        (
            close("t"),
            RunViolation::UnknownToolCall {
                tool_call_id: "t".into(),
            },
        ),
    ];
    for (step, lost) in races {
        let tasks: Vec<_> = (0..TASKS)
            .map(|n| {
                let (broker, user, r, step) =
                    (broker.clone(), user.clone(), r.clone(), step.clone());
                tokio::spawn(async move { broker.publish(&user, run_event(&r, step, n)).await })
            })
            .collect();
        let mut answers = Vec::new();
        for t in tasks {
            answers.push(t.await.expect("publisher task panicked"));
        }
        let won: Vec<&Accepted> = answers.iter().filter_map(|a| a.as_ref().ok()).collect();
        assert_eq!(won.len(), 1, "{step:?} accepted {} times", won.len());
        for a in &answers {
            if let Err(e) = a {
                assert_eq!(e, &BrokerError::Violation(lost.clone()), "{step:?}");
            }
        }
    }
    let h = history(&*broker, &user, Seq::ZERO, 100).await;
    assert_eq!(seqs(&h.events), vec![1, 2, 3]);
    Checked::Held
}

/// The bounds ([`RunLimits`]): a new run beyond a publisher's share or beyond the total is
/// refused; a finished run makes room (it is forgotten first, so its late event is
/// `NotStarted`, no longer `AfterTerminal`); a run in progress is never evicted by another
/// publisher's runs; a tool call or a message beyond a byte bound is refused and fits once
/// calls or messages close.
/// Refusals store nothing.
pub async fn run_bounds<H: Harness>(harness: &H) -> Checked {
    let counted = RunLimits {
        max_runs: 4,
        max_runs_per_owner: 3,
        ..RunLimits::default()
    };
    let broker = match harness.make_with_runs(counted).await {
        Ok(b) => b,
        Err(why) => return Checked::Unsupported(why),
    };
    let user = fresh_user("run-bounds");
    let (a, b) = (publisher("publisher-a"), publisher("publisher-b"));
    let start =
        |name: &str, by: &PublisherId| guarded_event(&run_id(name), RunStep::Start, 0, None, by);
    for name in ["a1", "a2", "a3"] {
        publish(&broker, &user, start(name, &a)).await;
    }
    assert_eq!(
        refused_at_limit(&broker, &user, start("a4", &a)).await,
        RunLimit::OwnerRuns
    );
    publish(&broker, &user, start("b1", &b)).await;
    assert_eq!(
        refused_at_limit(&broker, &user, start("b2", &b)).await,
        RunLimit::Runs
    );
    // a1 ends: four runs held, three in progress. b2 fits, and a1 is forgotten for it.
    let end = RunStep::End(RunOutcome::Completed);
    publish(
        &broker,
        &user,
        guarded_event(&run_id("a1"), end, 1, None, &a),
    )
    .await;
    publish(&broker, &user, start("b2", &b)).await;
    assert_eq!(
        violation_of(&broker, &user, run_event(&run_id("a1"), RunStep::Think, 2)).await,
        not_started(EventType::AgentThinking),
        "the finished run was not forgotten first"
    );
    // a2 and a3 are in progress: never evicted, whatever b does.
    assert_eq!(
        refused_at_limit(&broker, &user, start("b3", &b)).await,
        RunLimit::Runs
    );
    for name in ["a2", "a3"] {
        publish(&broker, &user, run_event(&run_id(name), RunStep::Think, 3)).await;
    }
    let h = history(&broker, &user, Seq::ZERO, 100).await;
    assert_eq!(h.last_seq, Seq(8), "a refused run stored something");

    // Bytes: a publisher's share, then the total.
    let r = run_id("bytes");
    for limit in [RunLimit::OwnerBytes, RunLimit::Bytes] {
        let user = fresh_user("run-bytes");
        let bound = run_base_bytes(&user, &r) + tool_call_bytes("call-1");
        let limits = match limit {
            RunLimit::OwnerBytes => RunLimits {
                max_bytes_per_owner: bound,
                ..RunLimits::default()
            },
            _ => RunLimits {
                max_bytes: bound,
                ..RunLimits::default()
            },
        };
        let broker = match harness.make_with_runs(limits).await {
            Ok(b) => b,
            Err(why) => return Checked::Unsupported(why),
        };
        publish(&broker, &user, run_event(&r, RunStep::Start, 0)).await;
        publish(&broker, &user, run_event(&r, open("call-1"), 1)).await;
        assert_eq!(
            refused_at_limit(&broker, &user, run_event(&r, open("call-2"), 2)).await,
            limit
        );
        publish(&broker, &user, run_event(&r, close("call-1"), 3)).await;
        publish(&broker, &user, run_event(&r, open("call-2"), 4)).await;
        // An open message costs what an open call of the same id length does; a delta
        // into a message already open takes no more room.
        assert_eq!(
            refused_at_limit(&broker, &user, run_event(&r, stream("text-1"), 5)).await,
            limit
        );
        publish(&broker, &user, run_event(&r, close("call-2"), 6)).await;
        publish(&broker, &user, run_event(&r, stream("text-1"), 7)).await;
        publish(&broker, &user, run_event(&r, stream("text-1"), 8)).await;
        assert_eq!(
            refused_at_limit(&broker, &user, run_event(&r, open("call-3"), 9)).await,
            limit
        );
        publish(&broker, &user, run_event(&r, finish("text-1"), 10)).await;
        publish(&broker, &user, run_event(&r, open("call-3"), 11)).await;
        let h = history(&broker, &user, Seq::ZERO, 100).await;
        assert_eq!(h.last_seq, Seq(9));
    }
    Checked::Held
}

/// A run is forgotten its `ttl` after its last event — then it starts over — and kept
/// while events keep coming.
pub async fn run_ttl<H: Harness>(harness: &H) -> Checked {
    let ttl = (harness.clock_slack() * 20).max(Duration::from_millis(500));
    let limits = RunLimits {
        ttl,
        ..RunLimits::default()
    };
    let broker = match harness.make_with_runs(limits).await {
        Ok(b) => b,
        Err(why) => return Checked::Unsupported(why),
    };
    let user = fresh_user("run-ttl");
    let (kept, idle) = (run_id("kept"), run_id("idle"));
    publish(&broker, &user, run_event(&kept, RunStep::Start, 0)).await;
    publish(&broker, &user, run_event(&idle, RunStep::Start, 0)).await;
    for n in 1..=4 {
        harness.advance(ttl / 2).await;
        publish(&broker, &user, run_event(&kept, RunStep::Think, n)).await;
    }
    // `idle` saw nothing for twice its ttl: forgotten, it starts over.
    assert_eq!(
        violation_of(&broker, &user, run_event(&idle, RunStep::Think, 5)).await,
        not_started(EventType::AgentThinking)
    );
    publish(&broker, &user, run_event(&idle, RunStep::Start, 6)).await;
    assert_eq!(
        violation_of(&broker, &user, run_event(&kept, RunStep::Start, 7)).await,
        RunViolation::AlreadyStarted,
        "a run with recent events was forgotten"
    );
    Checked::Held
}
