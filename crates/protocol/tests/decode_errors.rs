//! Bad input gets the right typed error naming the right field: one table row per kind of
//! mistake a client or a publisher makes.

mod support;

use agentwire_protocol::{
    ClientFrame, DecodeError, EventData, Limits, PublishBody, ServerFrame, ToolExecuting,
};
use proptest::prelude::*;
use serde_json::{Value, json};

/// A valid publish item, to surround the broken one in a batch; `$OK` in a row.
const OK_ITEM: &str = r#"{"user_id":"u1","type":"custom","data":{"name":"ping"}}"#;

/// Client frames, each with one mistake, and the error it must get: the variant of
/// [`DecodeError`], then the field it names, if any.
const CLIENT_ROWS: &[(&str, &str)] = &[
    (r#"{"type":"subscribe","channel":"x"}"#, "UnknownType type"),
    (r#"{"type":"pong"}"#, "UnknownType type"), // a server frame's type
    (r#"{"seq":1}"#, "MissingType type"),
    (r#"{"type":7}"#, "MissingType type"),
    (r#"{"type":"ack","seq":1,"extra":true}"#, "Invalid extra"),
    (r#"{"type":"ping","x":1}"#, "Invalid x"),
    (r#"{"type":"ack","seq":"42"}"#, "Invalid seq"),
    (r#"{"type":"ack","seq":-1}"#, "Invalid seq"),
    (r#"{"type":"ack","seq":1.5}"#, "Invalid seq"),
    (r#"{"type":"ack"}"#, "Invalid seq"),
    (r#"{"type":"refresh_token","token":""}"#, "Invalid token"),
    (r#"{"type":"refresh_token","token":5}"#, "Invalid token"),
    (
        r#"{"type":"resume","last_seq":1,"epoch":""}"#,
        "Invalid epoch",
    ),
    (
        r#"{"type":"resume","last_seq":1,"epoch":"e\u0000"}"#,
        "Invalid epoch",
    ),
    (r#"{"type":"resume","last_seq":1}"#, "Invalid epoch"),
    (r#"{"type":"resume","epoch":"e1"}"#, "Invalid last_seq"),
    (r#"[{"type":"ping"}]"#, "WrongShape"),
    (r#""ping""#, "WrongShape"),
    ("null", "WrongShape"),
    (r#"{"type":"#, "Malformed"),
    ("", "Malformed"),
    // A key twice in one object is refused, whichever value would have won (issue 14).
    (r#"{"type":"ack","seq":1,"seq":2}"#, "Invalid seq"),
    (r#"{"type":"ping","type":"ping"}"#, "Invalid type"),
];

/// Publish bodies, each with one mistake, as [`CLIENT_ROWS`]. `$OK` stands for a valid
/// item, `$LONG` for a 257-byte id.
const PUBLISH_ROWS: &[(&str, &str)] = &[
    (
        r#"{"type":"custom","data":{"name":"x"}}"#,
        "Invalid user_id",
    ),
    (
        r#"{"user_id":"u\u0007","type":"custom","data":{"name":"x"}}"#,
        "Invalid user_id",
    ),
    (
        "{\"user_id\":\"u\u{7f}\",\"type\":\"custom\",\"data\":{\"name\":\"x\"}}",
        "Invalid user_id",
    ),
    (
        r#"{"user_id":"$LONG","type":"custom","data":{"name":"x"}}"#,
        "Invalid user_id",
    ),
    (
        r#"{"user_id":1,"type":"custom","data":{"name":"x"}}"#,
        "Invalid user_id",
    ),
    (
        r#"{"user_id":"u1","data":{"name":"x"}}"#,
        "MissingType type",
    ),
    (
        r#"{"user_id":"u1","type":"agent_paused","run_id":"r1"}"#,
        "UnknownType type",
    ),
    (r#"{"user_id":"u1","type":"ping"}"#, "UnknownType type"),
    (
        r#"{"user_id":"u1","type":"tool_executing","run_id":"r1","data":{"tool_name":"search"}}"#,
        "Invalid data.tool_call_id",
    ),
    (
        r#"{"user_id":"u1","type":"tool_completed","run_id":"r1","data":{"tool_call_id":"tc1","tool_name":"s","is_error":"no"}}"#,
        "Invalid data.is_error",
    ),
    (
        r#"{"user_id":"u1","type":"agent_thinking","run_id":"r1","data":{"thought":"x","step":"one"}}"#,
        "Invalid data.step",
    ),
    (
        r#"{"user_id":"u1","type":"agent_error","run_id":"r1","data":{}}"#,
        "Invalid data.message",
    ),
    (
        r#"{"user_id":"u1","type":"custom","data":{"value":1}}"#,
        "Invalid data.name",
    ),
    (
        r#"{"user_id":"u1","type":"agent_started","run_id":"r1","data":[]}"#,
        "Invalid data",
    ),
    // A run event without its run.
    (
        r#"{"user_id":"u1","type":"agent_started","data":{}}"#,
        "Invalid run_id",
    ),
    (
        r#"{"user_id":"u1","type":"agent_completed","run_id":null}"#,
        "Invalid run_id",
    ),
    (
        r#"{"user_id":"u1","type":"agent_started","run_id":""}"#,
        "Invalid run_id",
    ),
    (
        r#"{"user_id":"u1","type":"custom","thread_id":"","data":{"name":"x"}}"#,
        "Invalid thread_id",
    ),
    (
        r#"{"user_id":"u1","type":"custom","event_id":"","data":{"name":"x"}}"#,
        "Invalid event_id",
    ),
    (
        r#"{"user_id":"u1","type":"custom","data":{"name":"x"},"seq":7}"#,
        "Invalid seq",
    ),
    // Batches name the broken item.
    (
        r#"[$OK,{"type":"custom","data":{"name":"x"}}]"#,
        "Invalid [1].user_id",
    ),
    (
        r#"[$OK,$OK,{"user_id":"u1","type":"tool_executing","run_id":"r1","data":{"tool_name":"s"}}]"#,
        "Invalid [2].data.tool_call_id",
    ),
    (r#"[{"user_id":"u1"},$OK]"#, "Invalid [0].type"),
    (
        r#"[$OK,{"user_id":"u1","type":"nope"}]"#,
        "Invalid [1].type",
    ),
    (r#"[$OK,3]"#, "Invalid [1]"),
    (r#"[$OK,$OK,$OK,$OK]"#, "TooLarge"), // more than MAX_BATCH
    ("[]", "WrongShape"),
    ("42", "WrongShape"),
    (r#""event""#, "WrongShape"),
    (r#"{"user_id":"u1","#, "Malformed"),
    // A key twice in one object: `serde_json` alone would keep the last `user_id` and
    // publish to the victim (issue 14).
    (
        r#"{"user_id":"alice","user_id":"victim","type":"custom","data":{"name":"x"}}"#,
        "Invalid user_id",
    ),
    (
        r#"[$OK,{"user_id":"u1","type":"custom","data":{"name":"x","name":"y"}}]"#,
        "Invalid [1].data.name",
    ),
];

/// Batch limit for the publish rows.
const MAX_BATCH: usize = 3;

/// The kind of a [`DecodeError`], by variant name.
fn kind(err: &DecodeError) -> &'static str {
    match err {
        DecodeError::TooLarge { .. } => "TooLarge",
        DecodeError::NotUtf8 { .. } => "NotUtf8",
        DecodeError::TooDeep { .. } => "TooDeep",
        DecodeError::Malformed { .. } => "Malformed",
        DecodeError::WrongShape { .. } => "WrongShape",
        DecodeError::MissingType => "MissingType",
        DecodeError::UnknownType { .. } => "UnknownType",
        DecodeError::Invalid { .. } => "Invalid",
        _ => "a variant this test does not know",
    }
}

/// Checks one row; returns what is wrong with the result.
fn check(input: &str, want: &str, result: Result<String, DecodeError>) -> Option<String> {
    let (want_kind, want_field) = match want.split_once(' ') {
        Some((k, f)) => (k, Some(f)),
        None => (want, None),
    };
    match result {
        Ok(v) => Some(format!("{input}\n  decoded to {v}; want {want}")),
        Err(e) if kind(&e) != want_kind || e.field() != want_field => Some(format!(
            "{input}\n  got {} field {:?} ({e})\n  want {want}",
            kind(&e),
            e.field()
        )),
        // The message a client or publisher reads names the field too.
        Err(e) => want_field
            .filter(|f| !e.to_string().contains(f))
            .map(|f| format!("{input}\n  message `{e}` does not name `{f}`")),
    }
}

#[test]
fn each_client_mistake_gets_its_typed_error_and_field() {
    let failures: Vec<String> = CLIENT_ROWS
        .iter()
        .filter_map(|(input, want)| {
            let result = ClientFrame::decode(input.as_bytes()).map(|f| format!("{f:?}"));
            check(input, want, result)
        })
        .collect();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn each_publish_mistake_gets_its_typed_error_and_field() {
    let failures: Vec<String> = PUBLISH_ROWS
        .iter()
        .filter_map(|(input, want)| {
            let input = input
                .replace("$OK", OK_ITEM)
                .replace("$LONG", &"u".repeat(257));
            let result = PublishBody::decode(input.as_bytes(), Limits::EVENT, MAX_BATCH)
                .map(|b| format!("{b:?}"));
            check(&input, want, result)
        })
        .collect();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn a_batch_too_large_reports_its_size_and_the_limit() {
    let body = format!("[{OK_ITEM},{OK_ITEM},{OK_ITEM},{OK_ITEM}]");
    let err = PublishBody::decode(body.as_bytes(), Limits::EVENT, MAX_BATCH).unwrap_err();
    assert_eq!(err, DecodeError::TooLarge { size: 4, limit: 3 });
    assert!(err.is_too_large());
    let body = format!("[{OK_ITEM},{OK_ITEM},{OK_ITEM}]");
    let ok = PublishBody::decode(body.as_bytes(), Limits::EVENT, MAX_BATCH).expect("at the limit");
    assert_eq!(ok.into_requests().len(), 3);
}

#[test]
fn the_valid_neighbours_of_the_table_decode() {
    // Each row above differs from one of these by the one mistake it names, so the rows
    // fail for that mistake and not for another.
    let client = [
        r#"{"type":"ack","seq":1}"#,
        r#"{"type":"ping"}"#,
        r#"{"type":"refresh_token","token":"t"}"#,
        r#"{"type":"resume","last_seq":1,"epoch":"e1"}"#,
        r#"{"type":"resume","last_seq":0,"epoch":"auth0|e@x"}"#,
    ];
    for input in client {
        assert!(ClientFrame::decode(input.as_bytes()).is_ok(), "{input}");
    }
    let publish = [
        OK_ITEM,
        r#"{"user_id":"u\u00e9","type":"custom","data":{"name":"x"}}"#,
        r#"{"user_id":"u1","type":"custom","data":{"name":"x"},"run_id":null,"thread_id":null,"event_id":null}"#,
        r#"{"user_id":"u1","type":"tool_executing","run_id":"r1","data":{"tool_call_id":"tc1","tool_name":"search"}}"#,
        r#"{"user_id":"u1","type":"agent_started","run_id":"r1","data":{}}"#,
        r#"{"user_id":"u1","type":"agent_started","run_id":"r1"}"#,
        r#"{"user_id":"u1","type":"agent_error","run_id":"r1","data":{"message":"m"}}"#,
    ];
    for input in publish {
        assert!(
            PublishBody::decode(input.as_bytes(), Limits::EVENT, MAX_BATCH).is_ok(),
            "{input}"
        );
    }
    let id = format!(
        r#"{{"user_id":"{}","type":"custom","data":{{"name":"x"}}}}"#,
        "u".repeat(256)
    );
    assert!(PublishBody::decode(id.as_bytes(), Limits::EVENT, MAX_BATCH).is_ok());
}

#[test]
fn extra_fields_inside_data_are_kept_through_publish_and_delivery() {
    let input = json!({
        "user_id": "u1",
        "type": "tool_executing",
        "thread_id": "t1",
        "run_id": "r1",
        "data": {
            "tool_call_id": "tc1",
            "tool_name": "search",
            "arguments": {"q": "lisbon"},
            "trace": {"span_id": "s1", "sampled": true},
            "attempt": 2,
            "labels": ["a", null, 1.5]
        }
    });
    let body = PublishBody::decode(input.to_string().as_bytes(), Limits::EVENT, MAX_BATCH)
        .expect("valid publish");
    let request = match &body {
        PublishBody::One(r) => r,
        other => panic!("one object decodes as One: {other:?}"),
    };
    let EventData::ToolExecuting(ToolExecuting { extra, .. }) = &request.event.data else {
        panic!("tool_executing decodes as ToolExecuting: {request:?}");
    };
    assert_eq!(
        Value::Object(extra.clone()),
        json!({"trace": {"span_id": "s1", "sampled": true}, "attempt": 2, "labels": ["a", null, 1.5]})
    );

    let reencoded: Value =
        serde_json::from_str(&agentwire_protocol::to_json(&body)).expect("encodes JSON");
    assert_eq!(reencoded, input);

    // The same data, delivered to a client, keeps them as well.
    let mut frame = input.clone();
    let obj = frame.as_object_mut().expect("object");
    obj.remove("user_id");
    obj.insert("seq".into(), json!(5));
    obj.insert("event_id".into(), json!("ev1"));
    obj.insert("ts".into(), json!(1764104400123u64));
    let decoded = ServerFrame::decode(frame.to_string().as_bytes()).expect("valid event frame");
    let back: Value = serde_json::from_str(&decoded.to_json()).expect("encodes JSON");
    assert_eq!(back, frame);
}

#[test]
fn a_client_ignores_unknown_fields_from_a_newer_server_but_the_server_does_not() {
    let newer = br#"{"type":"replay_gap","from_seq":3,"to_seq":17,"reason":"expired"}"#;
    assert!(ServerFrame::decode(newer).is_ok());
    let err = ClientFrame::decode(br#"{"type":"ack","seq":3,"reason":"x"}"#).unwrap_err();
    assert_eq!(err.field(), Some("reason"));
}

/// A mistake made in one item of a batch, and the field it is about.
#[derive(Debug, Clone, Copy)]
enum Break {
    RemoveUserId,
    ControlCharInUserId,
    RemoveType,
    UnknownTopLevelField,
}

impl Break {
    fn apply(self, item: &mut serde_json::Map<String, Value>) -> &'static str {
        match self {
            Break::RemoveUserId => {
                item.remove("user_id");
                "user_id"
            }
            Break::ControlCharInUserId => {
                item.insert("user_id".into(), json!("u\u{1b}1"));
                "user_id"
            }
            Break::RemoveType => {
                item.remove("type");
                "type"
            }
            Break::UnknownTopLevelField => {
                item.insert("priority".into(), json!(1));
                "priority"
            }
        }
    }
}

fn batch() -> impl Strategy<Value = Vec<agentwire_protocol::PublishRequest>> {
    proptest::collection::vec(support::publish_request(), 1..=support::MAX_TEST_BATCH)
}

proptest! {
    #[test]
    fn a_batch_error_names_the_broken_item(
        items in batch(),
        at in any::<prop::sample::Index>(),
        how in prop::sample::select(vec![
            Break::RemoveUserId,
            Break::ControlCharInUserId,
            Break::RemoveType,
            Break::UnknownTopLevelField,
        ]),
    ) {
        let mut values: Vec<Value> = items
            .iter()
            .map(|r| serde_json::to_value(r).expect("encodes"))
            .collect();
        let i = at.index(values.len());
        let field = how.apply(values[i].as_object_mut().expect("an item is an object"));
        let body = Value::Array(values).to_string();
        let err = PublishBody::decode(body.as_bytes(), Limits::EVENT, support::MAX_TEST_BATCH)
            .expect_err("a broken item refuses the batch");
        let want = format!("[{i}].{field}");
        prop_assert_eq!(err.field(), Some(want.as_str()), "{}", err);
    }
}

#[test]
fn tool_call_ids_follow_the_identifier_rule() {
    for (id, ok) in [("tc1", true), ("", false), ("a\u{0}b", false)] {
        let body = serde_json::json!({"user_id": "u1", "type": "tool_executing", "run_id": "r1",
            "data": {"tool_call_id": id, "tool_name": "search"}});
        let result = PublishBody::decode(body.to_string().as_bytes(), Limits::EVENT, 10);
        match (ok, result) {
            (true, Ok(_)) => {}
            (false, Err(e)) => assert_eq!(e.field(), Some("data.tool_call_id"), "{e}"),
            (ok, other) => panic!("id {id:?} expected ok={ok}, got {other:?}"),
        }
    }
    let long = "x".repeat(agentwire_protocol::MAX_ID_BYTES + 1);
    let body = serde_json::json!({"user_id": "u1", "type": "tool_completed", "run_id": "r1",
        "data": {"tool_call_id": long, "tool_name": "search"}});
    let err = PublishBody::decode(body.to_string().as_bytes(), Limits::EVENT, 10).unwrap_err();
    assert_eq!(err.field(), Some("data.tool_call_id"));
}
