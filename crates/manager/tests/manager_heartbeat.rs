//! The heartbeat policy: the sweeper closes connections silent past `interval + timeout`
//! with 1001, spares those that were heard from, and counts what it closed. Paused clock.

mod support;

use std::time::Duration;

use agentwire_manager::{ConnectOptions, HeartbeatPolicy, ManagerConfig};
use agentwire_protocol::CloseCode;
use support::*;

fn config() -> ManagerConfig {
    ManagerConfig {
        heartbeat: HeartbeatPolicy {
            interval: Duration::from_secs(30),
            timeout: Duration::from_secs(10),
        },
        sweep_interval: Duration::from_secs(5),
        ..ManagerConfig::default()
    }
}

#[tokio::test(start_paused = true)]
async fn sweep_closes_silent_connections_and_spares_touched_ones() {
    let m = manager(config());
    let u = user("alice");
    let mut silent = connect(&m, &u, ConnectOptions::default()).await;
    let mut chatty = connect(&m, &u, ConnectOptions::default()).await;
    let mut other = connect(&m, &user("bob"), ConnectOptions::default()).await;

    // Exactly at the deadline nobody is dead yet.
    tokio::time::advance(Duration::from_secs(35)).await;
    chatty.conn.touch();
    tokio::time::advance(Duration::from_secs(5)).await;
    assert_eq!(m.sweep(), 0);
    assert_eq!(silent.conn.closing(), None);

    tokio::time::advance(Duration::from_secs(1)).await;
    other.conn.touch();
    assert_eq!(m.sweep(), 1);
    assert_eq!(silent.until_closed().await, CloseCode::GoingAway);
    assert_eq!(chatty.conn.closing(), None);
    assert_eq!(other.conn.closing(), None);
    assert!(chatty.conn.silent_for() <= Duration::from_secs(6));
    assert_eq!(m.get_stats().heartbeat_timeouts, 1);

    // Sweeping again does not count the same connection twice.
    assert_eq!(m.sweep(), 0);
    assert_eq!(m.get_stats().heartbeat_timeouts, 1);

    // The survivors still receive.
    emit(&m, &u, 1).await;
    chatty.until_seq(1).await;
    other.drain_ready().await;
    assert_eq!(other.closed, None);
}

#[tokio::test(start_paused = true)]
async fn background_sweeper_closes_silent_connections_as_time_passes() {
    let m = manager(config());
    let mut silent = connect(&m, &user("carol"), ConnectOptions::default()).await;
    let mut alive = connect(&m, &user("dave"), ConnectOptions::default()).await;
    settle().await;
    // The peer of `alive` answers every ping; `silent`'s never does.
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_secs(5)).await;
        alive.conn.touch();
    }
    // Closed by the sweeper task during those 50 s, not by anything the test did.
    assert_eq!(silent.conn.closing(), Some(CloseCode::GoingAway));
    assert_eq!(silent.until_closed().await, CloseCode::GoingAway);
    alive.drain_ready().await;
    assert_eq!(alive.closed, None);
    assert_eq!(alive.conn.closing(), None);
    assert_eq!(m.get_stats().heartbeat_timeouts, 1);

    // The server drops a closed connection; the registry forgets it.
    drop(silent);
    assert_eq!(m.connection_count(), 1);
}

#[tokio::test(start_paused = true)]
async fn heartbeat_timed_out_closes_and_counts_once() {
    let m = manager(config());
    let mut c = connect(&m, &user("erin"), ConnectOptions::default()).await;
    c.conn.heartbeat_timed_out();
    c.conn.heartbeat_timed_out();
    assert_eq!(c.until_closed().await, CloseCode::GoingAway);
    assert_eq!(m.get_stats().heartbeat_timeouts, 1);
    // The sweeper does not count a connection that is already closing.
    tokio::time::advance(Duration::from_secs(60)).await;
    assert_eq!(m.sweep(), 0);
    assert_eq!(m.get_stats().heartbeat_timeouts, 1);
}
