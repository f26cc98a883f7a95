//! `get_stats` after a scripted scenario: every counter has the exact value the script
//! implies.

mod support;

use std::sync::Arc;

use agentwire_manager::{
    Accepted, Broker, BrokerError, ConnectError, ConnectOptions, EmitError, History, ManagerConfig,
    ManagerStats, NewEvent, Subscriber, UnifiedWebSocketManager,
};
use agentwire_protocol::{
    AgentStarted, AgentThinking, CloseCode, Event, EventId, EventType, Seq, UserId,
};
use async_trait::async_trait;
use support::*;

fn by_type(counts: &[(EventType, u64)]) -> [u64; EventType::ALL.len()] {
    let mut out = [0; EventType::ALL.len()];
    for (ty, n) in counts {
        let i = EventType::ALL
            .iter()
            .position(|t| t == ty)
            .expect("known type");
        out[i] = *n;
    }
    out
}

#[tokio::test(start_paused = true)]
async fn counters_after_a_scripted_scenario() {
    let m = manager(ManagerConfig {
        max_connections_per_user: 2,
        max_connections: 4,
        ..ManagerConfig::default()
    });
    let (alice, bob, carol) = (user("alice"), user("bob"), user("carol"));
    assert_eq!(m.get_stats(), ManagerStats::default());

    let mut a1 = connect(&m, &alice, ConnectOptions::default()).await;
    let mut b1 = connect(&m, &bob, ConnectOptions::default()).await;
    settle().await;

    let run = Some("r1".parse().expect("run id"));
    m.emit_critical_event(
        &alice,
        Event::new(None, run.clone(), AgentStarted::default()),
    )
    .await
    .expect("emit");
    m.emit_critical_event(
        &alice,
        Event::new(
            None,
            run,
            AgentThinking {
                thought: "hm".into(),
                step: Some(1),
                extra: Default::default(),
            },
        ),
    )
    .await
    .expect("emit");
    emit(&m, &bob, 1).await;
    a1.until_seq(2).await;
    b1.until_seq(1).await;

    // Two more of alice: the second evicts a1. Each replays alice's 2 events.
    let mut a2 = connect(&m, &alice, ConnectOptions::default()).await;
    a2.until_seq(2).await;
    let mut a3 = connect(&m, &alice, ConnectOptions::default()).await;
    a3.until_seq(2).await;
    assert_eq!(a1.until_closed().await, CloseCode::Replaced);
    settle().await;

    // A prepared event published twice is one event.
    let prepared = m
        .prepare_event(&bob, &custom(&bob, 2), None)
        .expect("prepare");
    let first = m.emit_prepared(&prepared).await.expect("emit");
    let again = m.emit_prepared(&prepared).await.expect("emit");
    assert!(!first.duplicate && again.duplicate);
    assert_eq!((first.seq, again.seq), (Seq(2), Seq(2)));
    emit(&m, &alice, 3).await;
    b1.until_seq(2).await;
    a2.until_seq(3).await;
    a3.until_seq(3).await;

    // Invalid events are refused before the broker and are not emits.
    let invalid = m
        .emit_critical_event(&alice, Event::new(None, None, AgentStarted::default()))
        .await;
    assert!(matches!(invalid, Err(EmitError::Invalid(_))), "{invalid:?}");

    // The node holds 3; a fourth fits, a fifth does not.
    let _c1 = connect(&m, &carol, ConnectOptions::default()).await;
    let refused = m
        .connect_user(user("dave"), ConnectOptions::default())
        .await;
    assert!(matches!(refused, Err(ConnectError::NodeFull { limit: 4 })));

    // Acks only move forward; what waits for the writer is visible per connection.
    a3.conn.ack(Seq(3));
    a3.conn.ack(Seq(1));
    emit(&m, &alice, 4).await;
    let infos = m.connections_of(&alice);
    assert_eq!(infos.len(), 2);
    let info = infos
        .iter()
        .find(|i| &i.connection_id == a3.conn.id())
        .expect("a3 is listed");
    assert_eq!((info.acked_seq, info.queued_frames), (Seq(3), 1));
    assert!(info.queued_bytes > 0);
    // The node's totals are the sum of what waits in every connection's queue.
    let waiting = |m: &UnifiedWebSocketManager| {
        [&alice, &bob, &carol]
            .into_iter()
            .flat_map(|u| m.connections_of(u))
            .fold((0u64, 0u64), |(f, b), i| {
                (f + i.queued_frames as u64, b + i.queued_bytes as u64)
            })
    };
    let stats = m.get_stats();
    assert!(stats.queued_frames >= 2, "{stats:?}");
    assert_eq!((stats.queued_frames, stats.queued_bytes), waiting(&m));
    a3.until_seq(4).await;
    assert_eq!(m.connections_of(&alice)[1].queued_frames, 0);

    a2.conn.disconnect();
    a2.conn.disconnect();
    drop(a2);
    settle().await;

    let stats = m.get_stats();
    let mut want = ManagerStats::default();
    want.connections = 3;
    want.users = 3;
    want.max_connections_of_a_user = 1;
    want.connections_opened = 5;
    want.connections_closed = 2;
    want.events_emitted = 6;
    want.events_emitted_by_type = by_type(&[
        (EventType::AgentStarted, 1),
        (EventType::AgentThinking, 1),
        (EventType::Custom, 4),
    ]);
    // Live: alice's 2 to a1, bob's 1 then 1 to b1, alice's 3rd and 4th to a2 and a3.
    want.events_delivered = 2 + 1 + 1 + 2 + 2;
    want.events_replayed = 2 + 2;
    want.events_deduplicated = 1;
    want.evictions = 1;
    want.rejections_node_full = 1;
    want.history_events = 6;
    want.history_bytes = stats.history_bytes;
    want.history_users = 3;
    want.dedupe_ids = 6;
    // a3's acks gave alice a delivery receipt.
    want.receipt_users = 1;
    (want.queued_frames, want.queued_bytes) = waiting(&m);
    assert!(stats.history_bytes > 0);
    assert_eq!(stats, want);
}

