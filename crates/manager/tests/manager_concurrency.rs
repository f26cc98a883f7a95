//! Many tasks at once: concurrent emits to one user make one contiguous stream that every
//! connection of the user sees identically; readers resuming under load see contiguous
//! streams; connect/disconnect churn, evictions racing removals and cancelled connects
//! leave nothing behind.

mod support;

use std::time::Duration;

use agentwire_manager::{ConnectOptions, ManagerConfig, Resume, UnifiedWebSocketManager};
use agentwire_protocol::{CloseCode, Epoch};
use support::*;

const TASKS: u64 = 16;
const EACH: u64 = 50;

async fn concurrent_emits_make_one_stream(m: UnifiedWebSocketManager) {
    let u = user("alice");
    let mut readers = Vec::new();
    for _ in 0..3 {
        let mut c = connect(&m, &u, ConnectOptions::default()).await;
        readers.push(tokio::spawn(async move {
            c.until_seq(TASKS * EACH).await;
            c
        }));
    }
    let bystander = connect(&m, &user("bob"), ConnectOptions::default()).await;
    let emitters: Vec<_> = (0..TASKS)
        .map(|t| {
            let (m, u) = (m.clone(), u.clone());
            tokio::spawn(async move {
                let mut seqs = Vec::new();
                for n in 0..EACH {
                    seqs.push(emit(&m, &u, t * 1_000 + n).await);
                }
                seqs
            })
        })
        .collect();
    let mut all = Vec::new();
    for e in emitters {
        all.extend(e.await.expect("emitter"));
    }
    all.sort_unstable();
    assert_eq!(all, range(1, TASKS * EACH), "seqs handed to the emitters");
    for r in readers {
        let c = r.await.expect("reader");
        assert_eq!(c.seqs(), range(1, TASKS * EACH), "stream of one connection");
        assert!(c.gaps().is_empty());
        assert_eq!(c.closed, None);
        c.assert_only_events_of(&u);
    }
    let mut bystander = bystander;
    bystander.drain_ready().await;
    assert_eq!(
        bystander.seqs(),
        Vec::<u64>::new(),
        "another user's connection got events"
    );
    let stats = m.get_stats();
    assert_eq!(stats.events_emitted, TASKS * EACH);
    assert_eq!(
        stats.events_delivered + stats.events_replayed,
        3 * TASKS * EACH
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sixteen_tasks_emit_to_one_user() {
    concurrent_emits_make_one_stream(manager(ManagerConfig::default())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sixteen_tasks_emit_to_one_user_over_a_latent_broker() {
    concurrent_emits_make_one_stream(latency_manager(ManagerConfig::default())).await;
}

/// Tasks connect and drop connections of the same few users while others emit: afterwards
/// no connection, user, subscription or stream is left, and the counters balance.
async fn churn_leaves_nothing_behind(m: UnifiedWebSocketManager) {
    let users: Vec<_> = (0..3).map(|i| user(&format!("churn-{i}"))).collect();
    let churners: Vec<_> = (0..8)
        .map(|t| {
            let (m, users) = (m.clone(), users.clone());
            tokio::spawn(async move {
                for round in 0..40usize {
                    let u = &users[(t + round) % users.len()];
                    let c = m
                        .connect_user(u.clone(), ConnectOptions::default())
                        .await
                        .expect("connect");
                    if round % 3 == 0 {
                        tokio::task::yield_now().await;
                    }
                    if round % 5 == 0 {
                        c.disconnect();
                    }
                    drop(c);
                }
            })
        })
        .collect();
    let emitter = {
        let (m, u) = (m.clone(), users[0].clone());
        tokio::spawn(async move {
            for n in 0..100 {
                emit(&m, &u, n).await;
            }
        })
    };
    for c in churners {
        c.await.expect("churner");
    }
    emitter.await.expect("emitter");
    let stats = m.get_stats();
    assert_eq!((stats.connections, stats.users), (0, 0));
    assert_eq!(stats.connections_opened, 8 * 40);
    assert_eq!(stats.connections_closed, 8 * 40);

    // Unsubscribes run in the background: wait for the broker to forget the idle users.
    let forgotten = async {
        while m.get_stats().history_users != 1 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    tokio::time::timeout(WAIT, forgotten)
        .await
        .expect("the broker still holds streams of users with no connection and no events");

    // The user with events is still served, once, in order.
    let mut c = connect(&m, &users[0], ConnectOptions::default()).await;
    emit(&m, &users[0], 100).await;
    c.until_seq(101).await;
    assert_eq!(c.seqs(), range(1, 101));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn connect_disconnect_churn_leaves_nothing_behind() {
    churn_leaves_nothing_behind(manager(ManagerConfig::default())).await;
}

/// Every connect evicts the user's other connection while its owner drops it: eviction and
/// removal race on the same connection, which must be counted closed exactly once (a
/// double count wrapped the node's connection counter and refused everyone with 1013).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn eviction_racing_removal_counts_each_connection_once() {
    let m = manager(ManagerConfig {
        max_connections_per_user: 1,
        max_connections: 64,
        ..ManagerConfig::default()
    });
    let u = user("contended");
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let (m, u) = (m.clone(), u.clone());
            tokio::spawn(async move {
                for _ in 0..300 {
                    let c = m
                        .connect_user(u.clone(), ConnectOptions::default())
                        .await
                        .expect("connect");
                    tokio::task::yield_now().await;
                    drop(c);
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("churner");
    }
    let stats = m.get_stats();
    assert_eq!((stats.connections, stats.users), (0, 0));
    assert_eq!(m.connection_count(), 0);
    assert_eq!(
        (stats.connections_opened, stats.connections_closed),
        (2_400, 2_400)
    );
    assert!(stats.evictions <= 2_400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn connect_disconnect_churn_leaves_nothing_behind_over_a_latent_broker() {
    churn_leaves_nothing_behind(latency_manager(ManagerConfig::default())).await;
}

/// `connect_user` is documented cancel safe: a connect abandoned at any await point — here
/// by timeouts that fire at random points of a latent broker's calls — leaves no
/// connection and no broker subscription behind (a leaked one would keep the user's
/// stream alive for good).
#[tokio::test(start_paused = true)]
async fn cancelled_connects_leave_no_subscription_behind() {
    let m = latency_manager(ManagerConfig::default());
    let users: Vec<_> = (0..4).map(|i| user(&format!("cancel-{i}"))).collect();
    let mut completed = 0;
    for round in 0..200u64 {
        let u = &users[(round % 4) as usize];
        let budget = Duration::from_micros(round * 37 % 3_000);
        // Two at once, so a cancelled one may leave the other to finish its subscribe.
        let attempt =
            || tokio::time::timeout(budget, m.connect_user(u.clone(), ConnectOptions::default()));
        let (first, second) = tokio::join!(attempt(), attempt());
        for conn in [first, second].into_iter().flatten() {
            completed += 1;
            drop(conn.expect("connect"));
        }
    }
    assert!(
        completed > 0,
        "no connect ever completed: the test cancels too early"
    );
    assert!(
        completed < 400,
        "no connect was ever cancelled: the test cancels too late"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    let stats = m.get_stats();
    assert_eq!((stats.connections, stats.users), (0, 0));
    assert_eq!(
        stats.history_users, 0,
        "a broker subscription outlived its connections"
    );

    // And a later connection is served normally.
    let mut c = connect(&m, &users[0], ConnectOptions::default()).await;
    emit(&m, &users[0], 1).await;
    c.until_seq(1).await;
    assert_eq!(c.seqs(), vec![1]);
}

/// Readers that keep reconnecting — resuming where they stood, or from the start — while
/// emitters run and a fourth connection per user now and then evicts one: every
/// connection's stream is contiguous from its resume point, of its own user only.
async fn resuming_readers_under_load(m: UnifiedWebSocketManager) {
    const USERS: usize = 3;
    const PER_USER: u64 = 150;
    let users: Vec<_> = (0..USERS).map(|i| user(&format!("load-{i}"))).collect();
    let mut readers = Vec::new();
    for (i, u) in users.iter().enumerate() {
        for r in 0..3usize {
            let (m, u) = (m.clone(), u.clone());
            readers.push(tokio::spawn(async move {
                let mut resume: Option<(u64, Epoch)> = None;
                let mut round = 0usize;
                loop {
                    round += 1;
                    let options = match (&resume, (r + round) % 3) {
                        (Some((k, e)), 0 | 1) => after(*k, e),
                        _ => ConnectOptions::default(),
                    };
                    let start = match &options.resume {
                        Resume::After { last_seq, .. } => last_seq.get(),
                        _ => 0,
                    };
                    let mut c = connect(&m, &u, options).await;
                    // Read past what this reader has seen (a fresh connection replays it
                    // all), or until this connection is evicted.
                    let seen = resume.as_ref().map_or(0, |(k, _)| *k);
                    let want = seen.max(start) + 1 + ((r * 7 + round * 13 + i) % 40) as u64;
                    let target = want.min(PER_USER);
                    c.until_seq_or_closed(target).await;
                    if let Some(code) = c.closed {
                        assert_eq!(code, CloseCode::Replaced, "reader of {u}");
                    }
                    c.assert_only_events_of(&u);
                    assert!(
                        c.gaps().is_empty(),
                        "gap for a reader of {u}: {:?}",
                        c.gaps()
                    );
                    let seqs = c.seqs();
                    if let Some(&first) = seqs.first() {
                        assert_eq!(first, start + 1, "first seq after resuming at {start}");
                    }
                    assert!(
                        seqs.windows(2).all(|w| w[1] == w[0] + 1),
                        "stream of a reader of {u} is not contiguous: {seqs:?}"
                    );
                    // Evicted before its hello was queued, a connection got nothing.
                    if c.frames.is_empty() {
                        continue;
                    }
                    let last = seqs.last().copied().unwrap_or(start);
                    resume = Some((last, c.hello().epoch.clone()));
                    if last >= PER_USER {
                        return;
                    }
                }
            }));
        }
    }
    // A fourth connection now and then evicts the oldest reader, which resumes.
    let evictors: Vec<_> = users
        .iter()
        .map(|u| {
            let (m, u) = (m.clone(), u.clone());
            tokio::spawn(async move {
                for _ in 0..10 {
                    let c = m
                        .connect_user(u.clone(), live_only())
                        .await
                        .expect("connect");
                    tokio::time::sleep(Duration::from_millis(2)).await;
                    drop(c);
                    tokio::time::sleep(Duration::from_millis(3)).await;
                }
            })
        })
        .collect();
    let emitters: Vec<_> = users
        .iter()
        .map(|u| {
            let (m, u) = (m.clone(), u.clone());
            tokio::spawn(async move {
                for n in 1..=PER_USER {
                    emit(&m, &u, n).await;
                    if n % 10 == 0 {
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                }
            })
        })
        .collect();
    for e in emitters {
        e.await.expect("emitter");
    }
    for t in evictors.into_iter().chain(readers) {
        t.await.expect("reader");
    }
    let stats = m.get_stats();
    assert_eq!(stats.events_emitted, USERS as u64 * PER_USER);
    assert!(
        stats.evictions > 0,
        "nothing was evicted: the test lost its point"
    );
    assert_eq!(stats.slow_consumer_closes, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn resuming_readers_under_load_see_contiguous_streams() {
    resuming_readers_under_load(manager(ManagerConfig {
        replay_page: 5,
        ..ManagerConfig::default()
    }))
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn resuming_readers_under_load_see_contiguous_streams_over_a_latent_broker() {
    resuming_readers_under_load(latency_manager(ManagerConfig {
        replay_page: 5,
        ..ManagerConfig::default()
    }))
    .await;
}
