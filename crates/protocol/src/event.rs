//! Agent events: their types, typed payloads, and the envelope a client receives.
//!
//! Known payload fields are typed; any other field inside `data` is kept in `extra` and
//! written back out unchanged, so publishers can attach what they need without a protocol
//! change.

use std::fmt;
use std::str::FromStr;

use serde::ser::SerializeMap;
use serde::{Deserialize, Serialize, Serializer};
use serde_json::{Map, Value};

use crate::ids::{EventId, RunId, Seq, ThreadId, Timestamp};
use crate::run::RunStep;

/// The five events a user must see for every agent run, by their exact wire names, in the
/// order a run produces them.
pub const CRITICAL_EVENTS: [&str; 5] = [
    "agent_started",
    "agent_thinking",
    "tool_executing",
    "tool_completed",
    "agent_completed",
];

/// Extra fields of a payload, kept as they came.
pub type Extra = Map<String, Value>;

/// The type of an agent event, as written in the `type` field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventType {
    /// An agent run began.
    AgentStarted,
    /// The agent reports a step of its reasoning.
    AgentThinking,
    /// A tool call began.
    ToolExecuting,
    /// A tool call ended (successfully or not).
    ToolCompleted,
    /// The run finished with a result.
    AgentCompleted,
    /// The run failed. Like `agent_completed`, it ends the run.
    AgentError,
    /// A piece of an assistant message streamed as it is written; the first piece of a
    /// `message_id` opens the message.
    MessageDelta,
    /// A streamed message is complete; it closes the message.
    MessageCompleted,
    /// An application-defined event outside the run lifecycle.
    Custom,
}

impl EventType {
    /// Every event type, critical events first.
    pub const ALL: [EventType; 9] = [
        EventType::AgentStarted,
        EventType::AgentThinking,
        EventType::ToolExecuting,
        EventType::ToolCompleted,
        EventType::AgentCompleted,
        EventType::AgentError,
        EventType::MessageDelta,
        EventType::MessageCompleted,
        EventType::Custom,
    ];

    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::AgentStarted => "agent_started",
            EventType::AgentThinking => "agent_thinking",
            EventType::ToolExecuting => "tool_executing",
            EventType::ToolCompleted => "tool_completed",
            EventType::AgentCompleted => "agent_completed",
            EventType::AgentError => "agent_error",
            EventType::MessageDelta => "message_delta",
            EventType::MessageCompleted => "message_completed",
            EventType::Custom => "custom",
        }
    }

    /// Whether this is one of [`CRITICAL_EVENTS`].
    pub fn is_critical(self) -> bool {
        CRITICAL_EVENTS.contains(&self.as_str())
    }

    /// Whether this event belongs to a run's lifecycle (and so needs a `run_id`).
    pub fn is_run_event(self) -> bool {
        self != EventType::Custom
    }

    /// Whether this event ends its run.
    pub fn is_terminal(self) -> bool {
        matches!(self, EventType::AgentCompleted | EventType::AgentError)
    }
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A string that names no event type.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown event type `{0}`")]
pub struct UnknownEventType(pub String);

impl FromStr for EventType {
    type Err = UnknownEventType;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        EventType::ALL
            .into_iter()
            .find(|t| t.as_str() == s)
            .ok_or_else(|| UnknownEventType(s.to_owned()))
    }
}

/// `data` of `agent_started`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct AgentStarted {
    /// Which agent runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_name: Option<String>,
    /// The longest silence this run may have, in milliseconds, before the server ends it
    /// as stalled (an `agent_error` with code [`STALLED_CODE`]); overrides the server's
    /// `--run-stall-timeout` for this run. `0`: the run is never ended as stalled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stall_timeout_ms: Option<u64>,
    /// Fields beyond the typed ones.
    #[serde(flatten)]
    pub extra: Extra,
}

/// The `code` of the `agent_error` the server publishes when it ends a run that went
/// silent (see [`AgentStarted::stall_timeout_ms`]); such an error is `retryable`.
pub const STALLED_CODE: &str = "stalled";

/// `data` of `agent_thinking`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct AgentThinking {
    /// The reasoning step, as the user should read it.
    pub thought: String,
    /// Step number within the run, when the agent counts them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<u64>,
    /// Fields beyond the typed ones.
    #[serde(flatten)]
    pub extra: Extra,
}

