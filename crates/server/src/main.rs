//! The `agentwire-server` binary: runs the WebSocket event-delivery server.
//!
//! It is not a library; everything it does is in the `agentwire_server` crate, which other
//! axum applications can mount instead.

fn main() -> anyhow::Result<()> {
    Ok(())
}
