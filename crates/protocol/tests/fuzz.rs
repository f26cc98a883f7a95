//! Hostile input: arbitrary bytes, mutated valid frames, deep nesting, oversized and
//! non-UTF-8 input. Every decoder returns a typed error and never panics or overflows
//! its stack.

mod support;

use agentwire_protocol::{
    ClientFrame, DecodeError, Limits, MAX_CLIENT_FRAME_BYTES, MAX_CLIENT_FRAME_DEPTH,
    MAX_EVENT_DEPTH, PublishBody, ServerFrame, parse_value,
};
use proptest::collection::vec;
use proptest::prelude::*;
use support::MAX_TEST_BATCH;

/// Runs every decoder on `bytes`. A panic fails the property; so does a client frame that
/// decodes but does not come back the same from its own encoding.
fn decode_all(bytes: &[u8]) -> Result<(), TestCaseError> {
    if let Ok(frame) = ClientFrame::decode(bytes) {
        let again = ClientFrame::decode(frame.to_json().as_bytes());
        prop_assert_eq!(again, Ok(frame));
    }
    let _ = ServerFrame::decode(bytes);
    let _ = PublishBody::decode(bytes, Limits::EVENT, MAX_TEST_BATCH);
    Ok(())
}

/// One edit of a byte string.
#[derive(Debug, Clone)]
enum Mutation {
    Flip { at: prop::sample::Index, bit: u8 },
    Insert { at: prop::sample::Index, byte: u8 },
    Delete { at: prop::sample::Index },
}

fn mutation() -> impl Strategy<Value = Mutation> {
    // Inserted bytes favour JSON's structural characters, which reach deeper than noise.
    let byte = prop_oneof![
        prop::sample::select(b"{}[]\":,\\ 0-1eE.tfn".to_vec()),
        any::<u8>(),
    ];
    prop_oneof![
        (any::<prop::sample::Index>(), 0u8..8).prop_map(|(at, bit)| Mutation::Flip { at, bit }),
        (any::<prop::sample::Index>(), byte).prop_map(|(at, byte)| Mutation::Insert { at, byte }),
        any::<prop::sample::Index>().prop_map(|at| Mutation::Delete { at }),
    ]
}

fn mutate(mut bytes: Vec<u8>, mutations: &[Mutation]) -> Vec<u8> {
    for m in mutations {
        match m {
            Mutation::Flip { at, bit } if !bytes.is_empty() => {
                let i = at.index(bytes.len());
                bytes[i] ^= 1 << bit;
            }
            Mutation::Insert { at, byte } => {
                let i = at.index(bytes.len() + 1);
                bytes.insert(i, *byte);
            }
            Mutation::Delete { at } if !bytes.is_empty() => {
                let i = at.index(bytes.len());
                bytes.remove(i);
            }
            _ => {}
        }
    }
    bytes
}

/// The encoding of any valid frame or publish body.
fn valid_encoding() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        support::client_frame().prop_map(|f| f.to_json().into_bytes()),
        support::server_frame().prop_map(|f| f.to_json().into_bytes()),
        support::publish_body().prop_map(|b| agentwire_protocol::to_json(&b).into_bytes()),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in vec(any::<u8>(), 0..=4096)) {
        decode_all(&bytes)?;
    }

    #[test]
    fn arbitrary_text_never_panics(text in ".{0,512}") {
        decode_all(text.as_bytes())?;
    }

    #[test]
    fn mutated_valid_frames_never_panic(
        bytes in valid_encoding(),
        mutations in vec(mutation(), 1..8),
    ) {
        decode_all(&mutate(bytes, &mutations))?;
    }
}

/// `open` repeated `levels` times, then `close` as often.
fn nested(open: &str, close: &str, levels: usize) -> Vec<u8> {
    let mut s = open.repeat(levels);
    s.push_str(&close.repeat(levels));
    s.into_bytes()
}

#[test]
fn deep_nesting_is_refused_before_parsing() {
    let deep = 100_000;
    for (open, close) in [("[", "]"), ("{\"a\":", "}"), ("[{\"a\":", "}]")] {
        let bytes = nested(open, close, deep);
        assert_eq!(
            ServerFrame::decode(&bytes),
            Err(DecodeError::TooDeep {
                limit: MAX_EVENT_DEPTH + 1
            }),
            "{open}"
        );
        let publish = nested(open, close, deep / 10);
        assert_eq!(
            PublishBody::decode(&publish, Limits::EVENT, MAX_TEST_BATCH),
            Err(DecodeError::TooDeep {
                limit: MAX_EVENT_DEPTH
            }),
            "{open}"
        );
        // A client frame of this depth is refused as well, whatever its size: by size when
        // it is large, by depth when it fits.
        assert!(ClientFrame::decode(&bytes).is_err());
        let fits = nested(open, close, 1_000);
        assert!(fits.len() <= MAX_CLIENT_FRAME_BYTES);
        assert_eq!(
            ClientFrame::decode(&fits),
            Err(DecodeError::TooDeep {
                limit: MAX_CLIENT_FRAME_DEPTH
            }),
            "{open}"
        );
    }
    // Unclosed brackets count too: depth is checked before the parser sees the input.
    assert_eq!(
        ServerFrame::decode("[".repeat(100_000).as_bytes()),
        Err(DecodeError::TooDeep {
            limit: MAX_EVENT_DEPTH + 1
        })
    );
}

