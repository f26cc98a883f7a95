//! `emit_prepared_many`: one broker call per user of a batch, answers in the batch's
//! order, and per user all or nothing under a refusal (issue 12 §1.4).

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use agentwire_manager::conformance::{Fault, FaultyBroker};
use agentwire_manager::{
    Accepted, BatchError, Broker, BrokerError, EmitError, History, InMemoryBroker, ManagerConfig,
    NewEvent, PreparedEvent, Subscriber, UnifiedWebSocketManager,
};
use agentwire_protocol::{EventId, Seq, UserId};
use async_trait::async_trait;
use support::*;

/// Counts the calls that reach the broker beneath.
#[derive(Debug, Default)]
struct Counting {
    inner: InMemoryBroker,
    publishes: AtomicU64,
    batches: AtomicU64,
}

#[async_trait]
impl Broker for Counting {
    async fn publish(&self, user: &UserId, event: NewEvent) -> Result<Accepted, BrokerError> {
        self.publishes.fetch_add(1, Ordering::Relaxed);
        self.inner.publish(user, event).await
    }

    async fn publish_many(
        &self,
        user: &UserId,
        events: Vec<NewEvent>,
    ) -> Result<Vec<Accepted>, BatchError> {
        self.batches.fetch_add(1, Ordering::Relaxed);
        self.inner.publish_many(user, events).await
    }

    async fn subscribe(
        &self,
        user: &UserId,
        subscriber: Arc<dyn Subscriber>,
    ) -> Result<(), BrokerError> {
        self.inner.subscribe(user, subscriber).await
    }

    async fn unsubscribe(
        &self,
        user: &UserId,
        subscriber: &Arc<dyn Subscriber>,
    ) -> Result<(), BrokerError> {
        self.inner.unsubscribe(user, subscriber).await
    }

    async fn history(
        &self,
        user: &UserId,
        after: Seq,
        limit: usize,
    ) -> Result<History, BrokerError> {
        self.inner.history(user, after, limit).await
    }

    async fn lookup(
        &self,
        user: &UserId,
        event_id: &EventId,
    ) -> Result<Option<Accepted>, BrokerError> {
        self.inner.lookup(user, event_id).await
    }
}

fn prepare(m: &UnifiedWebSocketManager, u: &UserId, n: u64, id: Option<&str>) -> PreparedEvent {
    m.prepare_event(u, &custom(u, n), id.map(|s| s.parse().expect("id")))
        .expect("valid event")
}

fn seqs_of(answers: &[Result<Accepted, EmitError>]) -> Vec<Option<u64>> {
    answers
        .iter()
        .map(|a| a.as_ref().ok().map(|a| a.seq.get()))
        .collect()
}

#[tokio::test(start_paused = true)]
async fn a_batch_costs_one_broker_call_per_user_and_answers_in_order() {
    let broker = Arc::new(Counting::default());
    let m = UnifiedWebSocketManager::new(ManagerConfig::default(), broker.clone());
    let (a, b, c) = (user("alice"), user("bob"), user("carol"));
    let mut conn = connect(&m, &a, Default::default()).await;
    let batch: Vec<PreparedEvent> = (0..12)
        .map(|n| {
            let u = [&a, &b, &c][n as usize % 3];
            prepare(&m, u, n, None)
        })
        .collect();
    let answers = m.emit_prepared_many(&batch).await;
    assert_eq!(
        (
            broker.batches.load(Ordering::Relaxed),
            broker.publishes.load(Ordering::Relaxed)
        ),
        (3, 0),
        "one publish_many per user, no single publishes"
    );
    let want: Vec<Option<u64>> = (0..12).map(|n| Some(n / 3 + 1)).collect();
    assert_eq!(seqs_of(&answers), want);
    for (answer, event) in answers.iter().zip(&batch) {
        let a = answer.as_ref().expect("accepted");
        assert_eq!(&a.event_id, event.event_id());
    }
    conn.until_seq(4).await;
    assert_eq!(conn.seqs(), range(1, 4));
    conn.assert_only_events_of(&a);
    assert_eq!(m.get_stats().events_emitted, 12);
}

/// A reused id refuses all of its user's events in the batch, naming the refused one;
/// other users' go through.
#[tokio::test(start_paused = true)]
async fn a_conflict_refuses_its_users_events_only() {
    let m = manager(ManagerConfig::default());
    let (a, b) = (user("alice"), user("bob"));
    let first = m
        .emit_prepared(&prepare(&m, &a, 1, Some("once")))
        .await
        .expect("accepted");
    let batch = vec![
        prepare(&m, &a, 2, None),
        prepare(&m, &b, 1, None),
        prepare(&m, &a, 99, Some("once")),
        prepare(&m, &b, 2, None),
    ];
    let answers = m.emit_prepared_many(&batch).await;
    assert_eq!(seqs_of(&answers), vec![None, Some(1), None, Some(2)]);
    // The refused event answers why; its user's other event names it.
    assert_eq!(
        answers[2].as_ref().err(),
        Some(&EmitError::Conflict {
            event_id: "once".parse().expect("id"),
            seq: first.seq
        })
    );
    assert_eq!(
        answers[0].as_ref().err(),
        Some(&EmitError::BatchRefused { index: 2 })
    );
    let h = m.history(&a, Seq::ZERO, 10).await.expect("history");
    assert_eq!(h.last_seq, Seq(1), "a refused batch stored something");
    let stats = m.get_stats();
    assert_eq!(
        (stats.event_id_conflicts, stats.emit_failures),
        (1, 2),
        "one refusal, two events not published"
    );
    // The same id with the same event is a retry.
    let again = m
        .emit_prepared_many(&[prepare(&m, &a, 1, Some("once"))])
        .await;
    assert!(matches!(&again[0], Ok(x) if x.duplicate && x.seq == first.seq));
}

/// A transient failure after part of a user's batch: what was accepted answers `Ok`, the
/// rest the error, and the same batch again completes it without duplicates.
#[tokio::test(start_paused = true)]
async fn a_transient_failure_answers_what_was_accepted() {
    let broker = Arc::new(FaultyBroker::new(InMemoryBroker::default(), |attempt| {
        (attempt == 2).then(|| Fault::Refuse(BrokerError::Unavailable("blip".into())))
    }));
    let m = UnifiedWebSocketManager::new(ManagerConfig::default(), broker);
    let a = user("alice");
    let batch: Vec<PreparedEvent> = (0..4).map(|n| prepare(&m, &a, n, None)).collect();
    let answers = m.emit_prepared_many(&batch).await;
    assert_eq!(seqs_of(&answers), vec![Some(1), Some(2), None, None]);
    assert!(answers[2].as_ref().is_err_and(EmitError::is_transient));
    let retried = m.emit_prepared_many(&batch).await;
    assert_eq!(seqs_of(&retried), vec![Some(1), Some(2), Some(3), Some(4)]);
    let dups: Vec<bool> = retried
        .iter()
        .map(|a| a.as_ref().is_ok_and(|a| a.duplicate))
        .collect();
    assert_eq!(dups, vec![true, true, false, false]);
}
