//! Connection limits: per user (evict the oldest, or reject), per node, idempotent
//! disconnects, and the slow-consumer policy.

mod support;

use agentwire_manager::{ConnectError, ConnectOptions, LimitPolicy, ManagerConfig, QueueLimits};
use agentwire_protocol::CloseCode;
use support::*;

#[tokio::test(start_paused = true)]
async fn fourth_connection_evicts_the_oldest_with_4003() {
    let m = manager(ManagerConfig::default());
    let u = user("alice");
    let mut oldest = connect(&m, &u, ConnectOptions::default()).await;
    let mut second = connect(&m, &u, ConnectOptions::default()).await;
    let mut third = connect(&m, &u, ConnectOptions::default()).await;
    settle().await;
    emit(&m, &u, 1).await;
    let mut fourth = connect(&m, &u, ConnectOptions::default()).await;

    // The evicted connection flushes what it was given, then closes with 4003.
    assert_eq!(oldest.until_closed().await, CloseCode::Replaced);
    assert_eq!(CloseCode::Replaced.code(), 4003);
    assert_eq!(oldest.seqs(), vec![1]);
    let stats = m.get_stats();
    assert_eq!(stats.evictions, 1);
    assert_eq!(stats.connections, 3);
    assert_eq!(stats.connections_opened, 4);
    assert_eq!(stats.connections_closed, 1);
    let ids: Vec<_> = m
        .connections_of(&u)
        .into_iter()
        .map(|c| c.connection_id)
        .collect();
    assert_eq!(
        ids,
        vec![
            second.conn.id().clone(),
            third.conn.id().clone(),
            fourth.conn.id().clone()
        ]
    );

    // The survivors keep receiving.
    emit(&m, &u, 2).await;
    for c in [&mut second, &mut third, &mut fourth] {
        c.until_seq(2).await;
        assert_eq!(c.seqs(), vec![1, 2]);
        assert_eq!(c.closed, None);
    }
    // Dropping the evicted connection later counts nothing twice.
    drop(oldest);
    let stats = m.get_stats();
    assert_eq!((stats.connections, stats.connections_closed), (3, 1));
}

#[tokio::test(start_paused = true)]
async fn reject_policy_refuses_with_4004_and_keeps_the_others() {
    let m = manager(ManagerConfig {
        limit_policy: LimitPolicy::Reject,
        ..ManagerConfig::default()
    });
    let u = user("bob");
    let mut kept = Vec::new();
    for _ in 0..3 {
        kept.push(connect(&m, &u, ConnectOptions::default()).await);
    }
    let err = m
        .connect_user(u.clone(), ConnectOptions::default())
        .await
        .expect_err("a fourth connection is refused");
    assert_eq!(err, ConnectError::UserLimit { limit: 3 });
    assert_eq!(err.close_code(), CloseCode::Rejected);
    assert_eq!(err.close_code().code(), 4004);
    let stats = m.get_stats();
    assert_eq!(stats.rejections_user_limit, 1);
    assert_eq!(
        (stats.connections, stats.connections_opened, stats.evictions),
        (3, 3, 0)
    );

    emit(&m, &u, 1).await;
    for c in &mut kept {
        c.until_seq(1).await;
        assert_eq!(c.closed, None);
    }
    // Room again once one leaves.
    kept.pop();
    connect(&m, &u, ConnectOptions::default()).await;
    assert_eq!(m.get_stats().rejections_user_limit, 1);
}

#[tokio::test(start_paused = true)]
async fn node_cap_refuses_with_1013() {
    let m = manager(ManagerConfig {
        max_connections: 4,
        ..ManagerConfig::default()
    });
    let mut held = Vec::new();
    for name in ["a", "b", "c", "d"] {
        held.push(connect(&m, &user(name), ConnectOptions::default()).await);
    }
    let err = m
        .connect_user(user("e"), ConnectOptions::default())
        .await
        .expect_err("the node is full");
    assert_eq!(err, ConnectError::NodeFull { limit: 4 });
    assert_eq!(err.close_code(), CloseCode::TryAgainLater);
    assert_eq!(err.close_code().code(), 1013);
    // A user below its own limit is refused too: the node cap comes first.
    let err = m.connect_user(user("a"), ConnectOptions::default()).await;
    assert!(matches!(err, Err(ConnectError::NodeFull { .. })), "{err:?}");
    let stats = m.get_stats();
    assert_eq!((stats.rejections_node_full, stats.connections), (2, 4));

    held.pop();
    let e = connect(&m, &user("e"), ConnectOptions::default()).await;
    assert_eq!(m.connection_count(), 4);
    drop(e);
    assert_eq!(m.connection_count(), 3);
}

#[tokio::test(start_paused = true)]
async fn disconnect_then_drop_counts_once() {
    let m = manager(ManagerConfig::default());
    let u = user("carol");
    let a = connect(&m, &u, ConnectOptions::default()).await;
    let b = connect(&m, &u, ConnectOptions::default()).await;
    a.conn.disconnect();
    a.conn.disconnect();
    assert_eq!(a.conn.closing(), Some(CloseCode::Normal));
    let stats = m.get_stats();
    assert_eq!(
        (stats.connections, stats.connections_closed, stats.users),
        (1, 1, 1)
    );
    drop(a);
    b.conn.close(CloseCode::GoingAway);
    b.conn.close(CloseCode::Normal);
    assert_eq!(
        b.conn.closing(),
        Some(CloseCode::GoingAway),
        "the first close code wins"
    );
    drop(b);
    let stats = m.get_stats();
    assert_eq!(
        (
            stats.connections,
            stats.connections_opened,
            stats.connections_closed,
            stats.users
        ),
        (0, 2, 2, 0)
    );
    // Disconnecting all of an unknown user is a no-op.
    assert_eq!(m.disconnect_user(&user("nobody"), CloseCode::GoingAway), 0);
}

