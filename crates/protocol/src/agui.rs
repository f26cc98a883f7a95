//! The AG-UI projection: agentwire's server frames as events of the AG-UI protocol
//! (`@ag-ui/core` 1.0), for agent UIs built on it. No I/O: the server runs one
//! [`AgUiProjection`] per connection that asks for `ag-ui`. docs/ag-ui.md holds the table.
//!
//! A reasoning message and a tool call's arguments open and close inside the one agentwire
//! event they come from. Streamed messages span events: the projection's only state is the
//! messages its connection opened, so that on every connection a message is opened before
//! its first content and ended before its run's end — a stream resumed inside a message
//! opens it again. Every projected event carries `timestamp` (the broker's `ts`) and
//! `metadata.agentwire` (`seq`, `eventId`, and the `threadId`/`runId` of the event), so an
//! AG-UI consumer can still dedupe by `seq` and tell the user's runs apart. Frames that are
//! not events (`connection_established`, `replay_gap`, `error`, `pong`) and the end of a
//! stream become `CUSTOM` events named `agentwire.<frame type>`.

use serde::Serialize;
use serde_json::{Map, Value, json};

use crate::{CloseCode, EventData, EventEnvelope, ServerFrame};

/// The WebSocket subprotocol that asks `/ws` for AG-UI events (the same as `?format=ag-ui`);
/// the server answers with it.
pub const AGUI_SUBPROTOCOL: &str = "agentwire.ag-ui.v1";

/// The `name` prefix of the `CUSTOM` events that carry agentwire's own frames.
pub const AGUI_CUSTOM_PREFIX: &str = "agentwire.";

/// One AG-UI event, as it is serialized: `{"type":"RUN_STARTED",…,"timestamp":…,
/// "metadata":{"agentwire":{…}}}`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AgUiEvent {
    /// The event's type and fields.
    #[serde(flatten)]
    pub body: AgUiBody,
    /// Epoch milliseconds: the broker's `ts` of the agentwire event.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<u64>,
    /// `{"agentwire": {"seq", "eventId", "threadId"?, "runId"?, …}}`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Value>,
}

/// The AG-UI event types the projection produces, with their fields (camelCase on the
/// wire, as AG-UI names them).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(
    tag = "type",
    rename_all = "SCREAMING_SNAKE_CASE",
    rename_all_fields = "camelCase"
)]
#[non_exhaustive]
#[allow(missing_docs)] // the fields are AG-UI's, documented in docs/ag-ui.md
pub enum AgUiBody {
    RunStarted {
        thread_id: String,
        run_id: String,
    },
    RunFinished {
        thread_id: String,
        run_id: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        result: Option<Value>,
    },
    RunError {
        message: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        code: Option<String>,
    },
    ReasoningStart {
        message_id: String,
    },
    ReasoningMessageStart {
        message_id: String,
        role: &'static str,
    },
    ReasoningMessageContent {
        message_id: String,
        delta: String,
    },
    ReasoningMessageEnd {
        message_id: String,
    },
    ReasoningEnd {
        message_id: String,
    },
    ToolCallStart {
        tool_call_id: String,
        tool_call_name: String,
    },
    ToolCallArgs {
        tool_call_id: String,
        delta: String,
    },
    ToolCallEnd {
        tool_call_id: String,
    },
    ToolCallResult {
        message_id: String,
        tool_call_id: String,
        content: String,
        role: &'static str,
    },
    TextMessageStart {
        message_id: String,
        role: &'static str,
    },
    TextMessageContent {
        message_id: String,
        delta: String,
    },
    TextMessageEnd {
        message_id: String,
    },
    Custom {
        name: String,
        value: Value,
    },
}

impl AgUiEvent {
    /// Encodes the event as JSON text.
    pub fn to_json(&self) -> String {
        crate::to_json(self)
    }
}

/// A `CUSTOM` event named `agentwire.<name>`, with no agentwire event behind it.
fn custom(name: &str, value: Value) -> AgUiEvent {
    AgUiEvent {
        body: AgUiBody::Custom {
            name: format!("{AGUI_CUSTOM_PREFIX}{name}"),
            value,
        },
        timestamp: None,
        metadata: None,
    }
}

