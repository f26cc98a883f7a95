//! The JSON the server writes once per event without serde — an event's stored body and
//! the answer to a publish — is byte for byte what serde_json writes for the same value.

mod support;

use agentwire_protocol::{EventData, EventType, Extra, PublishAccepted, PublishResponse};
use proptest::collection::{btree_map, vec};
use proptest::option;
use proptest::prelude::*;
use support::MAX_TEST_BATCH;

fn extra_mut(data: &mut EventData) -> &mut Extra {
    match data {
        EventData::AgentStarted(p) => &mut p.extra,
        EventData::AgentThinking(p) => &mut p.extra,
        EventData::ToolExecuting(p) => &mut p.extra,
        EventData::ToolCompleted(p) => &mut p.extra,
        EventData::AgentCompleted(p) => &mut p.extra,
        EventData::AgentError(p) => &mut p.extra,
        EventData::MessageDelta(p) => &mut p.extra,
        EventData::MessageCompleted(p) => &mut p.extra,
        EventData::Custom(p) => &mut p.extra,
    }
}

/// Extra keys that repeat a typed field's name: an event built in process may carry
/// them (a decoded one cannot), and both writers then write the key twice.
fn colliding_extra() -> impl Strategy<Value = Vec<(String, serde_json::Value)>> {
    let names: Vec<&'static str> = EventType::ALL
        .iter()
        .flat_map(|t| support::typed_fields(*t).iter().copied())
        .collect();
    btree_map(
        prop::sample::select(names).prop_map(str::to_owned),
        support::json_value(),
        0..3,
    )
    .prop_map(|m| m.into_iter().collect())
}

fn publish_response() -> impl Strategy<Value = PublishResponse> {
    let receipt = prop_oneof![
        any::<String>(),
        "/v1/users/[a-zA-Z0-9%._~-]{1,40}/(receipts|runs/[a-z0-9%]{1,20})",
    ];
    vec(
        (
            support::seq(),
            support::event_id(),
            support::timestamp(),
            option::of(receipt),
        )
            .prop_map(|(seq, event_id, ts, receipt)| PublishAccepted {
                seq,
                event_id,
                ts,
                receipt,
            }),
        0..=MAX_TEST_BATCH,
    )
    .prop_map(|results| PublishResponse { results })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    #[test]
    fn an_event_body_is_what_serde_json_writes(
        mut event in support::event(),
        colliding in colliding_extra(),
    ) {
        prop_assert_eq!(
            String::from_utf8(event.body_json()).expect("UTF-8"),
            String::from_utf8(event.body_json_serde()).expect("UTF-8")
        );
        extra_mut(&mut event.data).extend(colliding);
        prop_assert_eq!(
            String::from_utf8(event.body_json()).expect("UTF-8"),
            String::from_utf8(event.body_json_serde()).expect("UTF-8")
        );
    }

    #[test]
    fn a_publish_answer_is_what_serde_json_writes(response in publish_response()) {
        prop_assert_eq!(
            String::from_utf8(response.to_json_bytes()).expect("UTF-8"),
            serde_json::to_string(&response).expect("serializes")
        );
    }
}