/// A broker that is down.
#[derive(Debug)]
struct Down;

#[async_trait]
impl Broker for Down {
    async fn publish(&self, _: &UserId, _: NewEvent) -> Result<Accepted, BrokerError> {
        Err(BrokerError::Unavailable("down".into()))
    }
    async fn subscribe(&self, _: &UserId, _: Arc<dyn Subscriber>) -> Result<(), BrokerError> {
        Err(BrokerError::Unavailable("down".into()))
    }
    async fn unsubscribe(&self, _: &UserId, _: &Arc<dyn Subscriber>) -> Result<(), BrokerError> {
        Ok(())
    }
    async fn history(&self, _: &UserId, _: Seq, _: usize) -> Result<History, BrokerError> {
        Err(BrokerError::Unavailable("down".into()))
    }
    async fn lookup(&self, _: &UserId, _: &EventId) -> Result<Option<Accepted>, BrokerError> {
        Err(BrokerError::Unavailable("down".into()))
    }
}

#[tokio::test(start_paused = true)]
async fn broker_failures_are_counted_and_leave_nothing_behind() {
    let m = UnifiedWebSocketManager::new(ManagerConfig::default(), Arc::new(Down));
    let u = user("erin");
    let err = m
        .emit_critical_event(&u, custom(&u, 1))
        .await
        .expect_err("broker is down");
    assert!(err.is_transient(), "{err:?}");
    let err = m
        .connect_user(u.clone(), ConnectOptions::default())
        .await
        .expect_err("broker is down");
    assert_eq!(err.close_code(), CloseCode::InternalError);
    let stats = m.get_stats();
    assert_eq!(stats.emit_failures, 1);
    assert_eq!(stats.events_emitted, 0);
    assert_eq!((stats.connections, stats.users), (0, 0));
    assert_eq!((stats.connections_opened, stats.connections_closed), (1, 1));
}

