//! Round trips: every frame kind, built from random valid parts, decodes from its own
//! encoding to the same value. One property per frame kind, so a failure names the kind.

mod support;

use agentwire_protocol::{
    ClientFrame, ErrorCode, EventType, Limits, PublishBody, PublishResponse, ServerFrame, UserId,
    validate_id,
};
use proptest::prelude::*;
use support::MAX_TEST_BATCH;

fn server_round_trip(frame: &ServerFrame) -> Result<(), TestCaseError> {
    let json = frame.to_json();
    let decoded = ServerFrame::decode(json.as_bytes())
        .map_err(|e| TestCaseError::fail(format!("{json}\ndoes not decode: {e}")))?;
    prop_assert_eq!(&decoded, frame, "{}", json);
    Ok(())
}

fn event_round_trip(ty: EventType) -> impl Strategy<Value = ServerFrame> {
    support::envelope_of(ty).prop_map(ServerFrame::Event)
}

fn client_round_trip(frame: &ClientFrame) -> Result<(), TestCaseError> {
    let json = frame.to_json();
    let decoded = ClientFrame::decode(json.as_bytes())
        .map_err(|e| TestCaseError::fail(format!("{json}\ndoes not decode: {e}")))?;
    prop_assert_eq!(&decoded, frame, "{}", json);
    Ok(())
}

fn publish_round_trip(body: &PublishBody) -> Result<(), TestCaseError> {
    let json = agentwire_protocol::to_json(body);
    let decoded = PublishBody::decode(json.as_bytes(), Limits::EVENT, MAX_TEST_BATCH)
        .map_err(|e| TestCaseError::fail(format!("{json}\ndoes not decode: {e}")))?;
    prop_assert_eq!(&decoded, body, "{}", json);
    Ok(())
}

proptest! {
    #[test]
    fn ids_obey_the_rule_and_survive_json(s in support::id_string()) {
        prop_assert!(validate_id(&s).is_ok(), "{:?}", s);
        let id = UserId::new(&s).expect("valid");
        let back: UserId = serde_json::from_str(&agentwire_protocol::to_json(&id))
            .expect("a valid id decodes");
        prop_assert_eq!(back.as_str(), s.as_str());
    }

    #[test]
    fn ids_with_a_control_character_are_rejected(
        s in support::id_string(),
        at in any::<prop::sample::Index>(),
        c in prop_oneof![0u32..0x20, 0x7fu32..0xa0].prop_map(|n| char::from_u32(n).expect("control")),
    ) {
        let mut chars: Vec<char> = s.chars().collect();
        chars.insert(at.index(chars.len() + 1), c);
        let bad: String = chars.into_iter().collect();
        prop_assert!(UserId::new(&bad).is_err(), "{:?}", bad);
        prop_assert!(serde_json::from_str::<UserId>(&agentwire_protocol::to_json(&bad)).is_err());
    }

    #[test]
    fn connection_established(f in support::connection_established()) {
        server_round_trip(&ServerFrame::ConnectionEstablished(f))?;
    }

    #[test]
    fn agent_started(f in event_round_trip(EventType::AgentStarted)) {
        server_round_trip(&f)?;
    }

    #[test]
    fn agent_thinking(f in event_round_trip(EventType::AgentThinking)) {
        server_round_trip(&f)?;
    }

    #[test]
    fn tool_executing(f in event_round_trip(EventType::ToolExecuting)) {
        server_round_trip(&f)?;
    }

    #[test]
    fn tool_completed(f in event_round_trip(EventType::ToolCompleted)) {
        server_round_trip(&f)?;
    }

    #[test]
    fn agent_completed(f in event_round_trip(EventType::AgentCompleted)) {
        server_round_trip(&f)?;
    }

    #[test]
    fn agent_error(f in event_round_trip(EventType::AgentError)) {
        server_round_trip(&f)?;
    }

    #[test]
    fn custom(f in event_round_trip(EventType::Custom)) {
        server_round_trip(&f)?;
    }

    #[test]
    fn replay_gap(f in support::replay_gap()) {
        server_round_trip(&ServerFrame::ReplayGap(f))?;
    }

    #[test]
    fn error(f in support::error_frame()) {
        server_round_trip(&ServerFrame::Error(f))?;
    }

    #[test]
    fn ack(seq in support::seq()) {
        client_round_trip(&ClientFrame::Ack { seq })?;
    }

    #[test]
    fn resume(last_seq in support::seq(), epoch in support::epoch()) {
        client_round_trip(&ClientFrame::Resume { last_seq, epoch })?;
    }

    #[test]
    fn refresh_token(token in support::token()) {
        client_round_trip(&ClientFrame::RefreshToken { token })?;
    }

    #[test]
    fn publish_one(r in support::publish_request()) {
        publish_round_trip(&PublishBody::One(r))?;
    }

    #[test]
    fn publish_batch(rs in proptest::collection::vec(support::publish_request(), 1..=MAX_TEST_BATCH)) {
        publish_round_trip(&PublishBody::Batch(rs))?;
    }

    #[test]
    fn publish_response(r in support::publish_response()) {
        let json = agentwire_protocol::to_json(&r);
        let decoded: PublishResponse = serde_json::from_str(&json)
            .map_err(|e| TestCaseError::fail(format!("{json}\ndoes not decode: {e}")))?;
        prop_assert_eq!(decoded, r, "{}", json);
    }
}

#[test]
fn pong() {
    assert_eq!(ServerFrame::Pong.to_json(), r#"{"type":"pong"}"#);
    assert_eq!(
        ServerFrame::decode(br#"{"type":"pong"}"#),
        Ok(ServerFrame::Pong)
    );
}

#[test]
fn ping() {
    assert_eq!(ClientFrame::Ping.to_json(), r#"{"type":"ping"}"#);
    assert_eq!(
        ClientFrame::decode(br#"{"type":"ping"}"#),
        Ok(ClientFrame::Ping)
    );
}

#[test]
fn every_error_code_has_its_snake_case_name() {
    let names: Vec<String> = support::ERROR_CODES
        .iter()
        .map(agentwire_protocol::to_json)
        .collect();
    assert_eq!(
        names,
        [
            "\"bad_request\"",
            "\"unknown_type\"",
            "\"too_large\"",
            "\"resume_not_first\"",
            "\"invalid_token\"",
            "\"rate_limited\"",
            "\"internal\"",
        ]
    );
    let newer: ErrorCode = serde_json::from_str("\"quota_exceeded\"").expect("decodes");
    assert_eq!(newer, ErrorCode::Unknown);
}
