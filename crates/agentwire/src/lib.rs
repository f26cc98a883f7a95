//! `agentwire`: the facade crate. It re-exports every layer of agentwire under one name,
//! the names an application uses most at the top level, and hosts the module paths of the
//! system agentwire replaces, so old imports keep resolving.
//!
//! What it is not: a place for logic. Everything here is a re-export or a deprecated alias.
//!
//! Key decision: one dependency gives a user the whole stack, and the layered crates stay
//! usable on their own. Features choose the layers, the way axum's and tokio's do:
//! `server` (the default) brings everything but Redis; `redis` adds the Redis broker (and
//! `--broker redis` to the server); `bridge` the bridge, the emitter and the
//! manager without axum or hyper; `emitter` the emitter and the manager. The protocol and
//! the manager are always there. The legacy names live only in one private module re-exported at
//! the crate root under the old module paths, each a `#[deprecated]` alias whose note
//! names its replacement; `docs/migration.md` tables them and `cargo xtask migrate`
//! rewrites them.
//!
//! ```
//! use agentwire::{AgentBridgeExt, RunContext, UnifiedWebSocketManager};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let bridge = UnifiedWebSocketManager::global().create_agent_bridge();
//! let run = bridge
//!     .start_run(RunContext::new("alice".parse()?, "t1".parse()?, "r1".parse()?), "triage")
//!     .await?;
//! run.complete(serde_json::json!("done")).await?;
//! # Ok(())
//! # }
//! ```

#[cfg(feature = "bridge")]
pub use agentwire_bridge as bridge;
#[cfg(feature = "emitter")]
pub use agentwire_emitter as emitter;
pub use agentwire_manager as manager;
pub use agentwire_protocol as protocol;
#[cfg(feature = "redis")]
pub use agentwire_redis as redis;
#[cfg(feature = "server")]
pub use agentwire_server as server;

#[cfg(feature = "bridge")]
pub use agentwire_bridge::{
    AgentBridgeExt, AgentHooks, AgentRun, AgentWebSocketBridge, BridgeConfig, ToolError,
};
#[cfg(feature = "emitter")]
pub use agentwire_emitter::{
    EmitterError, EmitterMetrics, PoolConfig, PoolStats, RetryPolicy, RunContext,
    UnifiedWebSocketEmitter, WebSocketEmitterFactory, WebSocketEmitterPool,
};
pub use agentwire_manager::{
    HeartbeatPolicy, InMemoryBroker, ManagerConfig, ManagerStats, UnifiedWebSocketManager,
};

#[cfg(feature = "emitter")]
mod legacy;

#[cfg(feature = "emitter")]
pub use legacy::*;
