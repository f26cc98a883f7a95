//! `agentwire`: the facade crate. It re-exports every layer of agentwire under one name and
//! hosts the module paths of the system agentwire replaces, so old imports keep resolving.
//!
//! What it is not: a place for logic. Everything here is a re-export or a deprecated alias.
//!
//! Key decision: one dependency gives a user the whole stack; the layered crates stay
//! usable on their own.

pub use agentwire_bridge as bridge;
pub use agentwire_emitter as emitter;
pub use agentwire_manager as manager;
pub use agentwire_protocol as protocol;
pub use agentwire_server as server;
