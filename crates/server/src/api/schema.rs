//! Schemas of the OpenAPI document for the API's bodies. They are never built: the
//! handlers answer with the protocol types (or assemble stored frames), and these describe
//! that JSON. The wire types live in `agentwire-protocol`, which knows nothing of OpenAPI;
//! the tests in `crate::app::openapi` check that the examples given here decode as them.
#![allow(dead_code, reason = "schemas for the OpenAPI document only")]

use serde::Serialize;
use serde_json::{Map, Value};
use utoipa::ToSchema;

/// An event's type (docs/protocol.md §4.2).
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub(crate) enum EventTypeDoc {
    AgentStarted,
    AgentThinking,
    ToolExecuting,
    ToolCompleted,
    AgentCompleted,
    AgentError,
    MessageDelta,
    MessageCompleted,
    Custom,
}

/// One event to publish.
#[derive(Serialize, ToSchema)]
#[schema(
    title = "PublishEvent",
    example = json!({"user_id": "u1", "type": "tool_executing", "event_id": "optional-publisher-id",
        "thread_id": "t1", "run_id": "r1",
        "data": {"tool_call_id": "tc1", "tool_name": "search", "arguments": {}}})
)]
pub(crate) struct PublishEventDoc {
    /// Whose stream the event goes to (1–256 bytes, no control characters).
    user_id: String,
    /// The event's type.
    #[serde(rename = "type")]
    event_type: EventTypeDoc,
    /// The publisher's id for the event: publishing it again answers the first
    /// acceptance. The broker assigns a UUIDv7 when absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    event_id: Option<String>,
    /// The conversation thread.
    #[serde(skip_serializing_if = "Option::is_none")]
    thread_id: Option<String>,
    /// The run; required for every type but `custom`.
    #[serde(skip_serializing_if = "Option::is_none")]
    run_id: Option<String>,
    /// The payload of the type (docs/protocol.md §4.2); `{}` when absent. Fields
    /// beyond the typed ones are kept.
    #[schema(value_type = Object)]
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<Map<String, Value>>,
}

/// One event, or a batch of them.
#[derive(Serialize, ToSchema)]
#[serde(untagged)]
pub(crate) enum PublishBodyDoc {
    One(PublishEventDoc),
    Batch(Vec<PublishEventDoc>),
}

/// Where the broker put one event.
#[derive(Serialize, ToSchema)]
pub(crate) struct PublishResultDoc {
    /// Its position in the user's stream.
    seq: u64,
    /// Its id (the publisher's, or the one assigned).
    event_id: String,
    /// When it was first accepted, in epoch milliseconds.
    ts: u64,
    /// Where to ask whether it reached the user: `/v1/users/{user_id}/runs/{run_id}` for
    /// a run event, else `/v1/users/{user_id}/receipts` (segments percent-encoded).
    receipt: String,
}

/// One result per published event, in request order.
#[derive(Serialize, ToSchema)]
#[schema(example = json!({"results": [{"seq": 45, "event_id": "optional-publisher-id", "ts": 1764104400125_u64}]}))]
pub(crate) struct PublishResponseDoc {
    results: Vec<PublishResultDoc>,
}

/// Events after `after_seq` that history no longer holds.
#[derive(Serialize, ToSchema)]
pub(crate) struct GapDoc {
    from_seq: u64,
    to_seq: u64,
}

/// A page of a user's history.
#[derive(Serialize, ToSchema)]
pub(crate) struct HistoryPageDoc {
    user_id: String,
    /// The stream's epoch (docs/protocol.md §6).
    epoch: String,
    /// The newest seq of the stream (0 when nothing was ever published).
    last_seq: u64,
    /// The events after `after_seq` no longer held, if any.
    gap: Option<GapDoc>,
    /// The events as clients received them (`{"type","seq","event_id","ts",…}`),
    /// oldest first.
    #[schema(value_type = Vec<Object>)]
    events: Vec<Value>,
}

/// `{"status": …}` of the health and readiness checks.
#[derive(Serialize, ToSchema)]
pub(crate) struct StatusDoc {
    /// `ok`, `ready`, `unavailable` or `shutting_down`.
    status: String,
    /// Why the broker is unavailable.
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
}

/// A live connection.
#[derive(Serialize, ToSchema)]
pub(crate) struct ConnectionDoc {
    connection_id: String,
    /// The node the connection is open on.
    node: String,
    connected_for_ms: u64,
    /// The newest seq the client acknowledged.
    acked_seq: u64,
    queued_frames: u64,
    queued_bytes: u64,
}

/// A user's live connections on every node that answered.
#[derive(Serialize, ToSchema)]
pub(crate) struct ConnectionsDoc {
    user_id: String,
    /// The node that answered the request.
    node: String,
    connections: Vec<ConnectionDoc>,
    /// Live nodes that did not answer within the control channel's wait.
    unanswered_nodes: Vec<String>,
}

/// How many connections were closed, in total and by node.
#[derive(Serialize, ToSchema)]
pub(crate) struct DisconnectedDoc {
    user_id: String,
    disconnected: u64,
    /// Connections closed, by node.
    nodes: std::collections::BTreeMap<String, u64>,
    /// Live nodes that did not answer within the control channel's wait.
    unanswered_nodes: Vec<String>,
}

/// A heartbeat's answer: the run is in progress.
#[derive(Serialize, ToSchema)]
pub(crate) struct HeartbeatDoc {
    user_id: String,
    run_id: String,
    /// Always `running`.
    state: String,
}

/// How far a user's clients got on this node (on every node with `--broker redis`).
#[derive(Serialize, ToSchema)]
pub(crate) struct ReceiptDoc {
    user_id: String,
    /// The user's stream.
    epoch: String,
    /// Its newest `seq`.
    last_seq: u64,
    /// The newest `seq` written to at least one of the user's sockets on this node (any node with `--broker redis`).
    delivered_seq: u64,
    /// The newest `seq` a client of the user acknowledged (`ack` frames) on this node (any node with `--broker redis`).
    acked_seq: u64,
}

/// A run's terminal event, and whether it reached the user.
#[derive(Serialize, ToSchema)]
pub(crate) struct TerminalDoc {
    seq: u64,
    /// `agent_completed` or `agent_error`.
    #[serde(rename = "type")]
    event_type: String,
    /// `delivered_seq >= seq`.
    delivered: bool,
    /// `acked_seq >= seq`.
    acked: bool,
}

/// One run's receipt.
#[derive(Serialize, ToSchema)]
pub(crate) struct RunReceiptDoc {
    user_id: String,
    run_id: String,
    epoch: String,
    /// `running`, `completed`, `failed`, or `stalled` (ended by the server's watchdog).
    state: String,
    /// The run's first and last `seq` in history.
    first_seq: u64,
    last_seq: u64,
    /// Whether history still holds the run's `agent_started`.
    started_in_history: bool,
    /// The terminal event, once the run ended.
    terminal: Option<TerminalDoc>,
    delivered_seq: u64,
    acked_seq: u64,
}
