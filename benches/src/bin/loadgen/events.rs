//! The events the load generator publishes: real agent runs (so the publish API's run
//! lifecycle check passes), each event's `data` padded to about the requested size and
//! carrying what the receiving client checks — the scheduled send time (`sent_at_us`), the
//! user it is for (`u`, the per-user marker) and its number in that user's stream (`k`).

use agentwire_protocol::{
    AgentCompleted, AgentStarted, AgentThinking, Event, EventData, Extra, MessageCompleted,
    MessageDelta, ToolCompleted, ToolExecuting,
};
use serde_json::{Value, json};

/// One step of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Started,
    Thinking,
    ToolExecuting,
    ToolCompleted,
    /// A piece of the run's streamed answer (`message_delta` of message `m`).
    Delta,
    /// The end of the streamed answer.
    MessageCompleted,
    Completed,
}

impl Kind {
    fn type_name(self) -> &'static str {
        match self {
            Kind::Started => "agent_started",
            Kind::Thinking => "agent_thinking",
            Kind::ToolExecuting => "tool_executing",
            Kind::ToolCompleted => "tool_completed",
            Kind::Delta => "message_delta",
            Kind::MessageCompleted => "message_completed",
            Kind::Completed => "agent_completed",
        }
    }
}

/// The order of a run's events; every user's stream repeats it.
#[derive(Debug, Clone)]
pub(crate) struct RunShape(Vec<Kind>);

impl RunShape {
    /// `agent_started`, `len - 2` thoughts, `agent_completed` (at least 2 events).
    pub(crate) fn thinking(len: usize) -> Self {
        let len = len.max(2);
        let mut v = vec![Kind::Started];
        v.extend(std::iter::repeat_n(Kind::Thinking, len - 2));
        v.push(Kind::Completed);
        RunShape(v)
    }

    /// An agent run of `len` events (at least 2): `agent_started`, then thought / tool call
    /// / tool result triples (thoughts fill what is left), then `agent_completed`.
    pub(crate) fn with_tools(len: usize) -> Self {
        let len = len.max(2);
        let mut v = vec![Kind::Started];
        let middle = len - 2;
        let triples = middle / 3;
        for _ in 0..triples {
            v.extend([Kind::Thinking, Kind::ToolExecuting, Kind::ToolCompleted]);
        }
        v.extend(std::iter::repeat_n(Kind::Thinking, middle - triples * 3));
        v.push(Kind::Completed);
        RunShape(v)
    }

    /// A run that streams its answer: `agent_started`, `len - 3` `message_delta`s of one
    /// message (at least one), `message_completed`, `agent_completed`.
    pub(crate) fn streamed(len: usize) -> Self {
        let deltas = len.max(4) - 3;
        let mut v = vec![Kind::Started];
        v.extend(std::iter::repeat_n(Kind::Delta, deltas));
        v.extend([Kind::MessageCompleted, Kind::Completed]);
        RunShape(v)
    }

    /// How many of a user's first `k` events are streamed-text deltas.
    pub(crate) fn deltas_in(&self, k: u64) -> u64 {
        let count = |kinds: &[Kind]| kinds.iter().filter(|&&x| x == Kind::Delta).count() as u64;
        let len = self.0.len() as u64;
        let rest = usize::try_from(k % len).unwrap_or(0);
        k / len * count(&self.0) + count(&self.0[..rest])
    }

    /// The kind of a user's `k`-th event (1-based) and the run it belongs to.
    fn at(&self, k: u64) -> (Kind, u64, usize) {
        let i = (k - 1) % self.0.len() as u64;
        let run = (k - 1) / self.0.len() as u64;
        (self.0[i as usize], run, i as usize)
    }
}

/// How events look: who they are for and how big they are.
#[derive(Debug, Clone)]
pub(crate) struct EventMaker {
    pub(crate) prefix: String,
    pub(crate) shape: RunShape,
    pad: String,
}

/// The id of user `u` under `prefix`.
pub(crate) fn user_id(prefix: &str, u: u32) -> String {
    format!("{prefix}u{u}")
}

impl EventMaker {
    /// `data_bytes`: the approximate size of each event's `data` object in JSON.
    pub(crate) fn new(prefix: String, shape: RunShape, data_bytes: usize) -> Self {
        // The fixed part of `data` (markers, step, names) is about 90 bytes.
        let pad = "x".repeat(data_bytes.saturating_sub(90).max(1));
        EventMaker { prefix, shape, pad }
    }

