//! `agentwire-protocol`: wire protocol v1 of agentwire — every frame a client or publisher
//! sends or receives, the identifier newtypes, the close codes, and the run-lifecycle state
//! machine. `docs/protocol.md` is the specification; this crate is its code.
//!
//! What it is not: anything that does I/O. It knows nothing of tokio, sockets or HTTP, so
//! a client, a publisher or a test can depend on it alone.
//!
//! Key decision: input from outside is decoded through one path ([`parse_value`]) that
//! checks size, UTF-8 and nesting depth on the raw bytes before building any value, refuses
//! an object that names a key twice, and every failure is a typed [`DecodeError`] that
//! names the field — never a panic. The depth
//! check skips string contents with `memchr` (SIMD search, no I/O).
//!
//! ```
//! use agentwire_protocol::{ClientFrame, Seq};
//!
//! let frame = ClientFrame::decode(br#"{"type":"ack","seq":42}"#).unwrap();
//! assert_eq!(frame, ClientFrame::Ack { seq: Seq(42) });
//!
//! let err = ClientFrame::decode(br#"{"type":"ack","seq":"x"}"#).unwrap_err();
//! assert_eq!(err.field(), Some("seq"));
//! ```

mod agui;
mod close;
mod codec;
mod direct;
mod event;
mod frame;
mod ids;
pub mod json;
mod publish;
mod run;
pub mod sse;

pub use agui::{
    AGUI_CUSTOM_PREFIX, AGUI_MAX_OPEN_MESSAGES, AGUI_SUBPROTOCOL, AgUiBody, AgUiEvent,
    AgUiProjection, project_close, project_frame,
};
pub use close::{ClientAction, CloseCode};
pub use codec::{
    DEFAULT_MAX_EVENT_BYTES, DecodeError, Limits, MAX_CLIENT_FRAME_BYTES, MAX_CLIENT_FRAME_DEPTH,
    MAX_EVENT_DEPTH, parse_object, parse_value,
};
pub use event::{
    AgentCompleted, AgentError, AgentStarted, AgentThinking, CRITICAL_EVENTS, Custom, Event,
    EventData, EventEnvelope, EventFacts, EventType, Extra, MessageCompleted, MessageDelta,
    STALLED_CODE, ToolCompleted, ToolExecuting, UnknownEventType,
};
pub use frame::{
    ClientFrame, ConnectionEstablished, ErrorCode, ErrorFrame, ReplayGap, ServerFrame,
};
pub use ids::{
    ConnectionId, Epoch, EventId, EventIdBatch, IdError, MAX_ID_BYTES, RunId, Seq, ThreadId,
    Timestamp, UserId, validate_id,
};
pub use publish::{
    PublishAccepted, PublishBody, PublishRequest, PublishResponse, PublishedEvent, PublishedEvents,
    ResultsWriter,
};
pub use run::{
    MAX_OPEN_MESSAGES, MAX_OPEN_TOOL_CALLS, RunOutcome, RunState, RunStep, RunViolation,
};

/// The protocol version this crate implements; also the WebSocket subprotocol name's
/// suffix (`agentwire.v1`).
pub const PROTOCOL_VERSION: u32 = 1;

/// The WebSocket subprotocol the server answers with.
pub const SUBPROTOCOL: &str = "agentwire.v1";

/// Prefix of the subprotocol that carries a token from a browser:
/// `agentwire.auth.<jwt>`.
pub const AUTH_SUBPROTOCOL_PREFIX: &str = "agentwire.auth.";

/// Encodes any wire type as JSON text.
///
/// The wire types hold only strings, integers, booleans and JSON values, all of which
/// encode; a failure would be a bug in this crate, and shows as `null` rather than a panic.
pub fn to_json<T: serde::Serialize + ?Sized>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_else(|_| String::from("null"))
}