#[tokio::test(start_paused = true)]
async fn slow_consumer_is_closed_and_resumes_without_gap_or_duplicate() {
    let m = manager(ManagerConfig {
        queue: QueueLimits {
            max_frames: 8,
            max_bytes: 64 * 1024,
        },
        ..ManagerConfig::default()
    });
    let u = user("dana");
    let other_user = user("erin");
    let mut slow = connect(&m, &u, ConnectOptions::default()).await;
    let mut sibling = connect(&m, &u, ConnectOptions::default()).await;
    let mut other = connect(&m, &other_user, ConnectOptions::default()).await;
    settle().await;

    for n in 1..=3 {
        emit(&m, &u, n).await;
    }
    slow.until_seq(3).await;
    let got = slow.last_seq();
    let epoch = slow.hello().epoch.clone();
    // From here on `slow` is never drained; `sibling` and `other` are.
    for n in 4..=40 {
        emit(&m, &u, n).await;
        emit(&m, &other_user, n).await;
        sibling.until_seq(n).await;
        other.until_seq(n - 3).await;
    }
    assert_eq!(slow.until_closed().await, CloseCode::TryAgainLater);
    assert_eq!(CloseCode::TryAgainLater.code(), 1013);
    assert_eq!(
        slow.seqs(),
        vec![1, 2, 3],
        "a slow consumer's queue is dropped, not flushed"
    );
    assert_eq!(m.get_stats().slow_consumer_closes, 1);
    assert_eq!(sibling.seqs(), range(1, 40));
    assert_eq!(sibling.closed, None);
    other.until_seq(37).await;
    assert_eq!(other.seqs(), range(1, 37));

    drop(slow);
    let mut back = connect(&m, &u, after(got, &epoch)).await;
    emit(&m, &u, 41).await;
    back.until_seq(41).await;
    assert!(back.hello().resumed);
    assert!(back.gaps().is_empty());
    assert_eq!(
        back.seqs(),
        range(got + 1, 41),
        "resumed stream after the slow consumer"
    );
    back.assert_only_events_of(&u);
    assert_eq!(m.get_stats().slow_consumer_closes, 1);
}

#[tokio::test(start_paused = true)]
async fn a_replacing_connection_is_accepted_on_a_full_node() {
    // Two users fill a node of 4 (3 + 1). Alice's 4th connection evicts her oldest, so the
    // node's count does not grow: it is accepted, not refused with 1013.
    let m = manager(ManagerConfig {
        max_connections: 4,
        ..ManagerConfig::default()
    });
    let alice = user("alice");
    let mut oldest = connect(&m, &alice, ConnectOptions::default()).await;
    let _second = connect(&m, &alice, ConnectOptions::default()).await;
    let _third = connect(&m, &alice, ConnectOptions::default()).await;
    let _bob = connect(&m, &user("bob"), ConnectOptions::default()).await;
    let _fourth = connect(&m, &alice, ConnectOptions::default()).await;
    assert_eq!(oldest.until_closed().await, CloseCode::Replaced);
    let stats = m.get_stats();
    assert_eq!(stats.connections, 4);
    assert_eq!(stats.evictions, 1);
    assert_eq!(stats.rejections_node_full, 0);

    // A new user still finds the node full.
    let err = m
        .connect_user(user("carol"), ConnectOptions::default())
        .await
        .expect_err("node is full");
    assert_eq!(err.close_code(), CloseCode::TryAgainLater);
    assert_eq!(m.get_stats().rejections_node_full, 1);
}

/// Issue 14: a connection whose token expired must get nothing more, however much is
/// queued for it; its writer, even mid-batch, is told so by `abandoned`. Other closes
/// flush the queue first.
#[tokio::test(start_paused = true)]
async fn an_expired_token_drops_the_queue_and_other_closes_flush_it() {
    let m = manager(ManagerConfig::default());
    let u = user("fay");
    let mut expired = connect(&m, &u, ConnectOptions::default()).await;
    let mut leaving = connect(&m, &u, ConnectOptions::default()).await;
    settle().await;
    for n in 1..=5 {
        emit(&m, &u, n).await;
    }
    let not_yet = tokio::time::timeout(
        std::time::Duration::from_millis(10),
        expired.conn.abandoned(),
    )
    .await;
    assert!(not_yet.is_err(), "nothing is abandoned before a close");
    expired.conn.close(CloseCode::TokenExpired);
    leaving.conn.close(CloseCode::GoingAway);
    assert_eq!(expired.conn.abandoned().await, CloseCode::TokenExpired);
    assert_eq!(expired.until_closed().await, CloseCode::TokenExpired);
    assert_eq!(expired.seqs(), Vec::<u64>::new(), "the queue was dropped");
    assert_eq!(leaving.until_closed().await, CloseCode::GoingAway);
    assert_eq!(leaving.seqs(), range(1, 5), "the queue was flushed first");
    let still = tokio::time::timeout(
        std::time::Duration::from_millis(10),
        leaving.conn.abandoned(),
    )
    .await;
    assert!(still.is_err(), "a flushing close is not abandoned");
}
