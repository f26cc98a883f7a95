//! The Redis broker when Redis fails: a killed pub/sub connection is made again, every
//! subscription restored and every subscribed user resynced; a Redis restarted empty
//! gives a new epoch, so a resuming client gets `replay_gap`; a paused Redis makes calls
//! time out, and work resumes when it goes on. Each test runs its own `redis-server`.

mod support;

use std::sync::Arc;
use std::time::Duration;

use agentwire_manager::{
    Broker, BrokerError, ConnectOptions, ManagerConfig, NewEvent, Outbound, Resume, Subscriber,
    UnifiedWebSocketManager,
};
use agentwire_protocol::{Seq, ServerFrame};
use agentwire_redis::testing::{self, RedisServer};
use support::{RedisHarness, custom_event, recorder_of, user};

fn event(n: u64) -> NewEvent {
    custom_event(n, None)
}

/// Waits (at most 15 s) until the broker reports healthy again.
async fn until_healthy(broker: &impl Broker) {
    let healthy = async {
        while broker.health().await.is_err() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(15), healthy)
        .await
        .expect("the broker became healthy again within 15 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_pubsub_connection_is_resubscribed_and_resyncs_every_user() {
    let Some(server) = testing::require("pub/sub kill test", RedisServer::start()) else {
        return;
    };
    let harness = RedisHarness::standalone(&server.url(), "pubsub-kill");
    let broker = harness.connect(harness.config()).await;
    let users = [user("alice"), user("bob{1}")];
    let rec = recorder_of(&broker, &users[0]).await;
    broker
        .subscribe(&users[1], rec.clone() as Arc<dyn Subscriber>)
        .await
        .expect("subscribe");
    for n in 0..3 {
        broker.publish(&users[0], event(n)).await.expect("publish");
    }
    rec.wait_until("first deliveries", |r| r.seqs() == [1, 2, 3])
        .await;

    let killed = server
        .cli(&["CLIENT", "KILL", "TYPE", "pubsub"])
        .expect("CLIENT KILL TYPE pubsub");
    assert_eq!(killed.trim(), "1", "one pub/sub connection was killed");
    rec.wait_until("a resync of both users", |r| {
        let resyncs = r.resyncs();
        users.iter().all(|u| resyncs.contains(u))
    })
    .await;
    let m = broker.metrics();
    assert!(m.reconnects >= 1, "{m:?}");
    assert!(m.resyncs >= 2, "{m:?}");
    assert_eq!(m.subscribed_channels, 2, "both channels subscribed again");

    // Subscribed again: new events arrive, and history holds the whole stream.
    broker.publish(&users[0], event(3)).await.expect("publish");
    rec.wait_until("delivery after the resync", |r| r.seqs().contains(&4))
        .await;
    let h = broker
        .history(&users[0], Seq::ZERO, 100)
        .await
        .expect("history");
    assert_eq!(h.last_seq, Seq(4));
    assert_eq!(h.events.len(), 4);
    until_healthy(&broker).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restarted_empty_gives_a_new_epoch_and_resuming_clients_a_replay_gap() {
    let Some(mut server) = testing::require("Redis restart test", RedisServer::start()) else {
        return;
    };
    let harness = RedisHarness::standalone(&server.url(), "restart");
    let broker = Arc::new(harness.connect(harness.config()).await);
    let alice = user("alice");
    let rec = recorder_of(&broker, &alice).await;
    let mut before = None;
    for n in 0..5 {
        before = Some(broker.publish(&alice, event(n)).await.expect("publish"));
    }
    let before = before.expect("published");
    assert_eq!(before.seq, Seq(5));

    server.restart_empty().expect("restart redis-server empty");
    until_healthy(&*broker).await;
    rec.wait_until("a resync after the restart", |r| {
        r.resyncs().contains(&alice)
    })
    .await;

    let h = broker.history(&alice, Seq(5), 100).await.expect("history");
    assert_ne!(
        h.epoch, before.epoch,
        "an empty Redis must give a new epoch"
    );
    assert_eq!(h.last_seq, Seq::ZERO, "the new stream starts empty");
    let first = broker.publish(&alice, event(5)).await.expect("publish");
    assert_eq!((first.seq, &first.epoch), (Seq(1), &h.epoch));
    assert!(broker.metrics().epochs_created >= 2);

    // A client resuming with the old epoch and seq 5 is told what it cannot have.
    let manager = UnifiedWebSocketManager::new(ManagerConfig::default(), broker.clone());
    let options = ConnectOptions {
        resume: Resume::After {
            last_seq: Seq(5),
            epoch: before.epoch.clone(),
        },
    };
    let conn = manager
        .connect_user(alice.clone(), options)
        .await
        .expect("connect");
    let mut frames = Vec::new();
    while frames.len() < 3 {
        let next = tokio::time::timeout(Duration::from_secs(10), conn.next_frames(&mut frames, 16))
            .await
            .expect("frames within 10 s");
        assert_eq!(next, Outbound::Frames);
    }
    let decoded: Vec<ServerFrame> = frames
        .iter()
        .map(|f| ServerFrame::decode(f).expect("frame decodes"))
        .collect();
    match &decoded[0] {
        ServerFrame::ConnectionEstablished(c) => {
            assert_eq!(c.epoch, h.epoch);
            assert!(!c.resumed);
        }
        other => panic!("expected connection_established, got {other:?}"),
    }
    match &decoded[1] {
        ServerFrame::ReplayGap(g) => assert_eq!((g.from_seq, g.to_seq), (Seq(1), Seq(5))),
        other => panic!("expected replay_gap, got {other:?}"),
    }
    match &decoded[2] {
        ServerFrame::Event(e) => assert_eq!(e.seq, Seq(1)),
        other => panic!("expected the new stream's first event, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_redis_times_calls_out_and_work_resumes_after_it() {
    let Some(server) = testing::require("Redis pause test", RedisServer::start()) else {
        return;
    };
    let harness = RedisHarness::standalone(&server.url(), "pause");
    let broker = harness
        .connect(harness.config().command_timeout(Duration::from_millis(300)))
        .await;
    let alice = user("alice");
    broker.publish(&alice, event(0)).await.expect("publish");

    server.pause().expect("SIGSTOP");
    let during = broker.publish(&alice, event(1)).await;
    let health = broker.health().await;
    server.resume().expect("SIGCONT");
    match during {
        Err(e @ BrokerError::Timeout(_)) => assert!(e.is_transient()),
        other => panic!("a publish to a paused Redis must time out, got {other:?}"),
    }
    assert!(health.is_err(), "a paused Redis is not healthy");
    assert!(broker.metrics().timeouts >= 2);

    until_healthy(&broker).await;
    let after = broker
        .publish(&alice, event(2))
        .await
        .expect("publish after SIGCONT");
    // The timed-out publish may or may not have been applied once Redis went on.
    assert!(after.seq == Seq(2) || after.seq == Seq(3), "{after:?}");
    let h = broker
        .history(&alice, Seq::ZERO, 10)
        .await
        .expect("history");
    assert_eq!(h.last_seq, after.seq);
}
