//! Pins `Send`/`Sync` on the public handles of the emitter and the bridge, and `Send` on
//! the futures of their async methods, so an agent runtime can hold them in shared state
//! and await them inside `tokio::spawn`.

use agentwire_bridge::{AgentBridgeExt, AgentHooks, AgentRun, AgentWebSocketBridge};
use agentwire_emitter::{
    RunContext, UnifiedWebSocketEmitter, WebSocketEmitterFactory, WebSocketEmitterPool,
};
use agentwire_manager::UnifiedWebSocketManager;
use serde_json::Value;

fn send_sync<T: Send + Sync + 'static>() {}
fn send<T: Send>(_: &T) {}

#[test]
fn handles_are_send_and_sync() {
    send_sync::<UnifiedWebSocketEmitter>();
    send_sync::<WebSocketEmitterFactory>();
    send_sync::<WebSocketEmitterPool>();
    send_sync::<AgentWebSocketBridge>();
    send_sync::<AgentRun>();
    send_sync::<RunContext>();
    send_sync::<std::sync::Arc<dyn AgentHooks>>();
}

#[test]
fn async_methods_return_send_futures() {
    let bridge = UnifiedWebSocketManager::in_memory().create_agent_bridge();
    let run = RunContext::new(
        "u".parse().expect("id"),
        "t".parse().expect("id"),
        "r".parse().expect("id"),
    );
    let emitter = bridge.emitter(&run).expect("room in the pool");
    send(&emitter.emit_agent_started("a"));
    send(&emitter.emit_custom("x", Value::Null));
    send(&emitter.settle());
    send(&bridge.pool().settle_unsettled());
    send(&bridge.start_run(run.clone(), "a"));
    send(&bridge.run_tool(&run, "t", Value::Null, async { Ok::<_, String>(1) }));
    send(&bridge.on_thinking(&run, "x", None));
}
