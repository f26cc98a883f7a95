//! What the Redis scripts store and answer, on the machine's shared Redis under a key
//! prefix of each test's own: frames byte-identical with `compose_frame`, awkward user ids
//! kept apart in one hash slot each, batches all or nothing, digest conflicts, the dedupe
//! window and age trimming.

mod support;

use std::time::Duration;

use agentwire_manager::{Broker, BrokerError, NewEvent, compose_frame};
use agentwire_protocol::{Custom, Event, EventId, EventType, Seq};
use agentwire_redis::RedisBroker;
use agentwire_redis::testing;
use bytes::Bytes;
use support::{RedisHarness, custom_event, recorder_of, user};

fn body(name: &str, n: u64) -> Bytes {
    Bytes::from(
        Event::new(
            Some("thread-1".parse().expect("id")),
            Some("run-1".parse().expect("id")),
            Custom {
                name: name.into(),
                value: n.into(),
                extra: Default::default(),
            },
        )
        .body_json(),
    )
}

fn event(n: u64, id: Option<&str>) -> NewEvent {
    custom_event(n, id)
}

async fn harness(label: &str) -> Option<RedisHarness> {
    let url = testing::require("Redis script tests", testing::shared_redis())?;
    Some(RedisHarness::standalone(&url, label))
}

async fn finish(harness: &RedisHarness, broker: &RedisBroker) {
    assert_eq!(broker.metrics().script_errors, 0, "{:?}", broker.metrics());
    harness.delete_keys().await;
}

#[tokio::test]
async fn frames_are_byte_identical_with_compose_frame() {
    let Some(h) = harness("frames").await else {
        return;
    };
    let broker = h.connect(h.config()).await;
    let alice = user("alice");
    let rec = recorder_of(&broker, &alice).await;
    let ids = [
        "plain",
        "quote \" and backslash \\",
        "looks like ,\"ts\":0,\"seq\":1",
        "ünïcødé ✓ {tag}",
        "%7B",
    ];
    let mut sent = Vec::new();
    for (n, id) in ids.iter().enumerate() {
        for t in [EventType::Custom, EventType::AgentThinking] {
            let id = format!("{id} {t}");
            let b = body("frames", n as u64);
            let a = broker
                .publish(
                    &alice,
                    NewEvent::new(t, Some(EventId::new(&id).expect("id")), b.clone()),
                )
                .await
                .expect("publish");
            sent.push((t, a, b));
        }
    }
    // One event without an id: the broker assigns one.
    let b = body("frames", 99);
    let a = broker
        .publish(&alice, NewEvent::new(EventType::Custom, None, b.clone()))
        .await
        .expect("publish");
    sent.push((EventType::Custom, a, b));

    let history = broker
        .history(&alice, Seq::ZERO, 100)
        .await
        .expect("history");
    assert_eq!(history.events.len(), sent.len());
    rec.wait_until("every delivery", |r| r.seqs().len() == sent.len())
        .await;
    let delivered = rec.events();
    for (((t, a, b), stored), live) in sent.iter().zip(&history.events).zip(&delivered) {
        let want = compose_frame(*t, a.seq, &a.event_id, a.ts, b);
        assert_eq!(stored.frame, want, "history frame of seq {}", a.seq);
        assert_eq!(live.frame, want, "delivered frame of seq {}", a.seq);
        assert_eq!(
            (
                stored.seq,
                &stored.event_id,
                stored.ts,
                stored.event_type,
                &stored.epoch
            ),
            (a.seq, &a.event_id, a.ts, *t, &a.epoch)
        );
        assert_eq!(stored, live);
    }
    finish(&h, &broker).await;
}

#[tokio::test]
async fn awkward_user_ids_get_streams_of_their_own() {
    let Some(h) = harness("users").await else {
        return;
    };
    let broker = h.connect(h.config()).await;
    support::awkward_users(&broker).await;
    finish(&h, &broker).await;
}

