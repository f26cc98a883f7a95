//! `agentwire-bridge`: `AgentWebSocketBridge`, the integration point between an agent
//! runtime (registry, execution engine, tool dispatcher) and the emitter.
//!
//! What it is not: an agent runtime. It only reports what a runtime does.
//!
//! Key decision: every run is checked against the protocol's `RunState`, and a run that is
//! dropped unfinished still ends, with `agent_error`.
