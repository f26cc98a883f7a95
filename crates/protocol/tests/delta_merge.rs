//! Merging `message_delta` frames (what a server does to deltas waiting in a slow
//! connection's queue): the merged frame carries the text of every delta in order, the
//! newest `seq`, and `from_seq`; nothing else merges.

use agentwire_protocol::{
    AgentThinking, Event, EventData, EventEnvelope, EventId, MessageDelta, Seq, ServerFrame,
    Timestamp,
};
use proptest::collection::vec;
use proptest::prelude::*;

fn delta_in(run: &str, message: &str, seq: u64, text: &str) -> EventEnvelope {
    EventEnvelope::new(
        Seq(seq),
        EventId::new(format!("e{seq}")).expect("event id"),
        Timestamp(1_000 + seq),
        Event::new(
            Some("t1".parse().expect("thread")),
            Some(run.parse().expect("run")),
            MessageDelta {
                message_id: message.into(),
                delta: text.into(),
                extra: Default::default(),
            },
        ),
    )
}

fn delta(seq: u64, text: &str) -> EventEnvelope {
    delta_in("r1", "m1", seq, text)
}

fn text(e: &EventEnvelope) -> &str {
    match &e.event.data {
        EventData::MessageDelta(d) => &d.delta,
        other => panic!("not a delta: {other:?}"),
    }
}

#[test]
fn contiguous_deltas_of_one_message_merge() {
    let mut merged = delta(5, "Three ");
    assert!(merged.merge_delta(&delta(6, "flights ")));
    assert!(merged.merge_delta(&delta(7, "found.")));
    assert_eq!(text(&merged), "Three flights found.");
    assert_eq!((merged.from_seq, merged.seq), (Some(Seq(5)), Seq(7)));
    assert_eq!(merged.seqs(), Seq(5)..=Seq(7));
    assert_eq!(merged.event_id.as_str(), "e7");
    assert_eq!(merged.ts, Timestamp(1_007));
    // On the wire `from_seq` follows `ts`, and the frame decodes back to itself.
    let json = ServerFrame::Event(merged.clone()).to_json();
    assert!(
        json.starts_with(
            r#"{"type":"message_delta","seq":7,"event_id":"e7","ts":1007,"from_seq":5,"#
        ),
        "{json}"
    );
    assert_eq!(
        ServerFrame::decode(json.as_bytes()).expect("decodes"),
        ServerFrame::Event(merged)
    );
}

#[test]
fn nothing_else_merges() {
    let base = delta(5, "a");
    let thinking = EventEnvelope::new(
        Seq(6),
        EventId::new("e6").expect("id"),
        Timestamp(1),
        Event::new(
            None,
            Some("r1".parse().expect("run")),
            AgentThinking {
                thought: "b".into(),
                ..Default::default()
            },
        ),
    );
    let cases = [
        ("another message", delta_in("r1", "m2", 6, "b")),
        ("another run", delta_in("r2", "m1", 6, "b")),
        ("a gap", delta(7, "b")),
        ("an older one", delta(4, "b")),
        ("not a delta", thinking),
    ];
    for (what, next) in cases {
        let mut merged = base.clone();
        assert!(!merged.merge_delta(&next), "{what} merged");
        assert_eq!(merged, base, "{what} changed the frame");
    }
}

#[test]
fn a_from_seq_not_below_seq_is_refused() {
    let frame = br#"{"type":"message_delta","seq":7,"event_id":"e","ts":1,"from_seq":7,"run_id":"r","data":{"message_id":"m","delta":"x"}}"#;
    let err = ServerFrame::decode(frame).expect_err("from_seq = seq");
    assert_eq!(err.field(), Some("from_seq"));
}

proptest! {
    /// However a run of deltas is cut into merged frames, the frames' texts in order are
    /// the deltas' text, and their seq ranges cover every seq once, in order.
    #[test]
    fn merged_frames_cover_every_delta_once(
        pieces in vec(".{0,8}", 1..40),
        cuts in vec(any::<bool>(), 40),
    ) {
        let mut frames: Vec<EventEnvelope> = Vec::new();
        for (i, piece) in pieces.iter().enumerate() {
            let next = delta(10 + i as u64, piece);
            let merged = !cuts[i]
                && frames.last_mut().is_some_and(|last| last.merge_delta(&next));
            if !merged {
                frames.push(next);
            }
        }
        let joined: String = frames.iter().map(text).collect();
        prop_assert_eq!(joined, pieces.concat());
        let mut expect = 10u64;
        for f in &frames {
            prop_assert_eq!(*f.seqs().start(), Seq(expect));
            expect = f.seq.get() + 1;
        }
        prop_assert_eq!(expect, 10 + pieces.len() as u64);
    }
}
