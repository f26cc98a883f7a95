//! Shared helpers of the bridge tests: the emitter tests' helpers (ids, the manager's
//! `FaultyBroker`, a reader of a connection's frames), and a bridge over an in-memory
//! manager with one connection of alice's.

#![allow(dead_code, unreachable_pub)]

#[path = "../../../emitter/tests/support/mod.rs"]
mod emitter;

use agentwire_bridge::{AgentBridgeExt, AgentWebSocketBridge};
use agentwire_manager::{ConnectOptions, Connection, UnifiedWebSocketManager};
pub use emitter::*;

/// A bridge with default configuration over a fresh in-memory manager, and a connection
/// of user `alice` on that manager.
pub async fn setup() -> (AgentWebSocketBridge, Connection) {
    let manager = UnifiedWebSocketManager::in_memory();
    let conn = manager
        .connect_user(user("alice"), ConnectOptions::default())
        .await
        .expect("connect");
    (manager.create_agent_bridge(), conn)
}