#[tokio::test]
async fn batches_are_consecutive_and_all_or_nothing() {
    let Some(h) = harness("batches").await else {
        return;
    };
    let broker = h.connect(h.config().max_batch_events(10)).await;
    let alice = user("alice");
    let first = broker
        .publish_many(
            &alice,
            vec![
                event(0, Some("a")),
                event(1, None),
                event(0, Some("a")),
                event(2, Some("b")),
            ],
        )
        .await
        .expect("batch");
    let seqs: Vec<(u64, bool)> = first.iter().map(|a| (a.seq.get(), a.duplicate)).collect();
    assert_eq!(seqs, [(1, false), (2, false), (1, true), (3, false)]);

    // "b" again with another body: the whole batch is refused and nothing is stored.
    let refused = broker
        .publish_many(&alice, vec![event(3, Some("c")), event(99, Some("b"))])
        .await
        .expect_err("a reused id refuses the batch");
    assert!(refused.accepted.is_empty());
    assert_eq!(
        refused.error,
        BrokerError::Conflict {
            event_id: EventId::new("b").expect("id"),
            seq: Seq(3)
        }
    );
    // Two events under one new id with different bodies, in one batch: refused too.
    let refused = broker
        .publish_many(&alice, vec![event(4, Some("d")), event(5, Some("d"))])
        .await
        .expect_err("one id, two events");
    assert!(matches!(
        refused.error,
        BrokerError::Conflict { seq: Seq(4), .. }
    ));
    let hist = broker
        .history(&alice, Seq::ZERO, 100)
        .await
        .expect("history");
    assert_eq!(hist.last_seq, Seq(3), "a refused batch stored nothing");
    assert!(
        broker
            .lookup(&alice, &EventId::new("c").expect("id"))
            .await
            .expect("lookup")
            .is_none()
    );

    let too_many = (0..11).map(|n| event(n, None)).collect();
    let refused = broker
        .publish_many(&alice, too_many)
        .await
        .expect_err("too big");
    assert!(matches!(refused.error, BrokerError::Rejected(_)));
    assert_eq!(broker.metrics().batches_refused, 1);
    assert_eq!(broker.metrics().conflicts, 2);
    finish(&h, &broker).await;
}

#[tokio::test]
async fn count_bounds_trim_history_and_dedupe_entries() {
    let Some(h) = harness("counts").await else {
        return;
    };
    let broker = h
        .connect(h.config().max_events_per_user(2).max_dedupe_per_user(3))
        .await;
    let alice = user("alice");
    for n in 0..5 {
        broker
            .publish(&alice, event(n, Some(&format!("id-{n}"))))
            .await
            .expect("publish");
    }
    let hist = broker
        .history(&alice, Seq::ZERO, 100)
        .await
        .expect("history");
    assert_eq!((hist.last_seq, hist.gap), (Seq(5), Some((Seq(1), Seq(3)))));
    let known = |n: u64| EventId::new(format!("id-{n}")).expect("id");
    assert!(
        broker
            .lookup(&alice, &known(1))
            .await
            .expect("lookup")
            .is_none()
    );
    assert!(
        broker
            .lookup(&alice, &known(2))
            .await
            .expect("lookup")
            .is_some()
    );
    let m = broker.metrics();
    assert_eq!((m.history_trimmed, m.dedupe_forgotten), (3, 2), "{m:?}");
    finish(&h, &broker).await;
}

/// Real time on Redis's clock, with margins of 300 ms or more around every edge.
#[tokio::test]
async fn lookup_and_dedupe_hold_for_the_window_and_history_ages() {
    let Some(h) = harness("window").await else {
        return;
    };
    let broker = h
        .connect(
            h.config()
                .max_age(Duration::from_secs(1))
                .dedupe_window(Duration::from_secs(2)),
        )
        .await;
    let alice = user("alice");
    let x = EventId::new("x").expect("id");
    let first = broker
        .publish(&alice, event(0, Some("x")))
        .await
        .expect("publish");
    tokio::time::sleep(Duration::from_millis(700)).await;
    broker
        .publish(&alice, event(1, None))
        .await
        .expect("publish");
    tokio::time::sleep(Duration::from_millis(600)).await;

    // Past max_age for the first event only: history reports it as a gap.
    let hist = broker
        .history(&alice, Seq::ZERO, 100)
        .await
        .expect("history");
    assert_eq!((hist.last_seq, hist.gap), (Seq(2), Some((Seq(1), Seq(1)))));
    assert_eq!(hist.events.len(), 1);
    assert!(broker.metrics().history_trimmed >= 1);
    // Inside the dedupe window: the id is known.
    let found = broker
        .lookup(&alice, &x)
        .await
        .expect("lookup")
        .expect("inside the window");
    assert_eq!(
        (found.seq, found.ts, &found.epoch, found.duplicate),
        (first.seq, first.ts, &first.epoch, true)
    );
    let again = broker
        .publish(&alice, event(0, Some("x")))
        .await
        .expect("publish");
    assert!(again.duplicate && again.seq == first.seq);

    // Past the dedupe window: forgotten, and the same id is a new event.
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    assert!(broker.lookup(&alice, &x).await.expect("lookup").is_none());
    let fresh = broker
        .publish(&alice, event(0, Some("x")))
        .await
        .expect("publish");
    assert_eq!(
        (fresh.seq, fresh.duplicate, &fresh.epoch),
        (Seq(3), false, &first.epoch)
    );
    finish(&h, &broker).await;
}