#[test]
fn even_a_limit_too_loose_for_the_stack_returns_an_error() {
    // With our depth check out of the way, serde_json's own recursion limit still stops the
    // parser, so no setting of `Limits` can overflow the stack.
    let loose = Limits {
        max_bytes: usize::MAX,
        max_depth: usize::MAX,
    };
    match parse_value(&nested("[", "]", 100_000), loose) {
        Err(DecodeError::Malformed { .. }) => {}
        other => panic!("expected Malformed, got {other:?}"),
    }
}

#[test]
fn nesting_at_the_limit_is_accepted() {
    // `{"type":"ack","seq":1}` is one level; a client frame may nest to MAX_CLIENT_FRAME_DEPTH
    // (here inside an unknown field, which fails for the field, not the depth).
    let inner = nested("[", "]", MAX_CLIENT_FRAME_DEPTH - 1);
    let frame = format!(
        r#"{{"type":"ack","seq":1,"x":{}}}"#,
        String::from_utf8(inner).expect("ASCII")
    );
    let err = ClientFrame::decode(frame.as_bytes()).unwrap_err();
    assert_eq!(err.field(), Some("x"), "{err}");

    let inner = nested("[", "]", MAX_EVENT_DEPTH - 2);
    let publish = format!(
        r#"{{"user_id":"u1","type":"custom","data":{{"name":"n","value":{}}}}}"#,
        String::from_utf8(inner).expect("ASCII")
    );
    assert!(PublishBody::decode(publish.as_bytes(), Limits::EVENT, 1).is_ok());
    let deeper = publish
        .replacen("\"value\":", "\"value\":[", 1)
        .replacen("}}", "]}}", 1);
    assert_eq!(
        PublishBody::decode(deeper.as_bytes(), Limits::EVENT, 1),
        Err(DecodeError::TooDeep {
            limit: MAX_EVENT_DEPTH
        })
    );
}

#[test]
fn input_over_the_client_frame_limit_is_too_large() {
    // A valid ping padded with whitespace to exactly the limit is accepted; one byte more
    // is refused for its size, before it is parsed.
    let mut at_limit = br#"{"type":"ping"}"#.to_vec();
    at_limit.resize(MAX_CLIENT_FRAME_BYTES, b' ');
    assert_eq!(ClientFrame::decode(&at_limit), Ok(ClientFrame::Ping));
    let mut over = at_limit;
    over.push(b' ');
    let err = ClientFrame::decode(&over).unwrap_err();
    assert_eq!(
        err,
        DecodeError::TooLarge {
            size: MAX_CLIENT_FRAME_BYTES + 1,
            limit: MAX_CLIENT_FRAME_BYTES
        }
    );
    assert!(err.is_too_large());
    // Size is checked first: garbage that is too large is TooLarge, not Malformed.
    assert!(
        ClientFrame::decode(&vec![0xff; 1 << 20])
            .unwrap_err()
            .is_too_large()
    );
}

#[test]
fn a_publish_over_the_event_limit_is_too_large() {
    let value = "x".repeat(Limits::EVENT.max_bytes);
    let body =
        format!(r#"{{"user_id":"u1","type":"custom","data":{{"name":"n","value":"{value}"}}}}"#);
    assert!(
        PublishBody::decode(body.as_bytes(), Limits::EVENT, 1)
            .unwrap_err()
            .is_too_large()
    );
}

#[test]
fn non_utf8_is_refused_by_every_decoder() {
    let bytes = b"{\"type\":\"refresh_token\",\"token\":\"\xc3\x28\"}";
    let valid_up_to = bytes.iter().position(|&b| b == 0xc3).expect("the bad byte");
    let want = DecodeError::NotUtf8 { valid_up_to };
    assert_eq!(ClientFrame::decode(bytes), Err(want.clone()));
    assert_eq!(ServerFrame::decode(bytes), Err(want.clone()));
    assert_eq!(PublishBody::decode(bytes, Limits::EVENT, 1), Err(want));
    // An overlong encoding and a lone surrogate are not UTF-8 either.
    for bad in [
        &b"{\"type\":\"ping\"}\xc0\xaf"[..],
        &b"\"\xed\xa0\x80\""[..],
    ] {
        assert!(matches!(
            ClientFrame::decode(bad),
            Err(DecodeError::NotUtf8 { .. })
        ));
    }
}
