//! The process-wide manager created by `global()` when none was installed (issue 15): it
//! is in-memory with the default configuration, says so (`global_is_implicit`), and stays
//! the one manager — a later `install_global` is refused. One test only: the global is per
//! process.

use agentwire_manager::{ManagerConfig, UnifiedWebSocketManager};

#[test]
fn global_without_an_install_creates_an_implicit_default_manager() {
    assert!(UnifiedWebSocketManager::installed_global().is_none());
    assert!(!UnifiedWebSocketManager::global_is_implicit());
    let implicit = UnifiedWebSocketManager::global();
    assert!(UnifiedWebSocketManager::global_is_implicit());
    assert_eq!(*implicit.config(), ManagerConfig::default());
    assert!(UnifiedWebSocketManager::installed_global().is_some_and(|g| g.same_as(&implicit)));
    let late = UnifiedWebSocketManager::in_memory();
    assert!(UnifiedWebSocketManager::install_global(late).is_err());
    assert!(UnifiedWebSocketManager::global().same_as(&implicit));
}
