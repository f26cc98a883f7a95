//! Backpressure on streamed text: `message_delta`s of one message waiting in a busy
//! connection's queue merge into one frame instead of the connection being closed as a
//! slow consumer; nothing else merges, and every seq is still covered once, in order.

mod support;

use agentwire_manager::{ConnectOptions, UnifiedWebSocketManager};
use agentwire_protocol::{
    AgentCompleted, AgentStarted, CloseCode, Event, EventData, MessageCompleted, MessageDelta,
    RunId, UserId,
};
use support::{Client, connect, settle, small_queue, user};

fn run() -> RunId {
    "r1".parse().expect("run id")
}

async fn emit(m: &UnifiedWebSocketManager, u: &UserId, data: impl Into<EventData>) -> u64 {
    m.emit_critical_event(u, Event::new(None, Some(run()), data))
        .await
        .expect("emit")
        .seq
        .get()
}

fn delta(message: &str, text: String) -> MessageDelta {
    MessageDelta {
        message_id: message.into(),
        delta: text,
        extra: Default::default(),
    }
}

/// The text of `message` as a client assembles it, and the seqs its frames covered.
fn assembled(client: &Client, message: &str) -> (String, Vec<u64>) {
    let mut text = String::new();
    let mut seqs = Vec::new();
    for e in client.events() {
        if let EventData::MessageDelta(d) = &e.event.data
            && d.message_id == message
        {
            text.push_str(&d.delta);
            seqs.extend(e.seqs().start().get()..=e.seq.get());
        }
    }
    (text, seqs)
}

/// Every seq `1..=last` is covered exactly once, in order, by the frames' ranges.
fn assert_covered_once(client: &Client, last: u64) {
    let mut next = 1;
    for e in client.events() {
        assert_eq!(e.seqs().start().get(), next, "a hole or a repeat at {next}");
        next = e.seq.get() + 1;
    }
    assert_eq!(next, last + 1, "the stream ended early");
}

#[tokio::test(start_paused = true)]
async fn a_slow_reader_gets_merged_deltas_and_every_event_after_them() {
    let m = small_queue();
    let u = user("ana");
    let mut slow = connect(&m, &u, ConnectOptions::default()).await;
    let mut fast = connect(&m, &u, ConnectOptions::default()).await;
    settle().await;
    slow.drain_ready().await;
    emit(&m, &u, AgentStarted::default()).await;
    let mut want = String::new();
    for i in 0..200 {
        let piece = format!("word{i} ");
        want.push_str(&piece);
        emit(&m, &u, delta("m1", piece)).await;
        fast.drain_ready().await;
    }
    emit(
        &m,
        &u,
        MessageCompleted {
            message_id: "m1".into(),
            ..Default::default()
        },
    )
    .await;
    let last = emit(&m, &u, AgentCompleted::default()).await;
    assert_eq!(last, 203);

    // The slow reader reads only now: it was never cut, and lost nothing.
    slow.until_seq(last).await;
    assert_eq!(slow.closed, None);
    assert_eq!(m.get_stats().slow_consumer_closes, 0);
    assert!(m.get_stats().deltas_merged > 0);
    let (text, seqs) = assembled(&slow, "m1");
    assert_eq!(text, want);
    assert_eq!(seqs, (2..=201).collect::<Vec<_>>());
    assert_covered_once(&slow, last);
    assert!(
        slow.events().count() <= 8,
        "{} frames for a queue of 8",
        slow.events().count()
    );
    let kinds: Vec<&str> = slow
        .events()
        .map(|e| e.event.event_type().as_str())
        .collect();
    assert_eq!(kinds.first(), Some(&"agent_started"));
    assert_eq!(
        &kinds[kinds.len() - 2..],
        ["message_completed", "agent_completed"]
    );

    // The reader that kept up got every delta as it was.
    fast.until_seq(last).await;
    assert!(fast.events().all(|e| e.from_seq.is_none()));
    assert_eq!(fast.seqs(), (1..=last).collect::<Vec<_>>());
}

/// A small-queue manager, `name` connected to it and live, and the run started: the
/// reader reads nothing more until the test says so. Returns `agent_started`'s seq too.
async fn started_reader(name: &str) -> (UnifiedWebSocketManager, UserId, Client, u64) {
    let m = small_queue();
    let u = user(name);
    let mut slow = connect(&m, &u, ConnectOptions::default()).await;
    settle().await;
    slow.drain_ready().await;
    let started = emit(&m, &u, AgentStarted::default()).await;
    (m, u, slow, started)
}

#[tokio::test(start_paused = true)]
async fn deltas_of_two_messages_in_turn_do_not_merge_and_the_slow_reader_is_cut() {
    let (m, u, mut slow, _) = started_reader("bo").await;
    for i in 0..20 {
        let message = if i % 2 == 0 { "a" } else { "b" };
        emit(&m, &u, delta(message, format!("{i} "))).await;
    }
    assert_eq!(slow.until_closed().await, CloseCode::TryAgainLater);
    let stats = m.get_stats();
    assert_eq!((stats.slow_consumer_closes, stats.deltas_merged), (1, 0));
}

#[tokio::test(start_paused = true)]
async fn merged_frames_count_as_they_encode_and_carry_the_newest_deltas_fields() {
    // Texts that need escapes, and fields beyond the typed ones that change from one
    // delta to the next (a float among them, which encodes otherwise than it was sent):
    // the merged frame, encoded only when it is taken, is what the queue counted for it
    // all along.
    let (m, u, mut slow, first) = started_reader("cy").await;
    let pieces = [
        "plain ",
        "a \"quote\" ",
        "back\\slash ",
        "line\nbreak\ttab ",
        "\u{1}ctl\u{1f} ",
        "é ü 日本 🎉 ",
        "</script> ",
        "\u{7f}\u{2028} ",
    ];
    let mut want = String::new();
    let mut last = first;
    for round in 0..4 {
        for (i, piece) in pieces.iter().enumerate() {
            let mut d = delta("m1", format!("{round}:{piece}"));
            d.extra.insert("n".into(), i.into());
            d.extra.insert("tag".into(), (*piece).into());
            d.extra.insert("w".into(), serde_json::json!(1.5e2));
            want.push_str(&d.delta);
            last = emit(&m, &u, d).await;
        }
        let queued = m.connections_of(&u)[0].queued_bytes;
        let before = (slow.bytes, slow.events().count());
        slow.until_seq(last).await;
        assert_eq!(slow.bytes - before.0, queued, "round {round}");
        let newest = slow.events().last().expect("a frame");
        assert!(newest.from_seq.is_some(), "round {round} merged nothing");
        let EventData::MessageDelta(d) = &newest.event.data else {
            panic!("not a delta: {newest:?}");
        };
        assert_eq!(d.extra["n"], pieces.len() - 1);
        assert_eq!(d.extra["tag"], pieces[pieces.len() - 1]);
        assert!(slow.events().count() - before.1 < pieces.len());
    }
    assert_eq!(slow.closed, None);
    assert_eq!(assembled(&slow, "m1").0, want);
    assert_covered_once(&slow, last);
}