/// `data` of `tool_executing`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct ToolExecuting {
    /// Identifies this call within its run; `tool_completed` names it again.
    pub tool_call_id: String,
    /// The tool's name.
    pub tool_name: String,
    /// The arguments the tool was called with.
    #[serde(default)]
    pub arguments: Value,
    /// Fields beyond the typed ones.
    #[serde(flatten)]
    pub extra: Extra,
}

/// `data` of `tool_completed`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct ToolCompleted {
    /// The call this completes; it must be open in its run.
    pub tool_call_id: String,
    /// The tool's name.
    pub tool_name: String,
    /// What the tool returned (or its error, when `is_error`).
    #[serde(default)]
    pub result: Value,
    /// Whether the tool failed.
    #[serde(default)]
    pub is_error: bool,
    /// How long the call took.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    /// Fields beyond the typed ones.
    #[serde(flatten)]
    pub extra: Extra,
}

/// `data` of `agent_completed`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct AgentCompleted {
    /// The run's result.
    #[serde(default)]
    pub result: Value,
    /// How long the run took.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    /// Fields beyond the typed ones.
    #[serde(flatten)]
    pub extra: Extra,
}

/// `data` of `agent_error`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct AgentError {
    /// What went wrong, for the user.
    pub message: String,
    /// A machine-readable code, when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    /// Whether running again may succeed.
    #[serde(default)]
    pub retryable: bool,
    /// Fields beyond the typed ones.
    #[serde(flatten)]
    pub extra: Extra,
}

/// `data` of `message_delta`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct MessageDelta {
    /// The message this piece belongs to, within its run; `message_completed` names it
    /// again.
    pub message_id: String,
    /// The text that follows the message's earlier pieces.
    pub delta: String,
    /// Fields beyond the typed ones.
    #[serde(flatten)]
    pub extra: Extra,
}

/// `data` of `message_completed`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct MessageCompleted {
    /// The message this completes; it must be open in its run.
    pub message_id: String,
    /// The whole text, when the publisher sends it again (a client that missed pieces
    /// can show it as is).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// Fields beyond the typed ones.
    #[serde(flatten)]
    pub extra: Extra,
}

/// `data` of `custom`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Custom {
    /// The application's name for the event.
    pub name: String,
    /// Its value.
    #[serde(default)]
    pub value: Value,
    /// Fields beyond the typed ones.
    #[serde(flatten)]
    pub extra: Extra,
}

/// An event's typed `data`; the variant is the event's `type`.
#[derive(Debug, Clone, PartialEq)]
#[allow(missing_docs)] // each variant is documented by its payload type
pub enum EventData {
    AgentStarted(AgentStarted),
    AgentThinking(AgentThinking),
    ToolExecuting(ToolExecuting),
    ToolCompleted(ToolCompleted),
    AgentCompleted(AgentCompleted),
    AgentError(AgentError),
    MessageDelta(MessageDelta),
    MessageCompleted(MessageCompleted),
    Custom(Custom),
}

impl EventData {
    /// The event type this payload belongs to.
    pub fn event_type(&self) -> EventType {
        match self {
            EventData::AgentStarted(_) => EventType::AgentStarted,
            EventData::AgentThinking(_) => EventType::AgentThinking,
            EventData::ToolExecuting(_) => EventType::ToolExecuting,
            EventData::ToolCompleted(_) => EventType::ToolCompleted,
            EventData::AgentCompleted(_) => EventType::AgentCompleted,
            EventData::AgentError(_) => EventType::AgentError,
            EventData::MessageDelta(_) => EventType::MessageDelta,
            EventData::MessageCompleted(_) => EventType::MessageCompleted,
            EventData::Custom(_) => EventType::Custom,
        }
    }

