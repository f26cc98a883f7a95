//! History stays within its bounds — per user by count, by age, in total by bytes — as
//! `get_stats` reports it, and users with nothing left are forgotten.

mod support;

use std::time::Duration;

use agentwire_manager::{ConnectOptions, HistoryConfig, ManagerConfig};
use support::*;

#[tokio::test(start_paused = true)]
async fn count_per_user_is_bounded() {
    let m = manager_with_history(
        ManagerConfig::default(),
        HistoryConfig {
            max_events_per_user: 5,
            ..HistoryConfig::default()
        },
    );
    let (a, b) = (user("alice"), user("bob"));
    for n in 1..=20 {
        emit(&m, &a, n).await;
        if n <= 3 {
            emit(&m, &b, n).await;
        }
        let stats = m.get_stats();
        assert!(
            stats.history_events <= 5 + 3,
            "history holds {}",
            stats.history_events
        );
    }
    let stats = m.get_stats();
    assert_eq!(stats.history_events, 5 + 3);
    assert_eq!(stats.history_trimmed, 15);
    assert_eq!(stats.history_users, 2);
    let mut c = connect(&m, &a, ConnectOptions::default()).await;
    c.until_seq(20).await;
    assert_eq!(c.seqs(), range(16, 20));
}

#[tokio::test(start_paused = true)]
async fn age_is_bounded_and_expired_users_are_dropped() {
    let m = manager_with_history(
        ManagerConfig::default(),
        HistoryConfig {
            max_age: Duration::from_secs(60),
            dedupe_window: Duration::from_secs(60),
            ..HistoryConfig::default()
        },
    );
    let (a, b) = (user("carol"), user("dave"));
    for n in 1..=4 {
        emit(&m, &a, n).await;
    }
    tokio::time::advance(Duration::from_secs(30)).await;
    for n in 1..=2 {
        emit(&m, &b, n).await;
    }
    tokio::time::advance(Duration::from_secs(31)).await;
    m.sweep();
    let stats = m.get_stats();
    assert_eq!(
        (
            stats.history_events,
            stats.history_users,
            stats.history_trimmed
        ),
        (2, 1, 4)
    );

    tokio::time::advance(Duration::from_secs(30)).await;
    m.sweep();
    let stats = m.get_stats();
    assert_eq!(
        (
            stats.history_events,
            stats.history_bytes,
            stats.history_users
        ),
        (0, 0, 0)
    );
    assert_eq!(stats.history_trimmed, 6);
}

#[tokio::test(start_paused = true)]
async fn the_background_sweeper_expires_history() {
    let m = manager_with_history(
        ManagerConfig::default(),
        HistoryConfig {
            max_age: Duration::from_secs(60),
            dedupe_window: Duration::from_secs(60),
            ..HistoryConfig::default()
        },
    );
    let u = user("erin");
    let c = connect(&m, &u, ConnectOptions::default()).await;
    emit(&m, &u, 1).await;
    drop(c);
    // The sweeper task runs every 5 s; nothing here calls `sweep`.
    tokio::time::sleep(Duration::from_secs(70)).await;
    let stats = m.get_stats();
    assert_eq!((stats.history_events, stats.history_users), (0, 0));
}

#[tokio::test(start_paused = true)]
async fn total_bytes_are_bounded() {
    const BUDGET: usize = 64 * 1024;
    let m = manager_with_history(
        ManagerConfig::default(),
        HistoryConfig {
            max_total_bytes: BUDGET,
            ..HistoryConfig::default()
        },
    );
    let users: Vec<_> = (0..50).map(|i| user(&format!("user-{i}"))).collect();
    let mut emitted = 0;
    for round in 0..40 {
        for u in &users {
            emit(&m, u, round).await;
            emitted += 1;
        }
        let stats = m.get_stats();
        assert!(
            stats.history_bytes <= BUDGET as u64,
            "history holds {} bytes",
            stats.history_bytes
        );
    }
    let stats = m.get_stats();
    assert!(stats.history_trimmed > 0, "the budget never bit");
    assert_eq!(stats.history_events + stats.history_trimmed, emitted);
    assert!(stats.history_bytes > 0);
}

#[tokio::test(start_paused = true)]
async fn users_without_connections_or_events_are_forgotten() {
    let m = manager(ManagerConfig::default());
    let mut held = Vec::new();
    for name in ["f", "g", "h"] {
        for _ in 0..2 {
            held.push(connect(&m, &user(name), ConnectOptions::default()).await);
        }
    }
    let stats = m.get_stats();
    assert_eq!(
        (stats.users, stats.history_users, stats.history_events),
        (3, 3, 0)
    );
    held.clear();
    settle().await;
    let stats = m.get_stats();
    assert_eq!(
        (stats.users, stats.connections, stats.history_users),
        (0, 0, 0)
    );
}
