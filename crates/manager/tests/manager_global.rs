//! The process-wide manager: `install_global` makes a manager the one `global()` returns,
//! so code written against the old singleton reaches the installed manager's connections.
//! One test only: the global is per process.

mod support;

use std::sync::Arc;

use agentwire_manager::{ConnectOptions, InMemoryBroker, ManagerConfig, UnifiedWebSocketManager};
use support::*;

#[tokio::test(start_paused = true)]
async fn installed_manager_is_the_global_one() {
    let installed = UnifiedWebSocketManager::new(
        ManagerConfig::default(),
        Arc::new(InMemoryBroker::default()),
    );
    UnifiedWebSocketManager::install_global(installed.clone())
        .expect("nothing was installed before");
    let global = UnifiedWebSocketManager::global();
    assert!(global.same_as(&installed));
    assert!(UnifiedWebSocketManager::global().same_as(&global));

    let u = user("alice");
    let mut c = connect(&installed, &u, ConnectOptions::default()).await;
    let seq = emit(&UnifiedWebSocketManager::global(), &u, 1).await;
    c.until_seq(seq).await;
    assert_eq!(c.seqs(), vec![1]);

    // Installing the same manager again is a no-op; another one is handed back.
    assert!(UnifiedWebSocketManager::install_global(installed.clone()).is_ok());
    let other = UnifiedWebSocketManager::in_memory();
    let back = UnifiedWebSocketManager::install_global(other.clone())
        .expect_err("a global manager is already installed");
    assert!(back.same_as(&other));
    assert!(UnifiedWebSocketManager::global().same_as(&installed));
}