    /// Decodes `data` for an event of type `ty`.
    ///
    /// # Errors
    /// A [`crate::DecodeError::Invalid`] whose field starts with `data`.
    pub fn from_value(ty: EventType, data: Value) -> Result<Self, crate::DecodeError> {
        use crate::codec::from_value_at;
        Ok(match ty {
            EventType::AgentStarted => EventData::AgentStarted(from_value_at("data", data)?),
            EventType::AgentThinking => EventData::AgentThinking(from_value_at("data", data)?),
            EventType::ToolExecuting => EventData::ToolExecuting(from_value_at("data", data)?),
            EventType::ToolCompleted => EventData::ToolCompleted(from_value_at("data", data)?),
            EventType::AgentCompleted => EventData::AgentCompleted(from_value_at("data", data)?),
            EventType::AgentError => EventData::AgentError(from_value_at("data", data)?),
            EventType::MessageDelta => EventData::MessageDelta(from_value_at("data", data)?),
            EventType::MessageCompleted => {
                EventData::MessageCompleted(from_value_at("data", data)?)
            }
            EventType::Custom => EventData::Custom(from_value_at("data", data)?),
        })
    }
}

impl Serialize for EventData {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            EventData::AgentStarted(d) => d.serialize(s),
            EventData::AgentThinking(d) => d.serialize(s),
            EventData::ToolExecuting(d) => d.serialize(s),
            EventData::ToolCompleted(d) => d.serialize(s),
            EventData::AgentCompleted(d) => d.serialize(s),
            EventData::AgentError(d) => d.serialize(s),
            EventData::MessageDelta(d) => d.serialize(s),
            EventData::MessageCompleted(d) => d.serialize(s),
            EventData::Custom(d) => d.serialize(s),
        }
    }
}

macro_rules! from_payload {
    ($($v:ident),*) => {$(
        impl From<$v> for EventData {
            fn from(d: $v) -> Self {
                EventData::$v(d)
            }
        }
    )*};
}
from_payload!(
    AgentStarted,
    AgentThinking,
    ToolExecuting,
    ToolCompleted,
    AgentCompleted,
    AgentError,
    MessageDelta,
    MessageCompleted,
    Custom
);

/// An event as an agent emits it: before the broker has given it a place in a stream.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// The conversation thread, when the event belongs to one.
    pub thread_id: Option<ThreadId>,
    /// The run; required for every event type but `custom`.
    pub run_id: Option<RunId>,
    /// Type and payload.
    pub data: EventData,
}

impl Event {
    /// An event of a run.
    pub fn new(
        thread_id: Option<ThreadId>,
        run_id: Option<RunId>,
        data: impl Into<EventData>,
    ) -> Self {
        Event {
            thread_id,
            run_id,
            data: data.into(),
        }
    }

    /// The event's type.
    pub fn event_type(&self) -> EventType {
        self.data.event_type()
    }

    /// Checks what the types cannot: a run event names its run, and a tool call id or a
    /// message id keeps the identifier rule (1–256 bytes, no control characters).
    ///
    /// # Errors
    /// [`crate::DecodeError::Invalid`] naming `run_id`, `data.tool_call_id` or
    /// `data.message_id`.
    pub fn validate(&self) -> Result<(), crate::DecodeError> {
        let named = match &self.data {
            EventData::ToolExecuting(t) => Some(t.tool_call_id.as_str()),
            EventData::ToolCompleted(t) => Some(t.tool_call_id.as_str()),
            EventData::MessageDelta(m) => Some(m.message_id.as_str()),
            EventData::MessageCompleted(m) => Some(m.message_id.as_str()),
            _ => None,
        };
        check_event(self.event_type(), self.run_id.is_some(), named)
    }

    /// What a broker reads of the event besides its body.
    pub fn facts(&self) -> EventFacts {
        EventFacts {
            event_type: self.event_type(),
            thread_id: self.thread_id.clone(),
            run_id: self.run_id.clone(),
            step: RunStep::of(&self.data),
            stall_timeout_ms: match &self.data {
                EventData::AgentStarted(s) => s.stall_timeout_ms,
                _ => None,
            },
        }
    }

