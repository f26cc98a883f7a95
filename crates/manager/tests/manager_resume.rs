//! Where a connection's stream starts: replay then live without gap or duplicate (also
//! while events keep coming), `replay_gap` in each of its cases, the `resumed` flag, and
//! the `FromHistoryStart` / `LiveOnly` modes.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use agentwire_manager::{
    ConnectOptions, HistoryConfig, ManagerConfig, QueueLimits, UnifiedWebSocketManager,
};
use agentwire_protocol::{CloseCode, Epoch, ServerFrame};
use support::*;

fn paged() -> ManagerConfig {
    ManagerConfig {
        replay_page: 16,
        ..ManagerConfig::default()
    }
}

/// Connects while another task emits: the resumed connection gets exactly
/// `resume_at + 1 ..= TOTAL`, and a fresh one gets `1..=TOTAL`.
async fn resume_while_emitting(m: UnifiedWebSocketManager) {
    const TOTAL: u64 = 400;
    let u = user("racer");
    let first = m
        .emit_critical_event(&u, custom(&u, 1))
        .await
        .expect("emit");
    let epoch = first.epoch.clone();
    let emitted = Arc::new(AtomicU64::new(1));
    let emitter = {
        let (m, u, emitted) = (m.clone(), u.clone(), emitted.clone());
        tokio::spawn(async move {
            for n in 2..=TOTAL {
                let seq = emit(&m, &u, n).await;
                emitted.store(seq, Ordering::Release);
                if n % 8 == 0 {
                    tokio::task::yield_now().await;
                }
            }
        })
    };
    while emitted.load(Ordering::Acquire) < 100 {
        tokio::task::yield_now().await;
    }
    let mut resumed = connect(&m, &u, after(50, &epoch)).await;
    let mut fresh = connect(&m, &u, ConnectOptions::default()).await;
    emitter.await.expect("emitter");
    resumed.until_seq(TOTAL).await;
    fresh.until_seq(TOTAL).await;
    assert!(resumed.hello().resumed);
    assert!(resumed.gaps().is_empty() && fresh.gaps().is_empty());
    assert_eq!(
        resumed.seqs(),
        range(51, TOTAL),
        "replay then live, resumed at 50"
    );
    assert_eq!(
        fresh.seqs(),
        range(1, TOTAL),
        "replay then live, from the start"
    );
    resumed.assert_only_events_of(&u);
    let stats = m.get_stats();
    assert_eq!(
        stats.events_delivered + stats.events_replayed,
        2 * TOTAL - 50
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replay_then_live_while_another_task_emits() {
    resume_while_emitting(manager(paged())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replay_then_live_while_another_task_emits_over_a_latent_broker() {
    resume_while_emitting(latency_manager(paged())).await;
}

#[tokio::test(start_paused = true)]
async fn clean_resume_replays_after_last_seq_and_is_resumed() {
    let m = manager(paged());
    let u = user("alice");
    let mut first = connect(&m, &u, ConnectOptions::default()).await;
    for n in 1..=40 {
        emit(&m, &u, n).await;
    }
    first.until_seq(40).await;
    let epoch = first.hello().epoch.clone();
    assert!(!first.hello().resumed, "a fresh connection is not a resume");
    drop(first);

    let mut back = connect(&m, &u, after(33, &epoch)).await;
    emit(&m, &u, 41).await;
    back.until_seq(41).await;
    let hello = back.hello();
    assert!(hello.resumed);
    assert_eq!((hello.last_seq.get(), &hello.epoch), (40, &epoch));
    assert!(back.gaps().is_empty());
    assert_eq!(back.seqs(), range(34, 41));

    // Resuming at the newest seq replays nothing and is still a clean resume.
    let mut at_newest = connect(&m, &u, after(41, &epoch)).await;
    emit(&m, &u, 42).await;
    at_newest.until_seq(42).await;
    assert!(at_newest.hello().resumed);
    assert_eq!(at_newest.seqs(), vec![42]);
}

#[tokio::test(start_paused = true)]
async fn gap_when_history_no_longer_holds_the_next_seq() {
    let m = manager_with_history(
        paged(),
        HistoryConfig {
            max_events_per_user: 5,
            ..HistoryConfig::default()
        },
    );
    let u = user("bob");
    let mut first = connect(&m, &u, ConnectOptions::default()).await;
    for n in 1..=3 {
        emit(&m, &u, n).await;
    }
    first.until_seq(3).await;
    let epoch = first.hello().epoch.clone();
    drop(first);
    for n in 4..=20 {
        emit(&m, &u, n).await;
    }
    let mut back = connect(&m, &u, after(3, &epoch)).await;
    emit(&m, &u, 21).await;
    back.until_seq(21).await;
    assert!(!back.hello().resumed);
    assert!(
        matches!(back.frames[1], ServerFrame::ReplayGap(_)),
        "the gap comes right after the hello: {:?}",
        back.frames
    );
    assert_eq!(back.gaps(), vec![(4, 15)]);
    assert_eq!(back.seqs(), range(16, 21));
    assert_eq!(m.get_stats().replay_gaps, 1);

    // A fresh connection gets what history holds, without a gap frame.
    let mut fresh = connect(&m, &u, ConnectOptions::default()).await;
    fresh.until_seq(21).await;
    assert!(fresh.gaps().is_empty());
    assert_eq!(fresh.seqs(), range(17, 21));
}

#[tokio::test(start_paused = true)]
async fn gap_when_the_epoch_changed() {
    let m = manager_with_history(
        paged(),
        HistoryConfig {
            max_age: Duration::from_secs(60),
            dedupe_window: Duration::from_secs(60),
            ..HistoryConfig::default()
        },
    );
    let u = user("carol");
    let mut first = connect(&m, &u, ConnectOptions::default()).await;
    for n in 1..=4 {
        emit(&m, &u, n).await;
    }
    first.until_seq(4).await;
    let old_epoch = first.hello().epoch.clone();
    drop(first);
    settle().await;
    // History expires and the stream with it: the next event starts a new epoch.
    tokio::time::advance(Duration::from_secs(61)).await;
    m.sweep();
    assert_eq!(m.get_stats().history_users, 0);
    let a = m
        .emit_critical_event(&u, custom(&u, 5))
        .await
        .expect("emit");
    emit(&m, &u, 6).await;
    assert_ne!(a.epoch, old_epoch);
    assert_eq!(a.seq.get(), 1);

    let mut back = connect(&m, &u, after(4, &old_epoch)).await;
    back.until_seq(2).await;
    let hello = back.hello();
    assert!(!hello.resumed);
    assert_eq!((&hello.epoch, hello.last_seq.get()), (&a.epoch, 2));
    assert_eq!(
        back.gaps(),
        vec![(1, 4)],
        "everything the client had is void"
    );
    assert_eq!(back.seqs(), vec![1, 2], "then the new epoch from its start");
    emit(&m, &u, 7).await;
    back.until_seq(3).await;
    assert_eq!(back.seqs(), vec![1, 2, 3]);
    back.assert_only_events_of(&u);

    // An epoch never seen, with nothing to void, is no gap.
    let bogus: Epoch = "e_unknown".parse().expect("epoch");
    let mut stranger = connect(&m, &u, after(0, &bogus)).await;
    stranger.until_seq(3).await;
    assert!(stranger.gaps().is_empty());
    assert_eq!(stranger.seqs(), vec![1, 2, 3]);
}

#[tokio::test(start_paused = true)]
async fn gap_when_last_seq_is_beyond_the_newest() {
    let m = manager(paged());
    let u = user("dave");
    let mut first = connect(&m, &u, ConnectOptions::default()).await;
    for n in 1..=3 {
        emit(&m, &u, n).await;
    }
    first.until_seq(3).await;
    let epoch = first.hello().epoch.clone();

    let mut ahead = connect(&m, &u, after(10, &epoch)).await;
    settle().await;
    emit(&m, &u, 4).await;
    emit(&m, &u, 5).await;
    ahead.until_seq(5).await;
    let hello = ahead.hello();
    assert!(!hello.resumed);
    assert_eq!(hello.last_seq.get(), 3);
    assert_eq!(ahead.gaps(), vec![(4, 10)]);
    assert_eq!(
        ahead.seqs(),
        vec![4, 5],
        "live events continue from the newest + 1"
    );
}

#[tokio::test(start_paused = true)]
async fn from_history_start_gets_what_was_emitted_while_offline() {
    let m = manager(paged());
    let u = user("erin");
    for n in 1..=3 {
        emit(&m, &u, n).await;
    }
    let mut c = connect(&m, &u, ConnectOptions::default()).await;
    emit(&m, &u, 4).await;
    c.until_seq(4).await;
    assert!(!c.hello().resumed);
    assert_eq!(c.hello().last_seq.get(), 3);
    assert_eq!(c.seqs(), range(1, 4));
    assert!(c.gaps().is_empty());
}

#[tokio::test(start_paused = true)]
async fn live_only_gets_none_of_the_old_ones() {
    let m = manager(paged());
    let u = user("frank");
    for n in 1..=3 {
        emit(&m, &u, n).await;
    }
    let mut c = connect(&m, &u, live_only()).await;
    // Once its stream is live, new events count as delivered, not replayed.
    settle().await;
    emit(&m, &u, 4).await;
    emit(&m, &u, 5).await;
    c.until_seq(5).await;
    assert!(!c.hello().resumed);
    assert_eq!(c.hello().last_seq.get(), 3);
    assert_eq!(c.seqs(), vec![4, 5]);
    assert_eq!(m.get_stats().events_replayed, 0);
}

#[tokio::test(start_paused = true)]
async fn a_long_replay_is_paced_by_the_writer_not_cut() {
    let m = manager(ManagerConfig {
        replay_page: 7,
        queue: QueueLimits {
            max_frames: 4,
            max_bytes: 64 * 1024,
        },
        ..ManagerConfig::default()
    });
    let u = user("gina");
    for n in 1..=100 {
        emit(&m, &u, n).await;
    }
    let mut c = connect(&m, &u, ConnectOptions::default()).await;
    c.until_seq(100).await;
    assert_eq!(c.seqs(), range(1, 100));
    assert_eq!(c.closed, None);
    let stats = m.get_stats();
    assert_eq!(
        (stats.events_replayed, stats.slow_consumer_closes),
        (100, 0)
    );
}

/// Live events that come before a connection's catch-up has run are held aside under the
/// queue's bound; past it they are let go and read from history instead, and the reader —
/// not slow, only early — is not cut: it gets every seq once, in order.
#[tokio::test(start_paused = true)]
async fn live_events_past_the_bound_before_the_catch_up_runs_are_read_from_history() {
    let m = small_queue();
    let u = user("early");
    // Nothing yields between the connect and the emits: the catch-up it spawned has not
    // run when the 30 events arrive.
    let mut c = connect(&m, &u, ConnectOptions::default()).await;
    for n in 1..=30 {
        emit(&m, &u, n).await;
    }
    c.until_seq(30).await;
    assert_eq!(c.seqs(), range(1, 30));
    assert_eq!(c.closed, None);
    let stats = m.get_stats();
    assert_eq!(stats.slow_consumer_closes, 0, "{stats:?}");
    assert!(stats.catch_up_rereads > 0, "{stats:?}");
    // Live again: the next event is delivered as it comes.
    emit(&m, &u, 31).await;
    c.until_seq(31).await;
    assert_eq!(c.seqs(), range(1, 31));
}

/// A reader whose queue is backed up while it catches up is slow, not early: past the
/// bounds of what is held aside it is closed as a slow consumer, as a live one would be.
#[tokio::test(start_paused = true)]
async fn a_backed_up_reader_past_the_bound_while_catching_up_is_a_slow_consumer() {
    let m = small_queue();
    let u = user("backed");
    for n in 1..=20 {
        emit(&m, &u, n).await;
    }
    let mut c = connect(&m, &u, ConnectOptions::default()).await;
    settle().await;
    assert_eq!(
        m.get_stats().queued_frames,
        8,
        "the replay filled the queue"
    );
    for n in 21..=30 {
        emit(&m, &u, n).await;
    }
    assert_eq!(c.until_closed().await, CloseCode::TryAgainLater);
    let stats = m.get_stats();
    assert_eq!(
        (stats.slow_consumer_closes, stats.catch_up_rereads),
        (1, 0),
        "{stats:?}"
    );
}