/// Streamed messages one projection keeps open at most; beyond it the oldest is forgotten
/// (its next delta opens it again with `TEXT_MESSAGE_START`).
pub const AGUI_MAX_OPEN_MESSAGES: usize = 256;

/// The AG-UI projection of one connection's frames. Most of the mapping is a pure function
/// of each frame; the state is the streamed messages this connection opened
/// (`TEXT_MESSAGE_START` sent, no `TEXT_MESSAGE_END` yet), so that a message is opened
/// before its first content on this connection and closed before its run's end.
#[derive(Debug, Clone, Default)]
pub struct AgUiProjection {
    /// `(run_id, message_id)` of the open messages, oldest first.
    open: std::collections::VecDeque<(String, String)>,
    forgotten: u64,
}

impl AgUiProjection {
    /// A projection with nothing open: a new connection's.
    pub fn new() -> Self {
        Self::default()
    }

    /// The AG-UI events of one server frame, in order.
    pub fn project(&mut self, frame: &ServerFrame) -> Vec<AgUiEvent> {
        match frame {
            ServerFrame::Event(e) => self.project_event(e),
            other => {
                let mut value = serde_json::to_value(other).unwrap_or(Value::Null);
                if let Value::Object(obj) = &mut value {
                    obj.remove("type");
                }
                vec![custom(other.type_name(), value)]
            }
        }
    }

    /// Open messages forgotten at [`AGUI_MAX_OPEN_MESSAGES`] so far.
    pub fn forgotten(&self) -> u64 {
        self.forgotten
    }

    /// The AG-UI events of one agentwire event, in order (docs/ag-ui.md has the table).
    pub fn project_event(&mut self, e: &EventEnvelope) -> Vec<AgUiEvent> {
        let Projected { mut bodies, meta } = project_stateless(e);
        let run = e.event.run_id.as_ref().map(|r| r.as_str());
        // A message names itself within its run; a run event always has one (it is
        // refused without), the event id stands in otherwise.
        let run_key = || run.unwrap_or(e.event_id.as_str()).to_owned();
        match &e.event.data {
            EventData::MessageDelta(d) => {
                let id = text_message_id(&run_key(), &d.message_id);
                if self.open(run_key(), &d.message_id) {
                    bodies.push(AgUiBody::TextMessageStart {
                        message_id: id.clone(),
                        role: "assistant",
                    });
                }
                if !d.delta.is_empty() {
                    bodies.push(AgUiBody::TextMessageContent {
                        message_id: id,
                        delta: d.delta.clone(),
                    });
                }
            }
            EventData::MessageCompleted(c) => {
                let id = text_message_id(&run_key(), &c.message_id);
                // Not open here: it was opened before this connection (a resume), so it
                // is opened again before it ends.
                if !self.close(&run_key(), &c.message_id) {
                    bodies.push(AgUiBody::TextMessageStart {
                        message_id: id.clone(),
                        role: "assistant",
                    });
                }
                bodies.push(AgUiBody::TextMessageEnd { message_id: id });
            }
            _ => {}
        }
        if matches!(
            e.event.data,
            EventData::AgentCompleted(_) | EventData::AgentError(_)
        ) && let Some(run) = run
        {
            // A run's end closes what it left open (docs/protocol.md §7).
            let mut ends = self.close_run(run);
            ends.append(&mut bodies);
            bodies = ends;
        }
        let metadata = json!({ "agentwire": meta });
        bodies
            .into_iter()
            .map(|body| AgUiEvent {
                body,
                timestamp: Some(e.ts.as_millis()),
                metadata: Some(metadata.clone()),
            })
            .collect()
    }

    /// Marks `message` of `run` open; `true` when it was not (a `TEXT_MESSAGE_START` is
    /// due). At [`AGUI_MAX_OPEN_MESSAGES`] the oldest open message is forgotten.
    fn open(&mut self, run: String, message: &str) -> bool {
        if self.open.iter().any(|(r, m)| *r == run && m == message) {
            return false;
        }
        if self.open.len() >= AGUI_MAX_OPEN_MESSAGES {
            self.open.pop_front();
            self.forgotten += 1;
        }
        self.open.push_back((run, message.to_owned()));
        true
    }

