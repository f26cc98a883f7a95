//! Delivery receipts: `delivered_seq` moves when the writer reports a flushed batch,
//! `acked_seq` with acks — never past what the connection was sent — both outlive the
//! connection, and the receipts held are bounded.

mod support;

use agentwire_manager::{ConnectOptions, HeartbeatPolicy, ManagerConfig};
use agentwire_protocol::Seq;
use support::*;

#[tokio::test(start_paused = true)]
async fn receipts_follow_writes_and_acks_and_outlive_the_connection() {
    let m = manager(ManagerConfig::default());
    let u = user("alice");
    assert_eq!(m.receipt(&u).delivered_seq, Seq::ZERO);
    let mut c = connect(&m, &u, ConnectOptions::default()).await;
    for n in 1..=3 {
        emit(&m, &u, n).await;
    }
    c.until_seq(3).await;
    // Taken by the writer, not yet reported written.
    assert_eq!(m.receipt(&u).delivered_seq, Seq::ZERO);
    c.conn.written();
    let r = m.receipt(&u);
    assert_eq!((r.delivered_seq, r.acked_seq), (Seq(3), Seq::ZERO));
    assert_eq!(r.epoch, c.conn.epoch());
    c.conn.ack(Seq(2));
    c.conn.ack(Seq(50));
    assert_eq!(
        m.receipt(&u).acked_seq,
        Seq(3),
        "an ack beyond what was sent"
    );
    drop(c);
    settle().await;
    assert_eq!(
        m.receipt(&u).acked_seq,
        Seq(3),
        "forgotten with the connection"
    );
}

#[tokio::test(start_paused = true)]
async fn receipts_are_bounded() {
    let m = manager(ManagerConfig {
        max_receipt_users: 16,
        ..ManagerConfig::default()
    });
    for i in 0..64 {
        let u = user(&format!("u{i}"));
        let c = connect(&m, &u, ConnectOptions::default()).await;
        emit(&m, &u, 1).await;
        c.conn.ack(Seq(1));
    }
    let stats = m.get_stats();
    assert!(stats.receipt_users <= 16, "{}", stats.receipt_users);
    assert_eq!(stats.receipt_users + stats.receipts_evicted, 64);
}

/// A user's receipt after `emit` and an ack of it, on a connection the caller keeps.
async fn acked_once(m: &agentwire_manager::UnifiedWebSocketManager, name: &str) -> Client {
    let u = user(name);
    let mut c = connect(m, &u, ConnectOptions::default()).await;
    emit(m, &u, 1).await;
    c.until_seq(1).await;
    c.conn.ack(Seq(1));
    assert_eq!(m.receipt(&u).acked_seq, Seq(1), "{name}");
    c
}

#[tokio::test(start_paused = true)]
async fn receipts_of_users_who_left_are_forgotten_after_the_ttl() {
    let ttl = std::time::Duration::from_secs(60);
    let m = manager(ManagerConfig {
        receipt_ttl: ttl,
        // No pings to answer: the sweeper must not close the connection that stays.
        heartbeat: HeartbeatPolicy {
            interval: std::time::Duration::from_secs(24 * 3600),
            timeout: std::time::Duration::from_secs(24 * 3600),
        },
        ..ManagerConfig::default()
    });
    let stays = acked_once(&m, "stays").await;
    drop(acked_once(&m, "left").await);
    let waited_on = acked_once(&m, "waited-on").await;
    let signal = m.receipt_changes(&user("waited-on"));
    drop(waited_on);
    settle().await;

    tokio::time::advance(ttl / 2).await;
    drop(acked_once(&m, "left-later").await);
    m.sweep();
    assert_eq!(m.get_stats().receipts_expired, 0, "nothing is old yet");
    assert_eq!(m.receipt(&user("left")).acked_seq, Seq(1));

    tokio::time::advance(ttl / 2).await;
    m.sweep();
    assert_eq!(
        m.receipt(&user("left")).epoch,
        None,
        "past the ttl, no connection"
    );
    assert_eq!(m.receipt(&user("left")).acked_seq, Seq::ZERO);
    assert_eq!(
        m.receipt(&user("stays")).acked_seq,
        Seq(1),
        "its user is connected"
    );
    assert_eq!(
        m.receipt(&user("waited-on")).acked_seq,
        Seq(1),
        "a caller waits on it"
    );
    assert_eq!(
        m.receipt(&user("left-later")).acked_seq,
        Seq(1),
        "moved ttl/2 ago"
    );
    let stats = m.get_stats();
    assert_eq!(stats.receipts_expired, 1);
    assert_eq!(stats.receipt_users, 3);

    drop(signal);
    tokio::time::advance(ttl).await;
    m.sweep();
    assert_eq!(
        m.receipt(&user("waited-on")).epoch,
        None,
        "no one waits any more"
    );
    assert_eq!(m.receipt(&user("left-later")).epoch, None);
    assert_eq!(m.receipt(&user("stays")).acked_seq, Seq(1));
    assert_eq!(m.get_stats().receipts_expired, 3);
    drop(stays);
}

#[tokio::test(start_paused = true)]
async fn a_write_after_the_connections_receipt_was_evicted_is_recorded_in_a_new_one() {
    let m = manager(ManagerConfig {
        max_receipt_users: 16,
        ..ManagerConfig::default()
    });
    let u = user("alice");
    let mut c = connect(&m, &u, ConnectOptions::default()).await;
    emit(&m, &u, 1).await;
    c.until_seq(1).await;
    c.conn.written();
    assert_eq!(m.receipt(&u).delivered_seq, Seq(1));
    // Newer receipts of other users push alice's out (the least recently moved goes).
    tokio::time::advance(std::time::Duration::from_millis(1)).await;
    let mut others = 0;
    while m.receipt(&u).epoch.is_some() {
        drop(m.receipt_changes(&user(&format!("other-{others}"))));
        others += 1;
        assert!(others < 10_000, "alice's receipt was never evicted");
    }
    emit(&m, &u, 2).await;
    c.until_seq(2).await;
    c.conn.written();
    let r = m.receipt(&u);
    assert_eq!(
        (r.delivered_seq, r.epoch),
        (Seq(2), c.conn.epoch()),
        "the connection kept the evicted receipt: its write must reach the user's new one"
    );
    c.conn.ack(Seq(2));
    assert_eq!(m.receipt(&u).acked_seq, Seq(2));
}
