//! One manager per process (issue 15): code that reaches for the process-wide manager
//! before the server is bound (`UnifiedWebSocketManager::global()`, or its legacy alias)
//! creates it, and `Server::bind` then adopts it — events
//! emitted through `global()` reach the server's connections — or, when its settings are
//! not the configuration's, refuses with an error that says so. Its own test binary: the
//! process-wide manager is per process.

use agentwire::UnifiedWebSocketManager;
use agentwire::server::ServerError;
use agentwire_e2e::{TestServer, custom, custom_value, user};

#[tokio::test]
async fn a_manager_made_by_global_before_bind_is_adopted_by_the_server() {
    let early = UnifiedWebSocketManager::global();
    assert!(UnifiedWebSocketManager::global_is_implicit());
    let server = TestServer::bind_process_server(|_| {})
        .await
        .expect("the defaults are the implicit manager's settings");
    assert!(
        server.manager().same_as(&early),
        "the server runs on the process's one manager"
    );
    let mut client = server.connect("alice").await;
    let accepted = UnifiedWebSocketManager::global()
        .emit_critical_event(&user("alice"), custom(7))
        .await
        .expect("emitted through global()");
    let event = client.event().await;
    assert_eq!(event.seq, accepted.seq);
    assert_eq!(custom_value(&event), Some(7));
    server.stop().await;
}

#[tokio::test]
async fn a_global_manager_with_other_settings_is_refused_not_ignored() {
    let _early = UnifiedWebSocketManager::global();
    let e = TestServer::bind_process_server(|c| c.max_connections_per_user = 1)
        .await
        .expect_err("the implicit manager allows 3 connections per user");
    assert!(matches!(e, ServerError::GlobalManager(_)), "{e}");
    let message = e.to_string();
    assert!(message.contains("global() created"), "{message}");
    assert!(message.contains("max_connections_per_user: 1"), "{message}");
}