    /// Appends the publish-API JSON of user `u`'s `k`-th event to `out`: byte for byte what
    /// `write!` writes (the tests compare the two), without `format!`'s machinery, since
    /// the publisher builds every event this way.
    pub(crate) fn write_json(&self, out: &mut Vec<u8>, u: u32, k: u64, sent_at_us: u64) {
        let (kind, run, step) = self.shape.at(k);
        let mut num = itoa::Buffer::new();
        let pad = self.pad.as_bytes();
        out.reserve(pad.len() + 256);
        out.extend_from_slice(br#"{"user_id":""#);
        out.extend_from_slice(self.prefix.as_bytes());
        out.push(b'u');
        out.extend_from_slice(num.format(u).as_bytes());
        out.extend_from_slice(br#"","type":""#);
        out.extend_from_slice(kind.type_name().as_bytes());
        out.extend_from_slice(br#"","thread_id":"t"#);
        out.extend_from_slice(num.format(u).as_bytes());
        out.extend_from_slice(br#"","run_id":"r"#);
        out.extend_from_slice(num.format(run).as_bytes());
        out.extend_from_slice(br#"","data":{"#);
        let mut padded = |before: &[u8], after: &[u8]| {
            out.extend_from_slice(before);
            out.extend_from_slice(pad);
            out.extend_from_slice(after);
        };
        match kind {
            Kind::Started => padded(br#""agent_name":"loadgen","pad":""#, b"\""),
            Kind::Thinking => {
                padded(br#""thought":""#, br#"","step":"#);
                out.extend_from_slice(num.format(step).as_bytes());
            }
            Kind::ToolExecuting => {
                out.extend_from_slice(br#""tool_call_id":"tc"#);
                out.extend_from_slice(num.format(step).as_bytes());
                out.extend_from_slice(br#"","tool_name":"search","arguments":{"q":""#);
                out.extend_from_slice(pad);
                out.extend_from_slice(br#""}"#);
            }
            Kind::ToolCompleted => {
                out.extend_from_slice(br#""tool_call_id":"tc"#);
                out.extend_from_slice(num.format(step - 1).as_bytes());
                out.extend_from_slice(br#"","tool_name":"search","result":""#);
                out.extend_from_slice(pad);
                out.extend_from_slice(br#"","is_error":false,"duration_ms":3"#);
            }
            Kind::Delta => padded(br#""message_id":"m","delta":""#, b"\""),
            Kind::MessageCompleted => out.extend_from_slice(br#""message_id":"m""#),
            Kind::Completed => padded(br#""result":""#, br#"","duration_ms":40"#),
        }
        out.extend_from_slice(br#","sent_at_us":"#);
        out.extend_from_slice(num.format(sent_at_us).as_bytes());
        out.extend_from_slice(br#","u":"#);
        out.extend_from_slice(num.format(u).as_bytes());
        out.extend_from_slice(br#","k":"#);
        out.extend_from_slice(num.format(k).as_bytes());
        out.extend_from_slice(b"}}");
    }

    /// User `u`'s `k`-th event as the manager takes it (the in-process mode).
    pub(crate) fn event(&self, u: u32, k: u64, sent_at_us: u64) -> Event {
        let (kind, run, step) = self.shape.at(k);
        let mut extra = Extra::new();
        extra.insert("sent_at_us".into(), json!(sent_at_us));
        extra.insert("u".into(), json!(u));
        extra.insert("k".into(), json!(k));
        let pad = self.pad.clone();
        let data: EventData = match kind {
            Kind::Started => {
                extra.insert("pad".into(), Value::String(pad));
                AgentStarted {
                    agent_name: Some("loadgen".into()),
                    stall_timeout_ms: None,
                    extra,
                }
                .into()
            }
            Kind::Thinking => AgentThinking {
                thought: pad,
                step: Some(step as u64),
                extra,
            }
            .into(),
            Kind::ToolExecuting => ToolExecuting {
                tool_call_id: format!("tc{step}"),
                tool_name: "search".into(),
                arguments: json!({ "q": pad }),
                extra,
            }
            .into(),
            Kind::ToolCompleted => ToolCompleted {
                tool_call_id: format!("tc{}", step - 1),
                tool_name: "search".into(),
                result: Value::String(pad),
                is_error: false,
                duration_ms: Some(3),
                extra,
            }
            .into(),
            Kind::Delta => MessageDelta {
                message_id: "m".into(),
                delta: pad,
                extra,
            }
            .into(),
            Kind::MessageCompleted => MessageCompleted {
                message_id: "m".into(),
                text: None,
                extra,
            }
            .into(),
            Kind::Completed => AgentCompleted {
                result: Value::String(pad),
                duration_ms: Some(40),
                extra,
            }
            .into(),
        };
        Event::new(
            format!("t{u}").parse().ok(),
            format!("r{run}").parse().ok(),
            data,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use agentwire_protocol::{Limits, PublishBody, RunState};
    use std::fmt::Write as _;

    /// The event's JSON written with `write!`: what [`EventMaker::write_json`] must match.
    pub(super) fn write_json_fmt(
        m: &EventMaker,
        out: &mut Vec<u8>,
        u: u32,
        k: u64,
        sent_at_us: u64,
    ) {
        let (kind, run, step) = m.shape.at(k);
        let mut s = String::with_capacity(m.pad.len() + 256);
        let _ = write!(
            s,
            r#"{{"user_id":"{}u{u}","type":"{}","thread_id":"t{u}","run_id":"r{run}","data":{{"#,
            m.prefix,
            kind.type_name()
        );
        let pad = &m.pad;
        let _ = match kind {
            Kind::Started => write!(s, r#""agent_name":"loadgen","pad":"{pad}""#),
            Kind::Thinking => write!(s, r#""thought":"{pad}","step":{step}"#),
            Kind::ToolExecuting => write!(
                s,
                r#""tool_call_id":"tc{step}","tool_name":"search","arguments":{{"q":"{pad}"}}"#
            ),
            Kind::ToolCompleted => write!(
                s,
                r#""tool_call_id":"tc{}","tool_name":"search","result":"{pad}","is_error":false,"duration_ms":3"#,
                step - 1
            ),
            Kind::Delta => write!(s, r#""message_id":"m","delta":"{pad}""#),
            Kind::MessageCompleted => write!(s, r#""message_id":"m""#),
            Kind::Completed => write!(s, r#""result":"{pad}","duration_ms":40"#),
        };
        let _ = write!(s, r#","sent_at_us":{sent_at_us},"u":{u},"k":{k}}}}}"#);
        out.extend_from_slice(s.as_bytes());
    }

    #[test]
    fn write_json_writes_what_write_formats() {
        for (shape, bytes) in [
            (RunShape::with_tools(20), 200),
            (RunShape::streamed(12), 1),
            (RunShape::thinking(10), 5_000),
        ] {
            let maker = EventMaker::new("lg-7f-".into(), shape, bytes);
            for (u, k, sent) in [
                (0, 1, 0),
                (7, 2, 1_700_000_000_123_456),
                (u32::MAX, 3, u64::MAX),
                (12_345, 40, 9),
                (3, 1_000_001, 10),
            ] {
                for k in k..k + 22 {
                    let (mut a, mut b) = (b"[".to_vec(), b"[".to_vec());
                    maker.write_json(&mut a, u, k, sent);
                    write_json_fmt(&maker, &mut b, u, k, sent);
                    assert_eq!(
                        String::from_utf8_lossy(&a),
                        String::from_utf8_lossy(&b),
                        "u {u} k {k}"
                    );
                }
            }
        }
    }

    #[test]
    fn published_json_decodes_and_keeps_the_run_lifecycle() {
        let maker = EventMaker::new("p-".into(), RunShape::with_tools(20), 200);
        let mut body = b"[".to_vec();
        for k in 1..=40 {
            if k > 1 {
                body.push(b',');
            }
            maker.write_json(&mut body, 7, k, 123);
        }
        body.push(b']');
        let decoded = PublishBody::decode(&body, Limits::EVENT, 100).expect("decodes");
        let requests = decoded.into_requests();
        assert_eq!(requests.len(), 40);
        let mut state = RunState::default();
        for (i, r) in requests.iter().enumerate() {
            if i % 20 == 0 {
                state = RunState::default();
            }
            state.apply(&r.event.data).expect("lifecycle holds");
            assert_eq!(r.user_id.as_str(), "p-u7");
        }
        let data = serde_json::to_vec(&requests[1].event.data).expect("json");
        assert!((150..260).contains(&data.len()), "{}", data.len());
    }

    #[test]
    fn streamed_runs_keep_the_run_lifecycle() {
        let maker = EventMaker::new("p-".into(), RunShape::streamed(12), 40);
        let mut state = RunState::default();
        for k in 1..=24 {
            if (k - 1) % 12 == 0 {
                state = RunState::default();
            }
            let e = maker.event(1, k, 5);
            state.apply(&e.data).expect("lifecycle holds");
            let mut body = Vec::new();
            maker.write_json(&mut body, 1, k, 5);
            PublishBody::decode(&body, Limits::EVENT, 1).expect("decodes");
        }
        assert!(state.is_finished());
    }

    #[test]
    fn deltas_are_counted_across_runs() {
        // agent_started, 3 deltas, message_completed, agent_completed.
        let shape = RunShape::streamed(6);
        let counts: Vec<u64> = (0..=8).map(|k| shape.deltas_in(k)).collect();
        assert_eq!(counts, [0, 0, 1, 2, 3, 3, 3, 3, 4]);
        assert_eq!(RunShape::thinking(10).deltas_in(25), 0);
    }

    #[test]
    fn in_process_events_carry_the_markers() {
        let maker = EventMaker::new("p-".into(), RunShape::thinking(10), 200);
        let e = maker.event(3, 12, 99);
        e.validate().expect("valid");
        let body = String::from_utf8(e.body_json()).expect("utf8");
        assert!(
            body.contains(r#""u":3"#) && body.contains(r#""k":12"#),
            "{body}"
        );
        assert!(body.contains(r#""sent_at_us":99"#), "{body}");
    }
}
