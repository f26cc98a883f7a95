//! Golden files: one hand-written JSON file per frame type in `tests/golden/`.
//!
//! Each file must decode to the value built here, and the value must encode to the file's
//! JSON. A missing, extra or changed file fails; nothing here ever writes a golden file —
//! changing the wire format means editing the file by hand, in review.

use std::collections::BTreeSet;
use std::path::PathBuf;

use agentwire_protocol::*;
use serde_json::{Value, json};

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

fn id<T: TryFrom<&'static str>>(s: &'static str) -> T
where
    T::Error: std::fmt::Debug,
{
    T::try_from(s).expect("valid id in test")
}

fn extra(v: Value) -> Extra {
    match v {
        Value::Object(m) => m,
        _ => Extra::new(),
    }
}

fn envelope(
    seq: u64,
    event_id: &'static str,
    ts: u64,
    run: Option<&'static str>,
    data: impl Into<EventData>,
) -> ServerFrame {
    ServerFrame::Event(EventEnvelope::new(
        Seq(seq),
        id(event_id),
        Timestamp(ts),
        Event::new(Some(id("t1")), run.map(id), data),
    ))
}

/// What a golden file holds.
#[derive(Debug)]
enum Golden {
    Server(ServerFrame),
    Client(ClientFrame),
    Publish(PublishBody),
    Response(PublishResponse),
}

impl Golden {
    fn encode(&self) -> Value {
        match self {
            Golden::Server(f) => serde_json::to_value(f),
            Golden::Client(f) => serde_json::to_value(f),
            Golden::Publish(b) => serde_json::to_value(b),
            Golden::Response(r) => serde_json::to_value(r),
        }
        .expect("wire types encode")
    }

    fn decodes_from(&self, bytes: &[u8]) -> Result<bool, DecodeError> {
        Ok(match self {
            Golden::Server(f) => &ServerFrame::decode(bytes)? == f,
            Golden::Client(f) => &ClientFrame::decode(bytes)? == f,
            Golden::Publish(b) => &PublishBody::decode(bytes, Limits::EVENT, 100)? == b,
            Golden::Response(r) => {
                &serde_json::from_slice::<PublishResponse>(bytes).map_err(|e| {
                    DecodeError::Invalid {
                        field: String::new(),
                        reason: e.to_string(),
                    }
                })? == r
            }
        })
    }
}

