//! Shared proptest strategies for the protocol's integration tests: valid identifiers,
//! bounded JSON values, every payload, event, frame and publish body.
//!
//! Each test binary uses part of this module; the rest would warn as dead code there.
#![allow(dead_code)]

use agentwire_protocol::{
    AgentCompleted, AgentError, AgentStarted, AgentThinking, ClientFrame, ConnectionEstablished,
    ConnectionId, Custom, Epoch, ErrorCode, ErrorFrame, Event, EventData, EventEnvelope, EventId,
    EventType, Extra, MAX_ID_BYTES, MessageCompleted, MessageDelta, PublishAccepted, PublishBody,
    PublishRequest, PublishResponse, ReplayGap, RunId, Seq, ServerFrame, ThreadId, Timestamp,
    ToolCompleted, ToolExecuting, UserId,
};
use proptest::collection::{btree_map, vec};
use proptest::option;
use proptest::prelude::*;
use serde_json::{Map, Value};

/// Every error code a server sends. `Unknown` is left out: it is what a client decodes a
/// code from a newer server into, not a code of its own.
pub(crate) const ERROR_CODES: [ErrorCode; 7] = [
    ErrorCode::BadRequest,
    ErrorCode::UnknownType,
    ErrorCode::TooLarge,
    ErrorCode::ResumeNotFirst,
    ErrorCode::InvalidToken,
    ErrorCode::RateLimited,
    ErrorCode::Internal,
];

/// The typed field names of each payload: `extra` keys must avoid them, or the typed field
/// would take the value on decode.
pub(crate) fn typed_fields(ty: EventType) -> &'static [&'static str] {
    match ty {
        EventType::AgentStarted => &["agent_name"],
        EventType::AgentThinking => &["thought", "step"],
        EventType::ToolExecuting => &["tool_call_id", "tool_name", "arguments"],
        EventType::ToolCompleted => &[
            "tool_call_id",
            "tool_name",
            "result",
            "is_error",
            "duration_ms",
        ],
        EventType::AgentCompleted => &["result", "duration_ms"],
        EventType::AgentError => &["message", "code", "retryable"],
        EventType::MessageDelta => &["message_id", "delta"],
        EventType::MessageCompleted => &["message_id", "text"],
        EventType::Custom => &["name", "value"],
    }
}

/// One character allowed in an identifier, biased towards the ones that matter: JWT
/// subject and e-mail punctuation, non-ASCII letters, a zero-width space (a format
/// character, not a control character), and otherwise any non-control `char`.
fn id_char() -> impl Strategy<Value = char> {
    prop_oneof![
        3 => prop::sample::select(vec![
            '|', '@', '.', '-', '_', ' ', '"', '\\', '/', 'é', 'ß', '用', '户', '🦀', '\u{200b}',
        ]),
        3 => prop::char::range('a', 'z'),
        2 => any::<char>().prop_filter("no control characters", |c| !c.is_control()),
    ]
}

/// A string that obeys the identifier rule: 1–[`MAX_ID_BYTES`] bytes of UTF-8 with no
/// control characters. Lengths reach the limit exactly now and then.
pub(crate) fn id_string() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => vec(id_char(), 1..=24),
        1 => vec(id_char(), 1..=MAX_ID_BYTES),
        1 => Just(vec!['x'; MAX_ID_BYTES]),
    ]
    .prop_map(|chars| {
        let mut s = String::new();
        for c in chars {
            if s.len() + c.len_utf8() > MAX_ID_BYTES {
                break;
            }
            s.push(c);
        }
        s
    })
}

macro_rules! id_strategy {
    ($name:ident, $ty:ty) => {
        /// A valid identifier of this type.
        pub(crate) fn $name() -> impl Strategy<Value = $ty> {
            id_string().prop_map(|s| <$ty>::new(&s).expect("id_string obeys the id rule"))
        }
    };
}
id_strategy!(user_id, UserId);
id_strategy!(thread_id, ThreadId);
id_strategy!(run_id, RunId);
id_strategy!(event_id, EventId);
id_strategy!(connection_id, ConnectionId);
id_strategy!(epoch, Epoch);

/// A `seq`, anywhere in its range.
pub(crate) fn seq() -> impl Strategy<Value = Seq> {
    prop_oneof![
        3 => (0u64..1_000_000).prop_map(Seq),
        1 => any::<u64>().prop_map(Seq),
        1 => Just(Seq(u64::MAX)),
    ]
}

/// A timestamp, anywhere in its range.
pub(crate) fn timestamp() -> impl Strategy<Value = Timestamp> {
    prop_oneof![
        3 => (1_600_000_000_000u64..2_000_000_000_000).prop_map(Timestamp),
        1 => any::<u64>().prop_map(Timestamp),
    ]
}

/// A JSON number that survives a trip through text exactly: any `i64` or `u64`, or a float
/// with few significant digits (n / 8), which every parser reads back to the same bits.
fn number() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        (-1_000_000i32..1_000_000).prop_map(|n| Value::from(f64::from(n) / 8.0)),
    ]
}

