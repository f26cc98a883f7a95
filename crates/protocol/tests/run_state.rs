//! The run lifecycle: every valid run is accepted to the end, every kind of violation is
//! refused with its own error and leaves the state as it was.

mod support;

use std::collections::BTreeSet;

use agentwire_protocol::{
    AgentCompleted, AgentError, AgentStarted, AgentThinking, Custom, EventData, EventType,
    MAX_OPEN_MESSAGES, MAX_OPEN_TOOL_CALLS, MessageCompleted, MessageDelta, RunOutcome, RunState,
    RunStep, RunViolation, ToolCompleted, ToolExecuting,
};
use proptest::collection::vec;
use proptest::prelude::*;

fn started() -> EventData {
    AgentStarted::default().into()
}

fn thinking() -> EventData {
    AgentThinking {
        thought: "hmm".into(),
        ..Default::default()
    }
    .into()
}

fn executing(id: &str) -> EventData {
    ToolExecuting {
        tool_call_id: id.into(),
        tool_name: "search".into(),
        ..Default::default()
    }
    .into()
}

fn completed_tool(id: &str) -> EventData {
    ToolCompleted {
        tool_call_id: id.into(),
        tool_name: "search".into(),
        ..Default::default()
    }
    .into()
}

fn delta(id: &str) -> EventData {
    MessageDelta {
        message_id: id.into(),
        delta: "Hel".into(),
        ..Default::default()
    }
    .into()
}

fn message_done(id: &str) -> EventData {
    MessageCompleted {
        message_id: id.into(),
        ..Default::default()
    }
    .into()
}

fn completed() -> EventData {
    AgentCompleted::default().into()
}

fn failed() -> EventData {
    AgentError {
        message: "boom".into(),
        ..Default::default()
    }
    .into()
}

fn custom() -> EventData {
    Custom {
        name: "progress".into(),
        ..Default::default()
    }
    .into()
}

/// An event of type `ty`, naming tool call or message `id` where it names one.
fn of_type(ty: EventType, id: &str) -> EventData {
    match ty {
        EventType::AgentStarted => started(),
        EventType::AgentThinking => thinking(),
        EventType::ToolExecuting => executing(id),
        EventType::ToolCompleted => completed_tool(id),
        EventType::AgentCompleted => completed(),
        EventType::AgentError => failed(),
        EventType::MessageDelta => delta(id),
        EventType::MessageCompleted => message_done(id),
        EventType::Custom => custom(),
    }
}

fn running(open: &[&str]) -> RunState {
    running_with(open, &[])
}

fn running_with(tool_calls: &[&str], messages: &[&str]) -> RunState {
    RunState::Running {
        open_tool_calls: tool_calls.iter().map(|s| (*s).to_owned()).collect(),
        open_messages: messages.iter().map(|s| (*s).to_owned()).collect(),
    }
}

/// Applies `events` in order, panicking on the first violation.
fn run(events: &[EventData]) -> RunState {
    let mut state = RunState::default();
    for e in events {
        state
            .apply(e)
            .unwrap_or_else(|v| panic!("{e:?} refused: {v}"));
    }
    state
}

/// `event` is refused from `state` with `want`, by `transition` and by `apply`, and the
/// state stays as it was.
fn assert_refused(state: &RunState, event: &EventData, want: &RunViolation) {
    assert_eq!(state.transition(event).as_ref(), Err(want), "transition");
    let mut after = state.clone();
    assert_eq!(after.apply(event).as_ref(), Err(want), "apply");
    assert_eq!(&after, state, "a violation changed the state");
}

/// One step of a valid run, before it is given concrete tool call ids.
#[derive(Debug, Clone)]
enum Step {
    Think,
    Open,
    /// Complete the open call at this index (or think, when none is open).
    Close(prop::sample::Index),
    /// Stream into a new message, or into the open one at this index.
    Stream(Option<prop::sample::Index>),
    /// Complete the open message at this index (or think, when none is open).
    CloseMessage(prop::sample::Index),
    Custom,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        1 => Just(Step::Think),
        2 => Just(Step::Open),
        2 => any::<prop::sample::Index>().prop_map(Step::Close),
        3 => any::<Option<prop::sample::Index>>().prop_map(Step::Stream),
        1 => any::<prop::sample::Index>().prop_map(Step::CloseMessage),
        1 => Just(Step::Custom),
    ]
}

