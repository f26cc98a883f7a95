//! End to end: isolation and completeness. 200 users, each with up to 3 connections that
//! come and go at random while events are emitted for every user at once: each connection
//! receives exactly its user's events, every one of them, in `seq` order, and nothing else.

use std::time::Duration;

use agentwire::manager::UnifiedWebSocketManager;
use agentwire_e2e::{Client, TestServer, WAIT, custom, custom_value, user};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const USERS: u64 = 200;
const OPS_PER_USER: usize = 12;
/// A user's events carry `user_index * STRIDE + n`, so any event names its user.
const STRIDE: u64 = 1_000_000;

/// Reads a connection's stream until `last`, checking that it is exactly this user's
/// events 1..=last in order (every connection starts from the beginning of history).
async fn drain_and_check(client: &mut Client, index: u64, from: u64, last: u64) -> u64 {
    let mut next = from + 1;
    while next <= last {
        let e = client.event().await;
        let value = custom_value(&e).expect("custom event");
        assert_eq!(value / STRIDE, index, "an event of another user arrived");
        assert_eq!(e.seq.get(), next, "user {index}: out of order or missing");
        assert_eq!(
            value % STRIDE,
            next,
            "user {index}: wrong payload for its seq"
        );
        next += 1;
    }
    last
}

async fn one_user(server: &TestServer, manager: UnifiedWebSocketManager, index: u64) -> usize {
    let name = format!("user-{index}");
    let id = user(&name);
    let mut rng = StdRng::seed_from_u64(0xA6E7 ^ index);
    // (client, newest seq it was checked up to)
    let mut open: Vec<(Client, u64)> = Vec::new();
    let mut emitted = 0u64;
    let mut connections = 0;
    for _ in 0..OPS_PER_USER {
        match rng.random_range(0..10) {
            0..=2 if open.len() < 3 => {
                open.push((server.connect(&name).await, 0));
                connections += 1;
            }
            3 | 4 if !open.is_empty() => {
                let i = rng.random_range(0..open.len());
                let (mut c, seen) = open.swap_remove(i);
                drain_and_check(&mut c, index, seen, emitted).await;
                c.close().await;
            }
            _ => {
                for _ in 0..rng.random_range(1..4) {
                    emitted += 1;
                    let a = manager
                        .emit_critical_event(&id, custom(index * STRIDE + emitted))
                        .await
                        .expect("emit");
                    assert_eq!(a.seq.get(), emitted);
                }
            }
        }
        if rng.random_bool(0.3) {
            tokio::task::yield_now().await;
        }
    }
    for (c, seen) in &mut open {
        *seen = drain_and_check(c, index, *seen, emitted).await;
    }
    // Nothing else is pending on any connection.
    for (c, _) in &mut open {
        assert_eq!(c.recv_within(Duration::from_millis(50)).await, None);
    }
    for (c, _) in open {
        c.close().await;
    }
    connections
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_connection_gets_exactly_its_users_events_in_order() {
    let server = std::sync::Arc::new(TestServer::start().await);
    let mut tasks = Vec::new();
    for index in 0..USERS {
        let server = server.clone();
        let manager = server.manager().clone();
        tasks.push(tokio::spawn(async move {
            one_user(&server, manager, index).await
        }));
    }
    let mut connections = 0;
    for t in tasks {
        connections += t.await.expect("user task");
    }
    assert!(
        connections > USERS as usize,
        "the scenario connected too little"
    );
    server
        .wait_until("every connection is gone", WAIT, |s| {
            s.manager().connection_count() == 0
        })
        .await;
    let stats = server.manager().get_stats();
    assert_eq!(stats.users, 0);
    assert_eq!(stats.connections_opened, connections as u64);
    assert_eq!(stats.connections_closed, connections as u64);
    assert_eq!(stats.slow_consumer_closes, 0);
    assert_eq!(stats.evictions, 0);
}