    /// Marks `message` of `run` ended; `false` when it was not open.
    fn close(&mut self, run: &str, message: &str) -> bool {
        let before = self.open.len();
        self.open.retain(|(r, m)| !(r == run && m == message));
        self.open.len() != before
    }

    /// `TEXT_MESSAGE_END` of every message of `run` still open, forgetting them.
    fn close_run(&mut self, run: &str) -> Vec<AgUiBody> {
        let mut ends = Vec::new();
        self.open.retain(|(r, m)| {
            if r == run {
                ends.push(AgUiBody::TextMessageEnd {
                    message_id: text_message_id(r, m),
                });
                false
            } else {
                true
            }
        });
        ends
    }
}

/// The AG-UI `messageId` of streamed message `message` of run `run`: message ids name a
/// message within its run, and AG-UI's within the whole stream.
fn text_message_id(run: &str, message: &str) -> String {
    format!("{run}:{message}")
}

/// The AG-UI events of one server frame, with nothing open before it (a projection of its
/// own): what a connection that receives only this frame gets.
pub fn project_frame(frame: &ServerFrame) -> Vec<AgUiEvent> {
    AgUiProjection::new().project(frame)
}

/// What [`project_stateless`] makes of one event: the bodies and the `metadata.agentwire`.
struct Projected {
    bodies: Vec<AgUiBody>,
    meta: Map<String, Value>,
}

/// The AG-UI event that ends a stream closed with `code`: `CUSTOM` named
/// `agentwire.close`, whose value is `{"code", "reason"}`.
pub fn project_close(code: CloseCode) -> AgUiEvent {
    custom(
        "close",
        json!({"code": code.code(), "reason": code.reason()}),
    )
}