    /// The event's fields other than `type` — `thread_id`, `run_id`, `data` — as a JSON
    /// object. This is what a broker stores: it adds `type` and the stream fields in front
    /// when it builds the frame a client receives.
    ///
    /// Written straight into its buffer (it runs once per published event): the same
    /// bytes as serializing the event's fields with serde_json (see
    /// [`Event::body_json_serde`]).
    pub fn body_json(&self) -> Vec<u8> {
        use crate::json::{Object, push_value};
        let mut out = Vec::with_capacity(self.body_size_hint());
        let mut obj = Object::open(&mut out);
        if let Some(t) = &self.thread_id {
            obj.str("thread_id", t.as_str());
        }
        if let Some(r) = &self.run_id {
            obj.str("run_id", r.as_str());
        }
        let data = obj.key("data");
        let mut d = Object::open(data);
        let extra = match &self.data {
            EventData::AgentStarted(p) => {
                if let Some(name) = &p.agent_name {
                    d.str("agent_name", name);
                }
                if let Some(ms) = p.stall_timeout_ms {
                    d.u64("stall_timeout_ms", ms);
                }
                &p.extra
            }
            EventData::AgentThinking(p) => {
                d.str("thought", &p.thought);
                if let Some(step) = p.step {
                    d.u64("step", step);
                }
                &p.extra
            }
            EventData::ToolExecuting(p) => {
                d.str("tool_call_id", &p.tool_call_id);
                d.str("tool_name", &p.tool_name);
                d.value("arguments", &p.arguments);
                &p.extra
            }
            EventData::ToolCompleted(p) => {
                d.str("tool_call_id", &p.tool_call_id);
                d.str("tool_name", &p.tool_name);
                d.value("result", &p.result);
                d.bool("is_error", p.is_error);
                if let Some(ms) = p.duration_ms {
                    d.u64("duration_ms", ms);
                }
                &p.extra
            }
            EventData::AgentCompleted(p) => {
                d.value("result", &p.result);
                if let Some(ms) = p.duration_ms {
                    d.u64("duration_ms", ms);
                }
                &p.extra
            }
            EventData::AgentError(p) => {
                d.str("message", &p.message);
                if let Some(code) = &p.code {
                    d.str("code", code);
                }
                d.bool("retryable", p.retryable);
                &p.extra
            }
            EventData::MessageDelta(p) => {
                d.str("message_id", &p.message_id);
                d.str("delta", &p.delta);
                &p.extra
            }
            EventData::MessageCompleted(p) => {
                d.str("message_id", &p.message_id);
                if let Some(text) = &p.text {
                    d.str("text", text);
                }
                &p.extra
            }
            EventData::Custom(p) => {
                d.str("name", &p.name);
                push_value(d.key("value"), &p.value);
                &p.extra
            }
        };
        d.extend(extra);
        d.close();
        obj.close();
        out
    }