/// A valid run: `agent_started`, an interleaving of the middle events with fresh and open
/// tool call and message ids, exactly one terminal event. Returns the events and the
/// outcome.
fn valid_run() -> impl Strategy<Value = (Vec<EventData>, RunOutcome)> {
    (
        vec(step(), 0..64),
        support::id_string(),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(|(steps, prefix, fails, custom_first)| {
            let mut events = Vec::new();
            if custom_first {
                events.push(custom());
            }
            events.push(started());
            let mut open: Vec<String> = Vec::new();
            let mut messages: Vec<String> = Vec::new();
            let mut fresh = 0usize;
            for s in steps {
                match s {
                    Step::Think => events.push(thinking()),
                    Step::Custom => events.push(custom()),
                    Step::Open if open.len() < MAX_OPEN_TOOL_CALLS => {
                        fresh += 1;
                        let id = format!("{prefix}#{fresh}");
                        events.push(executing(&id));
                        open.push(id);
                    }
                    Step::Open => events.push(thinking()),
                    Step::Close(i) if !open.is_empty() => {
                        let id = open.remove(i.index(open.len()));
                        events.push(completed_tool(&id));
                    }
                    Step::Close(_) => events.push(thinking()),
                    Step::Stream(Some(i)) if !messages.is_empty() => {
                        events.push(delta(&messages[i.index(messages.len())]));
                    }
                    Step::Stream(_) if messages.len() < MAX_OPEN_MESSAGES => {
                        fresh += 1;
                        let id = format!("{prefix}#{fresh}");
                        events.push(delta(&id));
                        messages.push(id);
                    }
                    Step::Stream(_) => events.push(thinking()),
                    Step::CloseMessage(i) if !messages.is_empty() => {
                        let id = messages.remove(i.index(messages.len()));
                        events.push(message_done(&id));
                    }
                    Step::CloseMessage(_) => events.push(thinking()),
                }
            }
            if fails {
                events.push(failed());
                (events, RunOutcome::Failed)
            } else {
                events.push(completed());
                (events, RunOutcome::Completed)
            }
        })
}

fn terminal_type(outcome: RunOutcome) -> EventType {
    match outcome {
        RunOutcome::Completed => EventType::AgentCompleted,
        RunOutcome::Failed => EventType::AgentError,
    }
}

/// Any event but `custom`, with random payload.
fn lifecycle_event() -> impl Strategy<Value = EventData> {
    let types: Vec<EventType> = EventType::ALL
        .into_iter()
        .filter(|t| *t != EventType::Custom)
        .collect();
    prop::sample::select(types).prop_flat_map(support::event_data_of)
}

/// Any event of any type, naming one of a few tool call ids.
fn any_event() -> impl Strategy<Value = EventData> {
    (
        prop::sample::select(EventType::ALL.to_vec()),
        prop::sample::select(vec!["tc1", "tc2", "tc3"]),
    )
        .prop_map(|(ty, id)| of_type(ty, id))
}

proptest! {
    /// `apply` is `apply_step` of the event's step: the same answers and states along any
    /// sequence, valid or not; the step names the event's type and tool call.
    #[test]
    fn steps_decide_as_their_events(events in vec(any_event(), 0..48)) {
        let (mut by_event, mut by_step) = (RunState::default(), RunState::default());
        for e in &events {
            let answer = by_event.apply(e);
            match RunStep::of(e) {
                None => {
                    prop_assert_eq!(e.event_type(), EventType::Custom);
                    prop_assert_eq!(answer, Ok(()));
                }
                Some(step) => {
                    prop_assert_eq!(step.event_type(), e.event_type());
                    let tool_call = match e {
                        EventData::ToolExecuting(t) => Some(t.tool_call_id.as_str()),
                        EventData::ToolCompleted(t) => Some(t.tool_call_id.as_str()),
                        _ => None,
                    };
                    prop_assert_eq!(step.tool_call_id(), tool_call);
                    let message = match e {
                        EventData::MessageDelta(m) => Some(m.message_id.as_str()),
                        EventData::MessageCompleted(m) => Some(m.message_id.as_str()),
                        _ => None,
                    };
                    prop_assert_eq!(step.message_id(), message);
                    prop_assert_eq!(by_step.apply_step(&step), answer);
                }
            }
            prop_assert_eq!(&by_step, &by_event);
        }
    }

    #[test]
    fn every_valid_run_is_accepted_and_finishes((events, outcome) in valid_run()) {
        let mut state = RunState::default();
        let mut open = BTreeSet::new();
        let mut messages = BTreeSet::new();
        for e in &events {
            let before = state.clone();
            let next = state.transition(e);
            prop_assert_eq!(&state, &before, "transition changed its input");
            let next = next.map_err(|v| TestCaseError::fail(format!("{e:?} refused: {v}")))?;
            state.apply(e).map_err(|v| TestCaseError::fail(format!("{e:?} refused: {v}")))?;
            prop_assert_eq!(&state, &next, "apply and transition disagree");
            match e {
                EventData::ToolExecuting(t) => {
                    open.insert(t.tool_call_id.clone());
                }
                EventData::ToolCompleted(t) => {
                    open.remove(&t.tool_call_id);
                }
                EventData::MessageDelta(m) => {
                    messages.insert(m.message_id.clone());
                }
                EventData::MessageCompleted(m) => {
                    messages.remove(&m.message_id);
                }
                _ => {}
            }
            if let RunState::Running { open_tool_calls, open_messages } = &state {
                prop_assert_eq!(open_tool_calls, &open);
                prop_assert_eq!(open_messages, &messages);
            }
        }
        prop_assert_eq!(&state, &RunState::Finished(outcome));
        prop_assert!(state.is_finished());
    }

    #[test]
    fn any_lifecycle_event_after_the_terminal_one_is_refused(
        (events, outcome) in valid_run(),
        customs_after in 0usize..3,
        late in lifecycle_event(),
        at in any::<prop::sample::Index>(),
    ) {
        let mut tail = vec![custom(); customs_after];
        tail.insert(at.index(customs_after + 1), late.clone());
        let mut state = RunState::default();
        for e in &events {
            state.apply(e).map_err(|v| TestCaseError::fail(format!("{e:?} refused: {v}")))?;
        }
        for e in &tail {
            let result = state.apply(e);
            if e.event_type() == EventType::Custom {
                prop_assert_eq!(result, Ok(()));
            } else {
                prop_assert_eq!(
                    result,
                    Err(RunViolation::AfterTerminal {
                        event: late.event_type(),
                        ended_with: terminal_type(outcome),
                    })
                );
            }
            prop_assert_eq!(&state, &RunState::Finished(outcome));
        }
    }
}

#[test]
fn a_run_must_start_with_agent_started() {
    for ty in EventType::ALL {
        if ty == EventType::AgentStarted || ty == EventType::Custom {
            continue;
        }
        assert_refused(
            &RunState::NotStarted,
            &of_type(ty, "tc1"),
            &RunViolation::NotStarted { event: ty },
        );
    }
}

#[test]
fn a_run_starts_once() {
    assert_refused(&running(&[]), &started(), &RunViolation::AlreadyStarted);
    assert_refused(
        &running(&["tc1"]),
        &started(),
        &RunViolation::AlreadyStarted,
    );
}

#[test]
fn a_tool_call_id_is_open_once() {
    let state = run(&[started(), executing("tc1")]);
    assert_refused(
        &state,
        &executing("tc1"),
        &RunViolation::DuplicateToolCall {
            tool_call_id: "tc1".into(),
        },
    );
    // Once completed, the id may be used again.
    let state = run(&[
        started(),
        executing("tc1"),
        completed_tool("tc1"),
        executing("tc1"),
    ]);
    assert_eq!(state, running(&["tc1"]));
}

#[test]
fn only_an_open_tool_call_completes() {
    let never_opened = RunViolation::UnknownToolCall {
        tool_call_id: "tc2".into(),
    };
    assert_refused(
        &run(&[started(), executing("tc1")]),
        &completed_tool("tc2"),
        &never_opened,
    );
    let twice = RunViolation::UnknownToolCall {
        tool_call_id: "tc1".into(),
    };
    assert_refused(
        &run(&[started(), executing("tc1"), completed_tool("tc1")]),
        &completed_tool("tc1"),
        &twice,
    );
}

#[test]
fn open_tool_calls_are_bounded() {
    let mut state = run(&[started()]);
    for i in 0..MAX_OPEN_TOOL_CALLS {
        state
            .apply(&executing(&format!("tc{i}")))
            .unwrap_or_else(|v| panic!("open #{i} refused: {v}"));
    }
    assert_refused(
        &state,
        &executing("one too many"),
        &RunViolation::TooManyOpenToolCalls,
    );
    // A duplicate at the bound is still a duplicate.
    assert_refused(
        &state,
        &executing("tc0"),
        &RunViolation::DuplicateToolCall {
            tool_call_id: "tc0".into(),
        },
    );
    // Completing one makes room again.
    state.apply(&completed_tool("tc0")).expect("tc0 is open");
    state
        .apply(&executing("one too many"))
        .expect("room for one");
}

#[test]
fn a_message_opens_with_its_first_delta_and_closes_once() {
    let state = run(&[started(), delta("m1"), delta("m1"), delta("m2")]);
    assert_eq!(state, running_with(&[], &["m1", "m2"]));
    // A message and a tool call may share an id: they are kept apart.
    let state = run(&[started(), delta("x"), executing("x"), message_done("x")]);
    assert_eq!(state, running_with(&["x"], &[]));
    assert_refused(
        &run(&[started(), delta("m1"), message_done("m1")]),
        &message_done("m1"),
        &RunViolation::UnknownMessage {
            message_id: "m1".into(),
        },
    );
    assert_refused(
        &run(&[started()]),
        &message_done("m9"),
        &RunViolation::UnknownMessage {
            message_id: "m9".into(),
        },
    );
    // Once completed, the id may stream again: it opens a new message.
    let state = run(&[started(), delta("m1"), message_done("m1"), delta("m1")]);
    assert_eq!(state, running_with(&[], &["m1"]));
}

#[test]
fn open_messages_are_bounded() {
    let mut state = run(&[started()]);
    for i in 0..MAX_OPEN_MESSAGES {
        state
            .apply(&delta(&format!("m{i}")))
            .unwrap_or_else(|v| panic!("open #{i} refused: {v}"));
    }
    assert_refused(
        &state,
        &delta("one too many"),
        &RunViolation::TooManyOpenMessages,
    );
    // An open message still streams at the bound.
    state.apply(&delta("m0")).expect("m0 is open");
    state.apply(&message_done("m0")).expect("m0 is open");
    state.apply(&delta("one too many")).expect("room for one");
}

#[test]
fn a_run_may_end_with_messages_still_open() {
    let state = run(&[started(), delta("m1"), executing("tc1"), completed()]);
    assert_eq!(state, RunState::Finished(RunOutcome::Completed));
}

#[test]
fn nothing_but_custom_comes_after_the_terminal_event() {
    for (terminal, ended_with, outcome) in [
        (
            completed(),
            EventType::AgentCompleted,
            RunOutcome::Completed,
        ),
        (failed(), EventType::AgentError, RunOutcome::Failed),
    ] {
        let state = run(&[started(), executing("tc1"), terminal]);
        assert_eq!(state, RunState::Finished(outcome));
        for ty in EventType::ALL {
            if ty == EventType::Custom {
                continue;
            }
            assert_refused(
                &state,
                &of_type(ty, "tc1"),
                &RunViolation::AfterTerminal {
                    event: ty,
                    ended_with,
                },
            );
        }
    }
}

#[test]
fn a_run_may_end_with_tool_calls_still_open() {
    let state = run(&[started(), executing("tc1"), executing("tc2"), failed()]);
    assert_eq!(state, RunState::Finished(RunOutcome::Failed));
}

#[test]
fn custom_is_accepted_in_every_state_and_changes_nothing() {
    let states = [
        RunState::NotStarted,
        running(&[]),
        running(&["tc1", "tc2"]),
        RunState::Finished(RunOutcome::Completed),
        RunState::Finished(RunOutcome::Failed),
    ];
    for state in states {
        assert_eq!(state.transition(&custom()), Ok(state.clone()));
        let mut after = state.clone();
        assert_eq!(after.apply(&custom()), Ok(()));
        assert_eq!(after, state);
    }
}

#[test]
fn violations_have_their_documented_names_and_fields() {
    let cases = [
        (run(&[]), thinking(), "NotStarted", "type"),
        (run(&[started()]), started(), "AlreadyStarted", "type"),
        (
            run(&[started(), executing("a")]),
            executing("a"),
            "DuplicateToolCall",
            "data.tool_call_id",
        ),
        (
            run(&[started()]),
            completed_tool("a"),
            "UnknownToolCall",
            "data.tool_call_id",
        ),
        (
            run(&[started()]),
            message_done("a"),
            "UnknownMessage",
            "data.message_id",
        ),
        (
            run(&[started(), failed()]),
            thinking(),
            "AfterTerminal",
            "type",
        ),
    ];
    for (state, event, name, field) in cases {
        let v = state.transition(&event).expect_err("a violation");
        assert_eq!((v.name(), v.field()), (name, field), "{v}");
    }
    assert_eq!(
        RunViolation::TooManyOpenToolCalls.name(),
        "TooManyOpenToolCalls"
    );
    assert_eq!(
        RunViolation::TooManyOpenToolCalls.field(),
        "data.tool_call_id"
    );
    assert_eq!(
        RunViolation::TooManyOpenMessages.name(),
        "TooManyOpenMessages"
    );
    assert_eq!(RunViolation::TooManyOpenMessages.field(), "data.message_id");
}

#[test]
fn violations_say_what_happened() {
    let cases = [
        (
            RunViolation::NotStarted {
                event: EventType::ToolExecuting,
            },
            "`tool_executing` before `agent_started`",
        ),
        (
            RunViolation::UnknownToolCall {
                tool_call_id: "tc9".into(),
            },
            "tc9",
        ),
        (
            RunViolation::AfterTerminal {
                event: EventType::AgentThinking,
                ended_with: EventType::AgentError,
            },
            "`agent_thinking` after the run ended with `agent_error`",
        ),
    ];
    for (violation, text) in cases {
        assert!(violation.to_string().contains(text), "{violation}");
    }
}