/// The part of the mapping that needs no state: every event type but the streamed text.
fn project_stateless(e: &EventEnvelope) -> Projected {
    let event_id = e.event_id.as_str();
    let run_id = e.event.run_id.as_ref().map(|r| r.as_str().to_owned());
    let thread_id = e.event.thread_id.as_ref().map(|t| t.as_str().to_owned());
    let mut meta = Map::new();
    meta.insert("seq".into(), json!(e.seq.get()));
    meta.insert("eventId".into(), json!(event_id));
    if let Some(t) = &thread_id {
        meta.insert("threadId".into(), json!(t));
    }
    if let Some(r) = &run_id {
        meta.insert("runId".into(), json!(r));
    }
    if let Some(from) = e.from_seq {
        // A merged delta (docs/protocol.md §6.5): it stands for `fromSeq ..= seq`.
        meta.insert("fromSeq".into(), json!(from.get()));
    }
    // AG-UI requires both ids on a run's events; agentwire's thread is optional (and a
    // run event without a run is refused at publish, but an embedder may emit one).
    let run = || run_id.clone().unwrap_or_else(|| event_id.to_owned());
    let thread = || thread_id.clone().unwrap_or_else(run);
    let bodies = match &e.event.data {
        EventData::AgentStarted(_) => vec![AgUiBody::RunStarted {
            thread_id: thread(),
            run_id: run(),
        }],
        EventData::AgentThinking(t) => {
            if let Some(step) = t.step {
                meta.insert("step".into(), json!(step));
            }
            let id = || event_id.to_owned();
            let mut bodies = vec![
                AgUiBody::ReasoningStart { message_id: id() },
                AgUiBody::ReasoningMessageStart {
                    message_id: id(),
                    role: "reasoning",
                },
            ];
            if !t.thought.is_empty() {
                bodies.push(AgUiBody::ReasoningMessageContent {
                    message_id: id(),
                    delta: t.thought.clone(),
                });
            }
            bodies.push(AgUiBody::ReasoningMessageEnd { message_id: id() });
            bodies.push(AgUiBody::ReasoningEnd { message_id: id() });
            bodies
        }
        EventData::ToolExecuting(t) => {
            let id = || t.tool_call_id.clone();
            let mut bodies = vec![AgUiBody::ToolCallStart {
                tool_call_id: id(),
                tool_call_name: t.tool_name.clone(),
            }];
            if !t.arguments.is_null() {
                bodies.push(AgUiBody::ToolCallArgs {
                    tool_call_id: id(),
                    delta: crate::to_json(&t.arguments),
                });
            }
            bodies.push(AgUiBody::ToolCallEnd { tool_call_id: id() });
            bodies
        }
        EventData::ToolCompleted(t) => {
            meta.insert("toolName".into(), json!(t.tool_name));
            meta.insert("isError".into(), json!(t.is_error));
            if let Some(ms) = t.duration_ms {
                meta.insert("durationMs".into(), json!(ms));
            }
            let content = match &t.result {
                Value::String(s) => s.clone(),
                other => crate::to_json(other),
            };
            vec![AgUiBody::ToolCallResult {
                message_id: event_id.to_owned(),
                tool_call_id: t.tool_call_id.clone(),
                content,
                role: "tool",
            }]
        }
        EventData::AgentCompleted(c) => {
            if let Some(ms) = c.duration_ms {
                meta.insert("durationMs".into(), json!(ms));
            }
            vec![AgUiBody::RunFinished {
                thread_id: thread(),
                run_id: run(),
                result: (!c.result.is_null()).then(|| c.result.clone()),
            }]
        }
        EventData::AgentError(err) => {
            meta.insert("retryable".into(), json!(err.retryable));
            vec![AgUiBody::RunError {
                message: err.message.clone(),
                code: err.code.clone(),
            }]
        }
        EventData::Custom(c) => vec![AgUiBody::Custom {
            name: c.name.clone(),
            value: c.value.clone(),
        }],
        // Streamed text needs the projection's state: `AgUiProjection::project_event`.
        EventData::MessageDelta(d) => {
            meta.insert("messageId".into(), json!(d.message_id));
            Vec::new()
        }
        EventData::MessageCompleted(c) => {
            meta.insert("messageId".into(), json!(c.message_id));
            if let Some(text) = &c.text {
                meta.insert("text".into(), json!(text));
            }
            Vec::new()
        }
    };
    Projected { bodies, meta }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(frame: &str) -> ServerFrame {
        ServerFrame::decode(frame.as_bytes()).expect("a frame")
    }

    fn types(events: &[AgUiEvent]) -> Vec<Value> {
        events
            .iter()
            .map(|e| serde_json::to_value(e).expect("json")["type"].clone())
            .collect()
    }

    #[test]
    fn a_tool_call_opens_and_closes_in_one_event() {
        let f = decode(
            r#"{"type":"tool_executing","seq":3,"event_id":"e3","ts":5,"thread_id":"t1","run_id":"r1","data":{"tool_call_id":"tc1","tool_name":"search","arguments":{"q":"x"}}}"#,
        );
        let out = project_frame(&f);
        assert_eq!(
            types(&out),
            [
                json!("TOOL_CALL_START"),
                json!("TOOL_CALL_ARGS"),
                json!("TOOL_CALL_END")
            ]
        );
        let args = serde_json::to_value(&out[1]).expect("json");
        assert_eq!(args["toolCallId"], "tc1");
        assert_eq!(args["delta"], r#"{"q":"x"}"#);
        assert_eq!(args["timestamp"], 5);
        assert_eq!(args["metadata"]["agentwire"]["seq"], 3);
        assert_eq!(args["metadata"]["agentwire"]["runId"], "r1");
    }

    #[test]
    fn run_ids_are_filled_when_the_event_lacks_them() {
        let f = decode(
            r#"{"type":"agent_started","seq":1,"event_id":"e1","ts":1,"run_id":"r1","data":{}}"#,
        );
        let v = serde_json::to_value(&project_frame(&f)[0]).expect("json");
        assert_eq!(v["type"], "RUN_STARTED");
        assert_eq!(
            (v["threadId"].clone(), v["runId"].clone()),
            (json!("r1"), json!("r1"))
        );
        let done = decode(
            r#"{"type":"agent_completed","seq":2,"event_id":"e2","ts":1,"thread_id":"t","run_id":"r1","data":{"result":null}}"#,
        );
        let v = serde_json::to_value(&project_frame(&done)[0]).expect("json");
        assert_eq!(v["type"], "RUN_FINISHED");
        assert!(v.get("result").is_none(), "AG-UI refuses a null result");
    }

    #[test]
    fn a_streamed_message_opens_at_its_first_delta_and_ends_before_its_run() {
        let mut p = AgUiProjection::new();
        let frame = |seq: u64, body: &str| {
            decode(&format!(
                r#"{{"seq":{seq},"event_id":"e{seq}","ts":1,"thread_id":"t","run_id":"r1",{body}}}"#
            ))
        };
        let delta = |seq, text: &str| {
            frame(
                seq,
                &format!(r#""type":"message_delta","data":{{"message_id":"m1","delta":"{text}"}}"#),
            )
        };
        let mut all = Vec::new();
        for f in [
            frame(1, r#""type":"agent_started","data":{}"#),
            delta(2, "Hel"),
            delta(3, "lo"),
            frame(
                4,
                r#""type":"message_completed","data":{"message_id":"m1"}"#,
            ),
            delta(5, "again"),
            frame(6, r#""type":"agent_completed","data":{"result":"x"}"#),
        ] {
            all.extend(p.project(&f));
        }
        assert_eq!(
            types(&all),
            [
                json!("RUN_STARTED"),
                json!("TEXT_MESSAGE_START"),
                json!("TEXT_MESSAGE_CONTENT"),
                json!("TEXT_MESSAGE_CONTENT"),
                json!("TEXT_MESSAGE_END"),
                // The id reused once completed: a new message; the run's end closes it.
                json!("TEXT_MESSAGE_START"),
                json!("TEXT_MESSAGE_CONTENT"),
                json!("TEXT_MESSAGE_END"),
                json!("RUN_FINISHED"),
            ]
        );
        let start = serde_json::to_value(&all[1]).expect("json");
        assert_eq!(start["messageId"], "r1:m1");
        assert_eq!(start["role"], "assistant");

        // A connection that resumes inside the message opens it again before it ends.
        let mut resumed = AgUiProjection::new();
        let end = resumed.project(&frame(
            4,
            r#""type":"message_completed","data":{"message_id":"m1","text":"Hello"}"#,
        ));
        assert_eq!(
            types(&end),
            [json!("TEXT_MESSAGE_START"), json!("TEXT_MESSAGE_END")]
        );
        let v = serde_json::to_value(&end[1]).expect("json");
        assert_eq!(v["metadata"]["agentwire"]["text"], "Hello");
    }

    #[test]
    fn a_merged_delta_is_one_content_that_names_its_seqs() {
        let merged = decode(
            r#"{"type":"message_delta","seq":9,"event_id":"e9","ts":1,"from_seq":7,"run_id":"r","data":{"message_id":"m","delta":"abc"}}"#,
        );
        let out = project_frame(&merged);
        assert_eq!(
            types(&out),
            [json!("TEXT_MESSAGE_START"), json!("TEXT_MESSAGE_CONTENT")]
        );
        let v = serde_json::to_value(&out[1]).expect("json");
        assert_eq!(v["delta"], "abc");
        assert_eq!(v["metadata"]["agentwire"]["fromSeq"], 7);
        assert_eq!(v["metadata"]["agentwire"]["seq"], 9);
    }

    #[test]
    fn open_messages_are_bounded() {
        let mut p = AgUiProjection::new();
        for i in 0..=AGUI_MAX_OPEN_MESSAGES {
            let f = decode(&format!(
                r#"{{"type":"message_delta","seq":{},"event_id":"e","ts":1,"run_id":"r","data":{{"message_id":"m{i}","delta":"x"}}}}"#,
                i + 1
            ));
            p.project(&f);
        }
        assert_eq!(p.forgotten(), 1);
        assert_eq!(p.open.len(), AGUI_MAX_OPEN_MESSAGES);
    }

    #[test]
    fn frames_that_are_not_events_are_custom_events() {
        let gap = decode(r#"{"type":"replay_gap","from_seq":3,"to_seq":17}"#);
        let v = serde_json::to_value(&project_frame(&gap)[0]).expect("json");
        assert_eq!(v["type"], "CUSTOM");
        assert_eq!(v["name"], "agentwire.replay_gap");
        assert_eq!(v["value"], json!({"from_seq": 3, "to_seq": 17}));
        let close = serde_json::to_value(project_close(CloseCode::Replaced)).expect("json");
        assert_eq!(close["name"], "agentwire.close");
        assert_eq!(close["value"]["code"], 4003);
    }
}
