//! End to end: resuming. A client that drops mid-stream while events keep coming gets
//! every missing event exactly once, in order (query string or `resume` first frame); the
//! three `replay_gap` cases (another epoch, `last_seq` beyond the newest, history trimmed);
//! events emitted while the user had no connection arrive on connect.

use std::time::Duration;

use agentwire::protocol::{ClientFrame, ReplayGap, Seq, ServerFrame};
use agentwire_e2e::{Client, TestServer, custom, custom_value};

/// Reads events until `last` and returns their seqs; fails on any other frame.
async fn seqs_until(client: &mut Client, last: u64) -> Vec<u64> {
    let mut seqs = Vec::new();
    while seqs.last().copied().unwrap_or(0) < last {
        let e = client.event().await;
        assert_eq!(custom_value(&e), Some(e.seq.get()), "payload follows seq");
        seqs.push(e.seq.get());
        assert!(seqs.len() <= 10_000, "runaway stream");
    }
    seqs
}

/// The current epoch of `user`'s stream, as the broker holds it.
async fn epoch_of(server: &TestServer, user: &str) -> agentwire::protocol::Epoch {
    server
        .manager()
        .history(&agentwire_e2e::user(user), Seq(0), 0)
        .await
        .expect("history")
        .epoch
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_resuming_mid_stream_gets_every_missing_event_once_in_order() {
    const TOTAL: u64 = 200;
    let server = TestServer::start().await;
    let mut first = server.connect("alice").await;
    let epoch = first.established.clone().expect("established").epoch;

    let manager = server.manager().clone();
    let producer = tokio::spawn(async move {
        let alice = agentwire_e2e::user("alice");
        for n in 1..=TOTAL {
            manager
                .emit_critical_event(&alice, custom(n))
                .await
                .expect("emit");
            if n % 10 == 0 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    });

    let seen = seqs_until(&mut first, 40).await;
    assert_eq!(seen, (1..=40).collect::<Vec<_>>());
    drop(first); // drops mid-stream without a close handshake

    let mut again = server
        .connect_query("alice", &format!("?last_seq=40&epoch={epoch}"))
        .await;
    let hello = again.established.clone().expect("established");
    assert!(hello.resumed, "{hello:?}");
    assert_eq!(hello.epoch, epoch);
    let rest = seqs_until(&mut again, TOTAL).await;
    assert_eq!(rest, (41..=TOTAL).collect::<Vec<_>>());
    producer.await.expect("producer");
    // Nothing after the last one.
    assert_eq!(again.recv_within(Duration::from_millis(200)).await, None);
    again.close().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_first_frame_works_like_the_query_string() {
    let server = TestServer::start_with(|c| c.resume_wait = Duration::from_secs(5)).await;
    for n in 1..=10 {
        server.emit("alice", custom(n)).await;
    }
    let epoch = epoch_of(&server, "alice").await;
    let mut c = server
        .try_connect(server.request(&server.token("alice"), ""))
        .await
        .expect("connects");
    c.send(&ClientFrame::Resume {
        last_seq: Seq(7),
        epoch: epoch.clone(),
    })
    .await;
    let hello = c.read_established().await;
    assert!(hello.resumed);
    assert_eq!(seqs_until(&mut c, 10).await, vec![8, 9, 10]);
    // A second resume is refused.
    c.send(&ClientFrame::Resume {
        last_seq: Seq(1),
        epoch,
    })
    .await;
    match c.frame().await {
        ServerFrame::Error(e) => {
            assert_eq!(e.code, agentwire::protocol::ErrorCode::ResumeNotFirst)
        }
        other => panic!("expected an error frame, got {other:?}"),
    }
    c.close().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resuming_another_epoch_reports_a_gap_then_streams_from_history() {
    let server = TestServer::start().await;
    for n in 1..=5 {
        server.emit("alice", custom(n)).await;
    }
    let mut c = server
        .connect_query("alice", "?last_seq=3&epoch=e_from_a_previous_life")
        .await;
    assert!(!c.established.as_ref().expect("established").resumed);
    assert_eq!(
        c.frame().await,
        ServerFrame::ReplayGap(ReplayGap {
            from_seq: Seq(1),
            to_seq: Seq(3)
        })
    );
    assert_eq!(seqs_until(&mut c, 5).await, vec![1, 2, 3, 4, 5]);
    c.close().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resuming_beyond_the_newest_seq_reports_a_gap_then_goes_live() {
    let server = TestServer::start().await;
    for n in 1..=3 {
        server.emit("alice", custom(n)).await;
    }
    let epoch = epoch_of(&server, "alice").await;
    let mut c = server
        .connect_query("alice", &format!("?last_seq=10&epoch={epoch}"))
        .await;
    let hello = c.established.clone().expect("established");
    assert!(!hello.resumed);
    assert_eq!(hello.last_seq, Seq(3));
    assert_eq!(
        c.frame().await,
        ServerFrame::ReplayGap(ReplayGap {
            from_seq: Seq(4),
            to_seq: Seq(10)
        })
    );
    server.emit("alice", custom(4)).await;
    assert_eq!(seqs_until(&mut c, 4).await, vec![4]);
    c.close().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resuming_past_trimmed_history_reports_the_trimmed_range() {
    let server = TestServer::start_with(|c| c.history_max_events = 5).await;
    for n in 1..=20 {
        server.emit("alice", custom(n)).await;
    }
    let epoch = epoch_of(&server, "alice").await;
    let mut c = server
        .connect_query("alice", &format!("?last_seq=2&epoch={epoch}"))
        .await;
    assert!(!c.established.as_ref().expect("established").resumed);
    assert_eq!(
        c.frame().await,
        ServerFrame::ReplayGap(ReplayGap {
            from_seq: Seq(3),
            to_seq: Seq(15)
        })
    );
    assert_eq!(seqs_until(&mut c, 20).await, vec![16, 17, 18, 19, 20]);
    c.close().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_emitted_while_the_user_had_no_connection_arrive_on_connect() {
    let server = TestServer::start().await;
    for n in 1..=25 {
        server.emit("alice", custom(n)).await;
    }
    let mut c = server.connect("alice").await;
    assert_eq!(
        c.established.as_ref().expect("established").last_seq,
        Seq(25)
    );
    assert_eq!(seqs_until(&mut c, 25).await, (1..=25).collect::<Vec<_>>());
    // Then live.
    server.emit("alice", custom(26)).await;
    assert_eq!(seqs_until(&mut c, 26).await, vec![26]);
    c.close().await;
    server.stop().await;
}
