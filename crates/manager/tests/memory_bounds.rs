//! The in-memory broker's bounds: one byte budget for every user together (issue 14: it
//! was 32 fixed shares), trimmed globally oldest first, and the dedupe window at its edges.

use std::sync::Arc;
use std::time::Duration;

use agentwire_manager::{
    Broker, BrokerError, ENTRY_OVERHEAD_BYTES, HistoryConfig, InMemoryBroker, NewEvent,
    STREAM_OVERHEAD_BYTES,
};
use agentwire_protocol::{EventId, EventType, Seq, UserId};
use bytes::Bytes;

fn user(name: &str) -> UserId {
    name.parse().expect("valid user id")
}

fn id(name: &str) -> EventId {
    name.parse().expect("valid event id")
}

/// A `custom` event body of about `size` bytes.
fn event(n: u64, size: usize, event_id: Option<EventId>) -> NewEvent {
    let pad = "x".repeat(size.saturating_sub(64));
    let body = format!(r#"{{"data":{{"name":"n","value":{n},"pad":"{pad}"}}}}"#);
    NewEvent::new(EventType::Custom, event_id, Bytes::from(body))
}

async fn publish(broker: &InMemoryBroker, user: &UserId, event: NewEvent) -> u64 {
    broker
        .publish(user, event)
        .await
        .expect("the in-memory broker accepts")
        .seq
        .get()
}

async fn held(broker: &InMemoryBroker, user: &UserId) -> Vec<u64> {
    broker
        .history(user, Seq::ZERO, usize::MAX)
        .await
        .expect("history")
        .events
        .iter()
        .map(|e| e.seq.get())
        .collect()
}

fn budget(bytes: usize) -> HistoryConfig {
    HistoryConfig {
        max_events_per_user: 100_000,
        max_total_bytes: bytes,
        ..HistoryConfig::default()
    }
}

#[tokio::test(start_paused = true)]
async fn one_user_can_use_far_more_than_a_thirty_second_of_the_budget() {
    const BUDGET: usize = 64 * 1024;
    let broker = InMemoryBroker::new(budget(BUDGET));
    let alice = user("alice");
    for n in 0..40 {
        publish(&broker, &alice, event(n, 1_000, None)).await;
    }
    let stats = broker.stats();
    assert_eq!(
        stats.history_trimmed, 0,
        "40 KB of one user fit a 64 KiB budget"
    );
    assert_eq!(held(&broker, &alice).await, (1..=40).collect::<Vec<_>>());
    assert!(
        stats.history_bytes > (BUDGET / 32 * 10) as u64,
        "one user holds {} bytes",
        stats.history_bytes
    );
    // Past the budget, the user's own oldest events go, and the bound holds.
    for n in 40..200 {
        publish(&broker, &alice, event(n, 1_000, None)).await;
        assert!(broker.stats().history_bytes <= BUDGET as u64);
    }
    let kept = held(&broker, &alice).await;
    assert_eq!(kept.last(), Some(&200));
    assert!(
        kept.len() > 45,
        "the user keeps most of the budget: {}",
        kept.len()
    );
}

/// The budget trims across users in acceptance order: what survives is always the newest
/// events of the node, whoever published them.
#[tokio::test(start_paused = true)]
async fn the_budget_trims_the_globally_oldest_events_first() {
    const BUDGET: usize = 32 * 1024;
    let broker = InMemoryBroker::new(budget(BUDGET));
    let users: Vec<UserId> = (0..40).map(|i| user(&format!("u{i}"))).collect();
    // (user index, seq) in publish order.
    let mut order = Vec::new();
    for round in 0..300u64 {
        // A few users publish much more than the others.
        let i = if round % 3 == 0 {
            (round as usize / 3) % users.len()
        } else {
            round as usize % 4
        };
        let seq = publish(&broker, &users[i], event(round, 300, None)).await;
        order.push((i, seq));
    }
    let mut surviving = Vec::new();
    for (i, u) in users.iter().enumerate() {
        for seq in held(&broker, u).await {
            surviving.push((i, seq));
        }
    }
    assert!(broker.stats().history_trimmed > 0, "the budget never bit");
    let first_kept = order.len() - surviving.len();
    let mut newest = order[first_kept..].to_vec();
    newest.sort_unstable();
    surviving.sort_unstable();
    assert_eq!(
        surviving, newest,
        "history holds something other than the node's newest events"
    );
}

#[tokio::test(start_paused = true)]
async fn the_total_bound_holds_with_many_users() {
    const BUDGET: usize = 256 * 1024;
    let broker = InMemoryBroker::new(budget(BUDGET));
    for n in 0..20_000u64 {
        let u = user(&format!("user-{n}"));
        publish(&broker, &u, event(n, 100, Some(id(&format!("e-{n}"))))).await;
        if n % 500 == 0 {
            assert!(broker.stats().history_bytes <= BUDGET as u64);
        }
    }
    let stats = broker.stats();
    assert!(stats.history_bytes <= BUDGET as u64, "{stats:?}");
    // Every remembered stream costs at least its overhead and one entry.
    let most_streams = BUDGET / (STREAM_OVERHEAD_BYTES + ENTRY_OVERHEAD_BYTES);
    assert!(
        stats.users as usize <= most_streams,
        "{} streams under a budget for {most_streams}",
        stats.users
    );
    assert!(stats.history_trimmed > 15_000, "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_total_bound_holds_under_concurrent_publishers() {
    const BUDGET: usize = 128 * 1024;
    let broker = Arc::new(InMemoryBroker::new(budget(BUDGET)));
    let tasks: Vec<_> = (0..8u64)
        .map(|t| {
            let broker = broker.clone();
            tokio::spawn(async move {
                for n in 0..1_000u64 {
                    let u = user(&format!("t{t}-u{}", n % 50));
                    publish(&broker, &u, event(n, 200, None)).await;
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("publisher panicked");
    }
    let stats = broker.stats();
    assert!(stats.history_bytes <= BUDGET as u64, "{stats:?}");
    assert_eq!(stats.history_events + stats.history_trimmed, 8_000);
}

/// An id is recognised for the dedupe window after acceptance, even when its event was
/// trimmed from history by the per-user count; a millisecond later it is not.
#[tokio::test(start_paused = true)]
async fn the_dedupe_window_outlives_history_to_the_millisecond() {
    let window = Duration::from_secs(60);
    let broker = InMemoryBroker::new(HistoryConfig {
        max_events_per_user: 2,
        dedupe_window: window,
        ..HistoryConfig::default()
    });
    let alice = user("alice");
    let first = broker
        .publish(&alice, event(0, 100, Some(id("retry-me"))))
        .await
        .expect("accepted");
    for n in 1..=3 {
        publish(&broker, &alice, event(n, 100, None)).await;
    }
    assert_eq!(held(&broker, &alice).await, vec![3, 4], "trimmed by count");

    tokio::time::advance(window - Duration::from_millis(1)).await;
    let again = broker
        .publish(&alice, event(0, 100, Some(id("retry-me"))))
        .await
        .expect("answered");
    assert!(again.duplicate && again.seq == first.seq, "{again:?}");
    assert_eq!(
        broker
            .publish(&alice, event(9, 100, Some(id("retry-me"))))
            .await,
        Err(BrokerError::Conflict {
            event_id: id("retry-me"),
            seq: first.seq
        })
    );

    tokio::time::advance(Duration::from_millis(2)).await;
    assert_eq!(
        broker
            .lookup(&alice, &id("retry-me"))
            .await
            .expect("lookup"),
        None
    );
    let anew = broker
        .publish(&alice, event(9, 100, Some(id("retry-me"))))
        .await
        .expect("accepted anew");
    assert!(!anew.duplicate, "{anew:?}");
}

/// A window shorter than history's age: an id is recognised as long as its event is held.
#[tokio::test(start_paused = true)]
async fn an_id_is_recognised_while_its_event_is_held() {
    let broker = InMemoryBroker::new(HistoryConfig {
        max_age: Duration::from_secs(600),
        dedupe_window: Duration::from_secs(1),
        ..HistoryConfig::default()
    });
    let alice = user("alice");
    let first = broker
        .publish(&alice, event(0, 100, Some(id("held"))))
        .await
        .expect("accepted");
    tokio::time::advance(Duration::from_secs(300)).await;
    broker.sweep();
    let found = broker.lookup(&alice, &id("held")).await.expect("lookup");
    assert_eq!(found.map(|a| a.seq), Some(first.seq));
    tokio::time::advance(Duration::from_secs(301)).await;
    broker.sweep();
    assert_eq!(
        broker.lookup(&alice, &id("held")).await.expect("lookup"),
        None
    );
    assert_eq!(broker.stats().users, 0, "an expired stream is forgotten");
}

/// Forgotten ids and trimmed events both leave the accounting: a quiet node returns to
/// zero bytes, and a stream kept only by its ids is dropped once they expire.
#[tokio::test(start_paused = true)]
async fn ids_are_counted_against_the_budget_and_expire() {
    let broker = InMemoryBroker::new(HistoryConfig {
        max_events_per_user: 1,
        max_age: Duration::from_secs(10),
        dedupe_window: Duration::from_secs(30),
        ..HistoryConfig::default()
    });
    let alice = user("alice");
    for n in 0..10 {
        publish(&broker, &alice, event(n, 100, None)).await;
    }
    let stats = broker.stats();
    assert_eq!((stats.history_events, stats.dedupe_ids), (1, 10));
    assert!(stats.history_bytes as usize >= 10 * ENTRY_OVERHEAD_BYTES + STREAM_OVERHEAD_BYTES);
    tokio::time::advance(Duration::from_secs(11)).await;
    broker.sweep();
    let stats = broker.stats();
    assert_eq!(
        (stats.history_events, stats.dedupe_ids, stats.users),
        (0, 10, 1)
    );
    tokio::time::advance(Duration::from_secs(20)).await;
    broker.sweep();
    let stats = broker.stats();
    assert_eq!(
        (stats.history_bytes, stats.dedupe_ids, stats.users),
        (0, 0, 0)
    );
}