/// The broker's run state shows in `get_stats`: runs held and in progress, bytes, and
/// refusals by kind.
#[tokio::test(start_paused = true)]
async fn run_state_shows_in_the_stats() {
    use agentwire_manager::{PublisherId, RunLimits, run_base_bytes};
    use agentwire_protocol::{AgentCompleted, RunViolation};
    let m = UnifiedWebSocketManager::new(
        ManagerConfig::default(),
        Arc::new(
            agentwire_manager::InMemoryBroker::default().with_run_limits(RunLimits {
                max_runs_per_owner: 1,
                ..RunLimits::default()
            }),
        ),
    );
    let alice = user("alice");
    let key = PublisherId::new("key:1").expect("publisher");
    let emit = |run: &str, data: agentwire_protocol::EventData| {
        let event = Event::new(None, Some(run.parse().expect("run")), data);
        let prepared = m
            .prepare_event(&alice, &event, None)
            .expect("valid")
            .guarded(key.clone());
        let m = m.clone();
        async move { m.emit_prepared(&prepared).await }
    };
    emit("r1", AgentStarted::default().into())
        .await
        .expect("started");
    let refused = emit("r2", AgentStarted::default().into()).await;
    assert_eq!(
        refused.map(|_| ()),
        Err(EmitError::TooManyRuns(
            agentwire_manager::RunLimit::OwnerRuns
        ))
    );
    let thinking = AgentThinking {
        thought: "?".into(),
        ..Default::default()
    };
    let not_started = emit("r3", thinking.into()).await;
    assert!(matches!(
        not_started,
        Err(EmitError::Violation(RunViolation::NotStarted { .. }))
    ));
    let runs = m.get_stats().runs;
    assert_eq!((runs.runs, runs.live_runs), (1, 1));
    assert_eq!(
        runs.bytes,
        run_base_bytes(&alice, &"r1".parse().expect("run")) as u64
    );
    assert_eq!(runs.refused_at(agentwire_manager::RunLimit::OwnerRuns), 1);
    assert_eq!(
        runs.violations_of(&RunViolation::NotStarted {
            event: EventType::AgentThinking
        }),
        1
    );
    emit("r1", AgentCompleted::default().into())
        .await
        .expect("ended");
    let runs = m.get_stats().runs;
    assert_eq!((runs.runs, runs.live_runs), (1, 0));
}

#[tokio::test(start_paused = true)]
async fn closing_connections_stay_registered_but_are_not_listed_as_open() {
    let m = manager(ManagerConfig::default());
    let (alice, bob) = (user("alice"), user("bob"));
    let a1 = connect(&m, &alice, ConnectOptions::default()).await;
    let a2 = connect(&m, &alice, ConnectOptions::default()).await;
    let b1 = connect(&m, &bob, ConnectOptions::default()).await;
    assert_eq!(m.open_connections_of(&alice).len(), 2);

    assert_eq!(m.disconnect_user(&alice, CloseCode::GoingAway), 2);
    // Both are closing, still registered until their sessions let go of them.
    assert_eq!(a1.conn.closing(), Some(CloseCode::GoingAway));
    assert_eq!(m.connection_count(), 3);
    let registered: Vec<_> = m
        .connections_of(&alice)
        .into_iter()
        .map(|i| i.connection_id)
        .collect();
    assert_eq!(registered, vec![a1.conn.id().clone(), a2.conn.id().clone()]);
    assert!(
        m.open_connections_of(&alice).is_empty(),
        "{:?}",
        m.open_connections_of(&alice)
    );
    let open: Vec<_> = m
        .open_connections_of(&bob)
        .into_iter()
        .map(|i| i.connection_id)
        .collect();
    assert_eq!(open, vec![b1.conn.id().clone()]);
}
