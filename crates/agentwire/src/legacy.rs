//! The names and module paths of the system agentwire replaces, kept so that code written
//! against them still compiles — with a deprecation warning naming the replacement.
//!
//! What it is not: a second API. Every item is a `#[deprecated]` alias of the current one
//! (a type alias, or a function that calls the current one); nothing here has behaviour of
//! its own. Each old path has its own item, so `-D deprecated` fails once per path, and
//! `cargo xtask check` proves it on a fixture crate. `docs/migration.md` tables every item
//! with its replacement; `cargo xtask migrate --fix` rewrites them. This file is one of
//! the few places allowed to name them (see `xtask/src/legacy.rs`).

/// The old `websocket_core` package: the manager, the emitter and the heartbeat manager,
/// as its `__init__` exported them.
pub mod websocket_core {
    /// The old name of the manager.
    #[deprecated(note = "use `agentwire::UnifiedWebSocketManager`")]
    pub type WebSocketManager = crate::UnifiedWebSocketManager;

    /// The old name of the emitter.
    #[deprecated(note = "use `agentwire::UnifiedWebSocketEmitter`")]
    pub type WebSocketEventEmitter = crate::UnifiedWebSocketEmitter;

    /// The old singleton accessor.
    #[deprecated(note = "use `agentwire::UnifiedWebSocketManager::global()`")]
    pub fn get_websocket_manager() -> crate::UnifiedWebSocketManager {
        crate::UnifiedWebSocketManager::global()
    }

    /// The old heartbeat manager; heartbeats are now a policy of the manager's
    /// configuration (`ManagerConfig::heartbeat`), enforced by its sweeper and the server.
    #[deprecated(note = "use `agentwire::HeartbeatPolicy` (set in `ManagerConfig::heartbeat`)")]
    pub type WebSocketHeartbeatManager = crate::HeartbeatPolicy;

    /// The old `websocket_core/manager.py`.
    pub mod manager {
        /// The old name of the manager.
        #[deprecated(note = "use `agentwire::UnifiedWebSocketManager`")]
        pub type WebSocketManager = crate::UnifiedWebSocketManager;

        /// The old singleton accessor.
        #[deprecated(note = "use `agentwire::UnifiedWebSocketManager::global()`")]
        pub fn get_websocket_manager() -> crate::UnifiedWebSocketManager {
            crate::UnifiedWebSocketManager::global()
        }
    }

    /// The old `websocket_core/isolated_event_emitter.py`.
    pub mod isolated_event_emitter {
        /// The old per-user emitter; every emitter is isolated to its run's user now.
        #[deprecated(note = "use `agentwire::UnifiedWebSocketEmitter`")]
        pub type IsolatedWebSocketEventEmitter = crate::UnifiedWebSocketEmitter;
    }
}

/// The old `websocket` package.
pub mod websocket {
    /// The old connection-scoped `websocket/manager.py`, merged into the manager.
    pub mod manager {
        /// The old connection-scoped manager.
        #[deprecated(note = "use `agentwire::UnifiedWebSocketManager`")]
        pub type WebSocketManager = crate::UnifiedWebSocketManager;
    }
}

/// The old `services` package.
pub mod services {
    /// The old `services/websocket_event_emitter.py`.
    pub mod websocket_event_emitter {
        /// The old name of the emitter.
        #[deprecated(note = "use `agentwire::UnifiedWebSocketEmitter`")]
        pub type WebSocketEventEmitter = crate::UnifiedWebSocketEmitter;

        /// The old name of the emitter factory.
        #[deprecated(note = "use `agentwire::WebSocketEmitterFactory`")]
        pub type WebSocketEventEmitterFactory = crate::WebSocketEmitterFactory;
    }

    /// The old `services/websocket_emitter_pool.py`.
    pub mod websocket_emitter_pool {
        /// The pool, at its old path.
        #[deprecated(note = "use `agentwire::WebSocketEmitterPool`")]
        pub type WebSocketEmitterPool = crate::WebSocketEmitterPool;
    }

    /// The old `services/user_websocket_emitter.py`.
    pub mod user_websocket_emitter {
        /// The old per-user emitter.
        #[deprecated(note = "use `agentwire::UnifiedWebSocketEmitter`")]
        pub type UserWebSocketEmitter = crate::UnifiedWebSocketEmitter;

        /// The old optimized per-user emitter.
        #[deprecated(note = "use `agentwire::UnifiedWebSocketEmitter`")]
        pub type OptimizedUserWebSocketEmitter = crate::UnifiedWebSocketEmitter;
    }

    /// The old `services/websocket_bridge_factory.py`.
    pub mod websocket_bridge_factory {
        /// The old bridge factory. Bridges are now created by the manager:
        /// `manager.create_agent_bridge()` through `agentwire::AgentBridgeExt`.
        #[deprecated(
            note = "use `agentwire::UnifiedWebSocketManager` and its `create_agent_bridge()` (trait `agentwire::AgentBridgeExt`)"
        )]
        pub type WebSocketBridgeFactory = crate::UnifiedWebSocketManager;
    }
}

#[cfg(test)]
#[allow(deprecated)]
mod tests {
    use std::time::Duration;

    use agentwire_manager::{ConnectOptions, Outbound};
    use agentwire_protocol::ServerFrame;

    use crate::{AgentBridgeExt, RunContext, UnifiedWebSocketManager};

    /// The old singleton accessors, `global()` and a manager the server installed are one
    /// manager: an event emitted through the old names reaches the installed manager's
    /// connections.
    #[tokio::test]
    async fn old_accessors_reach_the_installed_managers_connections() {
        let installed = UnifiedWebSocketManager::in_memory();
        UnifiedWebSocketManager::install_global(installed.clone()).expect("first install");
        let conn = installed
            .connect_user("alice".parse().expect("id"), ConnectOptions::default())
            .await
            .expect("connect");

        let old: super::websocket_core::WebSocketManager =
            super::websocket_core::get_websocket_manager();
        assert!(old.same_as(&installed));
        assert!(super::websocket_core::manager::get_websocket_manager().same_as(&installed));
        assert!(UnifiedWebSocketManager::global().same_as(&installed));

        let factory: super::services::websocket_bridge_factory::WebSocketBridgeFactory = old;
        let run = factory
            .create_agent_bridge()
            .start_run(
                RunContext::new(
                    "alice".parse().expect("id"),
                    "t1".parse().expect("id"),
                    "r1".parse().expect("id"),
                ),
                "legacy",
            )
            .await
            .expect("start");
        run.complete(serde_json::Value::Null)
            .await
            .expect("complete");

        let mut events = 0;
        while events < 2 {
            let mut frames = Vec::new();
            let next =
                tokio::time::timeout(Duration::from_secs(5), conn.next_frames(&mut frames, 64));
            assert_eq!(next.await.expect("frames arrive"), Outbound::Frames);
            events += frames
                .iter()
                .filter(|f| matches!(ServerFrame::decode(f), Ok(ServerFrame::Event(_))))
                .count();
        }
    }
}
