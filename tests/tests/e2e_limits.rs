//! End to end: connection limits — a 4th connection of a user under each policy (4003 to
//! the oldest, or 4004 to the new one) and the node cap (1013).

use agentwire::protocol::{ClientFrame, ServerFrame};
use agentwire::server::PerUserPolicy;
use agentwire_e2e::{Received, TestServer, WAIT, custom, user};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fourth_connection_evicts_the_oldest_with_4003() {
    let server = TestServer::start().await;
    let mut first = server.connect("alice").await;
    let mut second = server.connect("alice").await;
    let mut third = server.connect("alice").await;
    let first_id = first
        .established
        .clone()
        .expect("established")
        .connection_id;
    let mut fourth = server.connect("alice").await;

    assert_eq!(first.closed().await, Some(4003));
    let ids: Vec<_> = server
        .manager()
        .connections_of(&user("alice"))
        .into_iter()
        .map(|c| c.connection_id)
        .collect();
    assert_eq!(ids.len(), 3);
    assert!(!ids.contains(&first_id));

    // The three left keep receiving.
    server.emit("alice", custom(1)).await;
    for c in [&mut second, &mut third, &mut fourth] {
        assert_eq!(c.event().await.seq.get(), 1);
    }
    assert_eq!(server.manager().get_stats().evictions, 1);
    second.close().await;
    third.close().await;
    fourth.close().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fourth_connection_is_rejected_with_4004_under_the_reject_policy() {
    let server = TestServer::start_with(|c| c.per_user_policy = PerUserPolicy::Reject).await;
    let mut kept = Vec::new();
    for _ in 0..3 {
        kept.push(server.connect("alice").await);
    }
    let mut fourth = server
        .try_connect(server.request(&server.token("alice"), ""))
        .await
        .expect("the handshake itself succeeds");
    assert_eq!(fourth.recv().await, Received::Close(Some(4004)));

    // The three first are untouched.
    for c in &mut kept {
        c.send(&ClientFrame::Ping).await;
        assert_eq!(c.frame().await, ServerFrame::Pong);
    }
    assert_eq!(server.manager().connections_of(&user("alice")).len(), 3);
    assert_eq!(server.manager().get_stats().rejections_user_limit, 1);
    // Another user is not affected by alice's limit.
    let bob = server.connect("bob").await;
    for c in kept {
        c.close().await;
    }
    bob.close().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_cap_refuses_with_1013() {
    let server = TestServer::start_with(|c| c.max_connections = 2).await;
    let a = server.connect("a").await;
    let b = server.connect("b").await;
    let mut c = server
        .try_connect(server.request(&server.token("c"), ""))
        .await
        .expect("the handshake itself succeeds");
    assert_eq!(c.recv().await, Received::Close(Some(1013)));
    assert_eq!(server.manager().get_stats().rejections_node_full, 1);
    assert_eq!(server.manager().connection_count(), 2);

    // Room again once one leaves.
    a.close().await;
    server
        .wait_until("a's connection is gone", WAIT, |s| {
            s.manager().connection_count() == 1
        })
        .await;
    let c2 = server.connect("c").await;
    b.close().await;
    c2.close().await;
    server.stop().await;
}