    /// What [`Event::body_json`] writes, through serde_json: the reference it is tested
    /// against.
    #[doc(hidden)]
    pub fn body_json_serde(&self) -> Vec<u8> {
        struct Body<'a>(&'a Event);
        impl Serialize for Body<'_> {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                let mut map = s.serialize_map(None)?;
                self.0.serialize_body(&mut map)?;
                map.end()
            }
        }
        crate::to_json(&Body(self)).into_bytes()
    }

    /// About the length of [`Event::body_json`], so its buffer is allocated once: exact
    /// for strings without escapes, a guess for other values.
    fn body_size_hint(&self) -> usize {
        use crate::json::size_hint;
        let id = |i: Option<&str>| i.map_or(0, |s| s.len() + 16);
        let strs = |ss: &[&str]| ss.iter().map(|s| s.len() + 20).sum::<usize>();
        let (typed, extra) = match &self.data {
            EventData::AgentStarted(p) => (
                strs(&[p.agent_name.as_deref().unwrap_or("")]) + 48,
                &p.extra,
            ),
            EventData::AgentThinking(p) => (strs(&[&p.thought]) + 32, &p.extra),
            EventData::ToolExecuting(p) => (
                strs(&[&p.tool_call_id, &p.tool_name]) + size_hint(&p.arguments) + 16,
                &p.extra,
            ),
            EventData::ToolCompleted(p) => (
                strs(&[&p.tool_call_id, &p.tool_name]) + size_hint(&p.result) + 64,
                &p.extra,
            ),
            EventData::AgentCompleted(p) => (size_hint(&p.result) + 48, &p.extra),
            EventData::AgentError(p) => (
                strs(&[&p.message, p.code.as_deref().unwrap_or("")]) + 24,
                &p.extra,
            ),
            EventData::MessageDelta(p) => (strs(&[&p.message_id, &p.delta]), &p.extra),
            EventData::MessageCompleted(p) => (
                strs(&[&p.message_id, p.text.as_deref().unwrap_or("")]),
                &p.extra,
            ),
            EventData::Custom(p) => (strs(&[&p.name]) + size_hint(&p.value) + 8, &p.extra),
        };
        let extra: usize = extra.iter().map(|(k, v)| k.len() + 4 + size_hint(v)).sum();
        16 + id(self.thread_id.as_ref().map(|t| t.as_str()))
            + id(self.run_id.as_ref().map(|r| r.as_str()))
            + typed
            + extra
    }

    /// Writes `thread_id`, `run_id` and `data` into a map being serialized; the caller
    /// writes `type` and whatever else belongs before them.
    pub(crate) fn serialize_body<M: SerializeMap>(&self, map: &mut M) -> Result<(), M::Error> {
        if let Some(t) = &self.thread_id {
            map.serialize_entry("thread_id", t)?;
        }
        if let Some(r) = &self.run_id {
            map.serialize_entry("run_id", r)?;
        }
        map.serialize_entry("data", &self.data)
    }

    /// Reads `type`, `thread_id`, `run_id` and `data` out of a decoded object.
    pub(crate) fn take_fields(obj: &mut Map<String, Value>) -> Result<Self, crate::DecodeError> {
        use crate::codec::{from_value_at, take_type};
        let type_name = take_type(obj)?;
        let ty = EventType::from_str(&type_name)
            .map_err(|_| crate::DecodeError::UnknownType { type_name })?;
        let thread_id = match obj.remove("thread_id") {
            None | Some(Value::Null) => None,
            Some(v) => Some(from_value_at("thread_id", v)?),
        };
        let run_id = match obj.remove("run_id") {
            None | Some(Value::Null) => None,
            Some(v) => Some(from_value_at("run_id", v)?),
        };
        let data = obj
            .remove("data")
            .unwrap_or_else(|| Value::Object(Map::new()));
        let data = EventData::from_value(ty, data)?;
        let event = Event {
            thread_id,
            run_id,
            data,
        };
        event.validate()?;
        Ok(event)
    }
}

/// The rules of [`Event::validate`], from the parts they read: the event's type, whether it
/// names its run, and the tool call id or message id its `data` names (for the types that
/// have one).
fn check_event(
    event_type: EventType,
    has_run: bool,
    named: Option<&str>,
) -> Result<(), crate::DecodeError> {
    if event_type.is_run_event() && !has_run {
        return Err(crate::DecodeError::Invalid {
            field: "run_id".into(),
            reason: format!("is required for `{event_type}` events"),
        });
    }
    // A run remembers its open tool calls and messages, so their ids are bounded like
    // every id.
    let field = match event_type {
        EventType::ToolExecuting | EventType::ToolCompleted => "data.tool_call_id",
        EventType::MessageDelta | EventType::MessageCompleted => "data.message_id",
        _ => return Ok(()),
    };
    if let Some(id) = named {
        crate::ids::validate_id(id).map_err(|e| crate::DecodeError::Invalid {
            field: field.into(),
            reason: e.to_string(),
        })?;
    }
    Ok(())
}

/// What a broker reads of an event besides its body (see [`Event::body_json`]): its type,
/// thread and run, the step it takes in its run, and the run's own stall timeout. Built
/// from a typed event ([`Event::facts`]), or read from a publish body on the way, without
/// decoding `data` ([`PublishBody::decode_events`](crate::PublishBody::decode_events)).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventFacts {
    /// The event's type.
    pub event_type: EventType,
    /// Its thread, when it belongs to one.
    pub thread_id: Option<ThreadId>,
    /// The run it names (every event type but `custom` must name one).
    pub run_id: Option<RunId>,
    /// The step it takes in its run; `None` for a `custom` event.
    pub step: Option<RunStep>,
    /// `data.stall_timeout_ms` of an `agent_started` event.
    pub stall_timeout_ms: Option<u64>,
}

impl EventFacts {
    /// [`Event::validate`]'s rules, checked on the facts.
    ///
    /// # Errors
    /// As [`Event::validate`].
    pub fn validate(&self) -> Result<(), crate::DecodeError> {
        let named = self
            .step
            .as_ref()
            .and_then(|s| s.tool_call_id().or(s.message_id()));
        check_event(self.event_type, self.run_id.is_some(), named)
    }
}

