//! `UnifiedWebSocketManager::global()` and a server-installed manager reach the same
//! connections: code written against the singleton (here a bridge created from
//! `global()`) delivers to connections the server made on the manager it installed.
//! Its own test binary, because the global instance is process-wide.

mod support;

use std::time::Duration;

use agentwire_bridge::AgentBridgeExt;
use agentwire_manager::{ConnectOptions, UnifiedWebSocketManager};
use agentwire_protocol::EventType;
use support::{assert_no_more_events, ctx, read_events, user};

#[tokio::test]
async fn global_reaches_the_connections_of_the_installed_manager() {
    let server_manager = UnifiedWebSocketManager::in_memory();
    UnifiedWebSocketManager::install_global(server_manager.clone()).expect("first install");
    let conn = server_manager
        .connect_user(user("alice"), ConnectOptions::default())
        .await
        .expect("connect");
    let other = server_manager
        .connect_user(user("bob"), ConnectOptions::default())
        .await
        .expect("connect");

    let global = UnifiedWebSocketManager::global();
    assert!(global.same_as(&server_manager));
    let run = global
        .create_agent_bridge()
        .start_run(ctx("alice", "r1"), "a")
        .await
        .expect("start");
    run.complete(serde_json::Value::Null)
        .await
        .expect("complete");

    let events = read_events(&conn, 2, Duration::from_secs(5)).await;
    assert_eq!(events[0].event.event_type(), EventType::AgentStarted);
    assert_eq!(events[1].event.event_type(), EventType::AgentCompleted);
    assert_no_more_events(&other, Duration::from_millis(50)).await;

    // A second install is refused and hands the manager back; global() is unchanged.
    let late = UnifiedWebSocketManager::in_memory();
    let back = UnifiedWebSocketManager::install_global(late.clone()).expect_err("taken");
    assert!(back.same_as(&late));
    assert!(UnifiedWebSocketManager::global().same_as(&server_manager));
}