/// A JSON value nested at most 4 levels deep, with finite numbers only.
pub(crate) fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        number(),
        any::<String>().prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 32, 4, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..4).prop_map(Value::Array),
            btree_map(any::<String>(), inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Extra payload fields for an event of type `ty`, with keys that avoid its typed fields.
pub(crate) fn extra_for(ty: EventType) -> impl Strategy<Value = Extra> {
    let reserved = typed_fields(ty);
    btree_map(
        prop_oneof![any::<String>(), "[a-z_]{1,12}", Just("trace_id".to_owned()),]
            .prop_filter("extra keys avoid the typed fields", move |k| {
                !reserved.contains(&k.as_str())
            }),
        json_value(),
        0..4,
    )
    .prop_map(|m| m.into_iter().collect::<Map<String, Value>>())
}

/// `data` of `agent_started`.
pub(crate) fn agent_started() -> impl Strategy<Value = AgentStarted> {
    (
        option::of(any::<String>()),
        extra_for(EventType::AgentStarted),
    )
        .prop_map(|(agent_name, extra)| AgentStarted { agent_name, extra })
}

/// `data` of `agent_thinking`.
pub(crate) fn agent_thinking() -> impl Strategy<Value = AgentThinking> {
    (
        any::<String>(),
        option::of(any::<u64>()),
        extra_for(EventType::AgentThinking),
    )
        .prop_map(|(thought, step, extra)| AgentThinking {
            thought,
            step,
            extra,
        })
}

/// `data` of `tool_executing`.
pub(crate) fn tool_executing() -> impl Strategy<Value = ToolExecuting> {
    (
        id_string(),
        any::<String>(),
        json_value(),
        extra_for(EventType::ToolExecuting),
    )
        .prop_map(
            |(tool_call_id, tool_name, arguments, extra)| ToolExecuting {
                tool_call_id,
                tool_name,
                arguments,
                extra,
            },
        )
}

/// `data` of `tool_completed`.
pub(crate) fn tool_completed() -> impl Strategy<Value = ToolCompleted> {
    (
        id_string(),
        any::<String>(),
        json_value(),
        any::<bool>(),
        option::of(any::<u64>()),
        extra_for(EventType::ToolCompleted),
    )
        .prop_map(
            |(tool_call_id, tool_name, result, is_error, duration_ms, extra)| ToolCompleted {
                tool_call_id,
                tool_name,
                result,
                is_error,
                duration_ms,
                extra,
            },
        )
}

/// `data` of `agent_completed`.
pub(crate) fn agent_completed() -> impl Strategy<Value = AgentCompleted> {
    (
        json_value(),
        option::of(any::<u64>()),
        extra_for(EventType::AgentCompleted),
    )
        .prop_map(|(result, duration_ms, extra)| AgentCompleted {
            result,
            duration_ms,
            extra,
        })
}

/// `data` of `agent_error`.
pub(crate) fn agent_error() -> impl Strategy<Value = AgentError> {
    (
        any::<String>(),
        option::of(any::<String>()),
        any::<bool>(),
        extra_for(EventType::AgentError),
    )
        .prop_map(|(message, code, retryable, extra)| AgentError {
            message,
            code,
            retryable,
            extra,
        })
}

/// `data` of `message_delta`.
pub(crate) fn message_delta() -> impl Strategy<Value = MessageDelta> {
    (
        id_string(),
        any::<String>(),
        extra_for(EventType::MessageDelta),
    )
        .prop_map(|(message_id, delta, extra)| MessageDelta {
            message_id,
            delta,
            extra,
        })
}

/// `data` of `message_completed`.
pub(crate) fn message_completed() -> impl Strategy<Value = MessageCompleted> {
    (
        id_string(),
        option::of(any::<String>()),
        extra_for(EventType::MessageCompleted),
    )
        .prop_map(|(message_id, text, extra)| MessageCompleted {
            message_id,
            text,
            extra,
        })
}

/// `data` of `custom`.
pub(crate) fn custom() -> impl Strategy<Value = Custom> {
    (any::<String>(), json_value(), extra_for(EventType::Custom))
        .prop_map(|(name, value, extra)| Custom { name, value, extra })
}

/// A payload of type `ty`.
pub(crate) fn event_data_of(ty: EventType) -> BoxedStrategy<EventData> {
    match ty {
        EventType::AgentStarted => agent_started().prop_map(EventData::from).boxed(),
        EventType::AgentThinking => agent_thinking().prop_map(EventData::from).boxed(),
        EventType::ToolExecuting => tool_executing().prop_map(EventData::from).boxed(),
        EventType::ToolCompleted => tool_completed().prop_map(EventData::from).boxed(),
        EventType::AgentCompleted => agent_completed().prop_map(EventData::from).boxed(),
        EventType::AgentError => agent_error().prop_map(EventData::from).boxed(),
        EventType::MessageDelta => message_delta().prop_map(EventData::from).boxed(),
        EventType::MessageCompleted => message_completed().prop_map(EventData::from).boxed(),
        EventType::Custom => custom().prop_map(EventData::from).boxed(),
    }
}

/// A payload of any type.
pub(crate) fn event_data() -> impl Strategy<Value = EventData> {
    prop::sample::select(EventType::ALL.to_vec()).prop_flat_map(event_data_of)
}

/// A valid event of type `ty`: run events name their run, `custom` may or may not.
pub(crate) fn event_of(ty: EventType) -> impl Strategy<Value = Event> {
    let run = if ty.is_run_event() {
        run_id().prop_map(Some).boxed()
    } else {
        option::of(run_id()).boxed()
    };
    (option::of(thread_id()), run, event_data_of(ty)).prop_map(|(thread_id, run_id, data)| Event {
        thread_id,
        run_id,
        data,
    })
}

/// A valid event of any type.
pub(crate) fn event() -> impl Strategy<Value = Event> {
    prop::sample::select(EventType::ALL.to_vec()).prop_flat_map(event_of)
}

/// A delivered event of type `ty`.
pub(crate) fn envelope_of(ty: EventType) -> impl Strategy<Value = EventEnvelope> {
    (seq(), event_id(), timestamp(), event_of(ty))
        .prop_map(|(seq, event_id, ts, event)| EventEnvelope::new(seq, event_id, ts, event))
}

/// `connection_established`.
pub(crate) fn connection_established() -> impl Strategy<Value = ConnectionEstablished> {
    (
        connection_id(),
        user_id(),
        epoch(),
        any::<u64>(),
        seq(),
        any::<bool>(),
    )
        .prop_map(
            |(connection_id, user_id, epoch, heartbeat_interval_ms, last_seq, resumed)| {
                ConnectionEstablished {
                    connection_id,
                    user_id,
                    epoch,
                    heartbeat_interval_ms,
                    last_seq,
                    resumed,
                }
            },
        )
}

/// `replay_gap`.
pub(crate) fn replay_gap() -> impl Strategy<Value = ReplayGap> {
    (seq(), seq()).prop_map(|(a, b)| ReplayGap {
        from_seq: a.min(b),
        to_seq: a.max(b),
    })
}

/// An `error` frame with the given code.
pub(crate) fn error_frame_with(code: ErrorCode) -> impl Strategy<Value = ErrorFrame> {
    any::<String>().prop_map(move |message| ErrorFrame { code, message })
}

/// An `error` frame with any code a server sends.
pub(crate) fn error_frame() -> impl Strategy<Value = ErrorFrame> {
    prop::sample::select(ERROR_CODES.to_vec()).prop_flat_map(error_frame_with)
}

/// Any server → client frame.
pub(crate) fn server_frame() -> impl Strategy<Value = ServerFrame> {
    prop_oneof![
        connection_established().prop_map(ServerFrame::ConnectionEstablished),
        prop::sample::select(EventType::ALL.to_vec())
            .prop_flat_map(envelope_of)
            .prop_map(ServerFrame::Event),
        replay_gap().prop_map(ServerFrame::ReplayGap),
        Just(ServerFrame::Pong),
        error_frame().prop_map(ServerFrame::Error),
    ]
}

/// A token for `refresh_token`: any non-empty string (the server, not the codec, judges
/// it), kept well inside the client frame limit.
pub(crate) fn token() -> impl Strategy<Value = String> {
    prop_oneof![
        "[A-Za-z0-9_-]{1,400}\\.[A-Za-z0-9_-]{1,800}\\.[A-Za-z0-9_-]{1,400}",
        any::<String>().prop_filter("a token is not empty", |s| !s.is_empty()),
    ]
}

/// Any client → server frame.
pub(crate) fn client_frame() -> impl Strategy<Value = ClientFrame> {
    prop_oneof![
        Just(ClientFrame::Ping),
        seq().prop_map(|seq| ClientFrame::Ack { seq }),
        (seq(), epoch()).prop_map(|(last_seq, epoch)| ClientFrame::Resume { last_seq, epoch }),
        token().prop_map(|token| ClientFrame::RefreshToken { token }),
    ]
}

/// One event to publish.
pub(crate) fn publish_request() -> impl Strategy<Value = PublishRequest> {
    (user_id(), option::of(event_id()), event()).prop_map(|(user_id, event_id, event)| {
        PublishRequest {
            user_id,
            event_id,
            event,
        }
    })
}

/// Largest batch the strategies build; decoders under test accept this many.
pub(crate) const MAX_TEST_BATCH: usize = 8;

/// A publish body: one object, or an array of 1–[`MAX_TEST_BATCH`] objects.
pub(crate) fn publish_body() -> impl Strategy<Value = PublishBody> {
    prop_oneof![
        publish_request().prop_map(PublishBody::One),
        vec(publish_request(), 1..=MAX_TEST_BATCH).prop_map(PublishBody::Batch),
    ]
}

/// The answer to a publish: at least one result, as a publish holds at least one event.
pub(crate) fn publish_response() -> impl Strategy<Value = PublishResponse> {
    vec(
        (seq(), event_id(), timestamp()).prop_map(|(seq, event_id, ts)| PublishAccepted {
            seq,
            event_id,
            ts,
        }),
        1..=MAX_TEST_BATCH,
    )
    .prop_map(|results| PublishResponse { results })
}