/// An accepted event as delivered to a client: the event plus its place in the user's
/// stream. On the wire its fields sit side by side:
/// `{"type","seq","event_id","ts","from_seq"?,"thread_id","run_id","data"}`.
#[derive(Debug, Clone, PartialEq)]
pub struct EventEnvelope {
    /// Position in the user's stream.
    pub seq: Seq,
    /// The event's identity.
    pub event_id: EventId,
    /// When the broker accepted it.
    pub ts: Timestamp,
    /// Set only on a merged `message_delta` ([`EventEnvelope::merge_delta`]): the frame
    /// stands for the deltas `from_seq ..= seq` of one message, its text theirs in order.
    pub from_seq: Option<Seq>,
    /// The event.
    pub event: Event,
}

impl Serialize for EventEnvelope {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(None)?;
        map.serialize_entry("type", self.event.event_type().as_str())?;
        map.serialize_entry("seq", &self.seq)?;
        map.serialize_entry("event_id", &self.event_id)?;
        map.serialize_entry("ts", &self.ts)?;
        if let Some(from) = &self.from_seq {
            map.serialize_entry("from_seq", from)?;
        }
        self.event.serialize_body(&mut map)?;
        map.end()
    }
}

impl EventEnvelope {
    /// An event delivered as itself (not merged).
    pub fn new(seq: Seq, event_id: EventId, ts: Timestamp, event: Event) -> Self {
        EventEnvelope {
            seq,
            event_id,
            ts,
            from_seq: None,
            event,
        }
    }

    /// The seqs this frame stands for: `seq` alone, or `from_seq ..= seq` when merged.
    pub fn seqs(&self) -> std::ops::RangeInclusive<Seq> {
        self.from_seq.unwrap_or(self.seq)..=self.seq
    }

    /// Merges `next`, the `message_delta` right after this one in the user's stream, into
    /// this one: when both are deltas of one message (same run, thread and `message_id`)
    /// and `next.seq` follows this frame's newest seq, this frame takes `next`'s text after
    /// its own, and `next`'s `seq`, `event_id`, `ts` and extra fields, and covers its seqs
    /// too (`from_seq`). Returns whether it merged; otherwise nothing changes.
    ///
    /// A server merges deltas only while they wait in a slow connection's queue
    /// (docs/protocol.md §6.5); no other event is ever merged.
    pub fn merge_delta(&mut self, next: &EventEnvelope) -> bool {
        let (EventData::MessageDelta(mine), EventData::MessageDelta(theirs)) =
            (&mut self.event.data, &next.event.data)
        else {
            return false;
        };
        if mine.message_id != theirs.message_id
            || self.event.run_id != next.event.run_id
            || self.event.thread_id != next.event.thread_id
            || next.from_seq.is_some()
            || next.seq != self.seq.next()
        {
            return false;
        }
        mine.delta.push_str(&theirs.delta);
        mine.extra.clone_from(&theirs.extra);
        self.from_seq = Some(self.from_seq.unwrap_or(self.seq));
        self.seq = next.seq;
        self.event_id = next.event_id.clone();
        self.ts = next.ts;
        true
    }

    pub(crate) fn take_fields(obj: &mut Map<String, Value>) -> Result<Self, crate::DecodeError> {
        use crate::codec::{from_value_at, require};
        let seq: Seq = from_value_at("seq", require(obj, "seq")?)?;
        let event_id = from_value_at("event_id", require(obj, "event_id")?)?;
        let ts = from_value_at("ts", require(obj, "ts")?)?;
        let from_seq: Option<Seq> = match obj.remove("from_seq") {
            None | Some(Value::Null) => None,
            Some(v) => Some(from_value_at("from_seq", v)?),
        };
        if from_seq.is_some_and(|from| from >= seq) {
            return Err(crate::DecodeError::Invalid {
                field: "from_seq".into(),
                reason: "must be less than `seq`".into(),
            });
        }
        let event = Event::take_fields(obj)?;
        Ok(EventEnvelope {
            seq,
            event_id,
            ts,
            from_seq,
            event,
        })
    }
}