fn expected() -> Vec<(&'static str, Golden)> {
    let epoch: Epoch = id("e_0193a1f200007b3a9d2e1f0c5a6b7c8d");
    vec![
        (
            "agent_started",
            Golden::Server(envelope(
                43,
                "0193a1f2-7c4e-7b3a-9d2e-1f0c5a6b7c8d",
                1764104400123,
                Some("r1"),
                AgentStarted {
                    agent_name: Some("triage".into()),
                    extra: extra(json!({"model": "small"})),
                },
            )),
        ),
        (
            "agent_thinking",
            Golden::Server(envelope(
                44,
                "0193a1f2-7c4f-7b3a-9d2e-1f0c5a6b7c8d",
                1764104400130,
                Some("r1"),
                AgentThinking {
                    thought: "The user wants flights to Lisbon; search first.".into(),
                    step: Some(1),
                    extra: Extra::new(),
                },
            )),
        ),
        (
            "tool_executing",
            Golden::Server(envelope(
                45,
                "0193a1f2-7c50-7b3a-9d2e-1f0c5a6b7c8d",
                1764104400140,
                Some("r1"),
                ToolExecuting {
                    tool_call_id: "tc1".into(),
                    tool_name: "search".into(),
                    arguments: json!({"query": "flights to Lisbon", "max_results": 5}),
                    extra: Extra::new(),
                },
            )),
        ),
        (
            "tool_completed",
            Golden::Server(envelope(
                46,
                "0193a1f2-7c51-7b3a-9d2e-1f0c5a6b7c8d",
                1764104400152,
                Some("r1"),
                ToolCompleted {
                    tool_call_id: "tc1".into(),
                    tool_name: "search".into(),
                    result: json!({"hits": 3}),
                    is_error: false,
                    duration_ms: Some(12),
                    extra: Extra::new(),
                },
            )),
        ),
        (
            "agent_completed",
            Golden::Server(envelope(
                47,
                "0193a1f2-7c52-7b3a-9d2e-1f0c5a6b7c8d",
                1764104400463,
                Some("r1"),
                AgentCompleted {
                    result: json!("Three flights found."),
                    duration_ms: Some(340),
                    extra: Extra::new(),
                },
            )),
        ),
        (
            "agent_error",
            Golden::Server(envelope(
                48,
                "0193a1f2-7c53-7b3a-9d2e-1f0c5a6b7c8d",
                1764104400470,
                Some("r2"),
                AgentError {
                    message: "The model timed out.".into(),
                    code: Some("timeout".into()),
                    retryable: true,
                    extra: Extra::new(),
                },
            )),
        ),
        (
            "message_delta",
            Golden::Server(envelope(
                50,
                "0193a1f2-7c54-7b3a-9d2e-1f0c5a6b7c8d",
                1764104400490,
                Some("r4"),
                MessageDelta {
                    message_id: "m1".into(),
                    delta: "Three flights ".into(),
                    extra: Extra::new(),
                },
            )),
        ),
        (
            "message_completed",
            Golden::Server(envelope(
                52,
                "0193a1f2-7c56-7b3a-9d2e-1f0c5a6b7c8d",
                1764104400510,
                Some("r4"),
                MessageCompleted {
                    message_id: "m1".into(),
                    text: Some("Three flights found.".into()),
                    extra: Extra::new(),
                },
            )),
        ),
        (
            "custom",
            Golden::Server(envelope(
                49,
                "publisher-42",
                1764104400480,
                None,
                Custom {
                    name: "progress".into(),
                    value: json!({"percent": 40}),
                    extra: Extra::new(),
                },
            )),
        ),
        (
            "connection_established",
            Golden::Server(ServerFrame::ConnectionEstablished(ConnectionEstablished {
                connection_id: id("c_0193a1f27c4e7b3a9d2e1f0c5a6b7c8d"),
                user_id: id("auth0|123"),
                epoch: epoch.clone(),
                heartbeat_interval_ms: 30_000,
                last_seq: Seq(42),
                resumed: true,
            })),
        ),
        ("pong", Golden::Server(ServerFrame::Pong)),
        (
            "replay_gap",
            Golden::Server(ServerFrame::ReplayGap(ReplayGap {
                from_seq: Seq(3),
                to_seq: Seq(17),
            })),
        ),
        (
            "error",
            Golden::Server(ServerFrame::Error(ErrorFrame {
                code: ErrorCode::BadRequest,
                message: "field `seq`: invalid type: string \"x\", expected u64".into(),
            })),
        ),
        ("ping", Golden::Client(ClientFrame::Ping)),
        ("ack", Golden::Client(ClientFrame::Ack { seq: Seq(47) })),
        (
            "resume",
            Golden::Client(ClientFrame::Resume {
                last_seq: Seq(42),
                epoch,
            }),
        ),
        (
            "refresh_token",
            Golden::Client(ClientFrame::RefreshToken {
                token: "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ1MSIsImV4cCI6MTc2NDEwODAwMH0.c2lnbmF0dXJl"
                    .into(),
            }),
        ),
        (
            "publish_request",
            Golden::Publish(PublishBody::One(PublishRequest {
                user_id: id("u1"),
                event_id: Some(id("optional-publisher-id")),
                event: Event::new(
                    Some(id("t1")),
                    Some(id("r1")),
                    ToolExecuting {
                        tool_call_id: "tc1".into(),
                        tool_name: "search".into(),
                        arguments: json!({}),
                        extra: Extra::new(),
                    },
                ),
            })),
        ),
        (
            "publish_batch",
            Golden::Publish(PublishBody::Batch(vec![
                PublishRequest {
                    user_id: id("u1"),
                    event_id: None,
                    event: Event::new(
                        Some(id("t1")),
                        Some(id("r1")),
                        AgentStarted {
                            agent_name: Some("triage".into()),
                            extra: Extra::new(),
                        },
                    ),
                },
                PublishRequest {
                    user_id: id("alice@example.com"),
                    event_id: None,
                    event: Event::new(
                        Some(id("t9")),
                        Some(id("r9")),
                        AgentThinking {
                            thought: "Checking the calendar.".into(),
                            step: None,
                            extra: Extra::new(),
                        },
                    ),
                },
            ])),
        ),
        (
            "publish_response",
            Golden::Response(PublishResponse {
                results: vec![
                    PublishAccepted {
                        seq: Seq(45),
                        event_id: id("optional-publisher-id"),
                        ts: Timestamp(1764104400125),
                    },
                    PublishAccepted {
                        seq: Seq(1),
                        event_id: id("0193a1f2-7c54-7b3a-9d2e-1f0c5a6b7c8d"),
                        ts: Timestamp(1764104400125),
                    },
                ],
            }),
        ),
    ]
}

#[test]
fn every_golden_file_matches_its_frame() {
    let mut failures = Vec::new();
    for (name, golden) in expected() {
        let path = dir().join(format!("{name}.json"));
        let Ok(bytes) = std::fs::read(&path) else {
            failures.push(format!(
                "{}: golden file missing; golden files are written by hand, never generated",
                path.display()
            ));
            continue;
        };
        let file_value: Value = match serde_json::from_slice(&bytes) {
            Ok(v) => v,
            Err(e) => {
                failures.push(format!("{}: not JSON: {e}", path.display()));
                continue;
            }
        };
        let encoded = golden.encode();
        if encoded != file_value {
            failures.push(format!(
                "{}: encoding changed\n  file:    {file_value}\n  encoded: {encoded}",
                path.display()
            ));
        }
        match golden.decodes_from(&bytes) {
            Ok(true) => {}
            Ok(false) => failures.push(format!("{}: decodes to another value", path.display())),
            Err(e) => failures.push(format!("{}: does not decode: {e}", path.display())),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn every_frame_type_has_a_golden_file_and_no_file_is_extra() {
    let expected: BTreeSet<String> = expected()
        .into_iter()
        .map(|(n, _)| format!("{n}.json"))
        .collect();
    let on_disk: BTreeSet<String> = std::fs::read_dir(dir())
        .expect("golden directory exists")
        .map(|e| {
            e.expect("readable entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    assert_eq!(
        on_disk, expected,
        "golden files on disk differ from the frames under test"
    );

    // Every event type, every server and client frame type is covered.
    for ty in EventType::ALL {
        assert!(
            expected.contains(&format!("{ty}.json")),
            "no golden file for {ty}"
        );
    }
    for name in [
        "connection_established",
        "pong",
        "replay_gap",
        "error",
        "ping",
        "ack",
        "resume",
        "refresh_token",
    ] {
        assert!(
            expected.contains(&format!("{name}.json")),
            "no golden file for {name}"
        );
    }
}
