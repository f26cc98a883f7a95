//! Streaming an answer through the bridge: any `Stream` of text becomes `message_delta`
//! events of one message and a closing `message_completed`, inside the run.

mod support;

use std::time::Duration;

use agentwire_protocol::{EventData, EventType};
use futures_util::stream;
use serde_json::json;
use support::{ctx, read_events, setup, types};

const WAIT: Duration = Duration::from_secs(5);

#[tokio::test(start_paused = true)]
async fn a_stream_of_text_becomes_one_streamed_message() {
    let (bridge, conn) = setup().await;
    let run = bridge
        .start_run(ctx("alice", "r1"), "writer")
        .await
        .expect("start");
    let pieces = ["Three ", "", "flights ", "found."].map(String::from);
    let message = run
        .stream_message(stream::iter(pieces))
        .await
        .expect("streamed");
    assert_eq!(message.text, "Three flights found.");
    run.complete(json!(message.text)).await.expect("complete");

    let events = read_events(&conn, 6, WAIT).await;
    assert_eq!(
        types(&events),
        [
            EventType::AgentStarted,
            EventType::MessageDelta,
            EventType::MessageDelta,
            EventType::MessageDelta,
            EventType::MessageCompleted,
            EventType::AgentCompleted,
        ]
    );
    let mut text = String::new();
    for e in &events {
        match &e.event.data {
            EventData::MessageDelta(d) => {
                assert_eq!(d.message_id, message.message_id);
                text.push_str(&d.delta);
            }
            EventData::MessageCompleted(m) => assert_eq!(m.message_id, message.message_id),
            _ => {}
        }
    }
    assert_eq!(text, message.text);
}

#[tokio::test(start_paused = true)]
async fn an_empty_stream_still_opens_and_closes_its_message() {
    let (bridge, conn) = setup().await;
    let run_ctx = ctx("alice", "r2");
    let run = bridge
        .start_run(run_ctx.clone(), "writer")
        .await
        .expect("start");
    let message = bridge
        .stream_message(&run_ctx, stream::empty())
        .await
        .expect("streamed");
    assert_eq!(message.text, "");
    run.complete(json!(null)).await.expect("complete");
    let events = read_events(&conn, 4, WAIT).await;
    assert_eq!(
        types(&events),
        [
            EventType::AgentStarted,
            EventType::MessageDelta,
            EventType::MessageCompleted,
            EventType::AgentCompleted,
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn a_stream_outside_a_running_run_is_refused() {
    let (bridge, _conn) = setup().await;
    let err = bridge
        .stream_message(
            &ctx("alice", "never-started"),
            stream::iter(["x".to_owned()]),
        )
        .await
        .expect_err("not started");
    assert!(err.violation().is_some(), "{err}");
}
