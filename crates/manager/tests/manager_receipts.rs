//! Delivery receipts: `delivered_seq` moves when the writer reports a flushed batch,
//! `acked_seq` with acks — never past what the connection was sent — both outlive the
//! connection, and the receipts held are bounded.

mod support;

use agentwire_manager::{ConnectOptions, ManagerConfig};
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
