//! Pins `Send`, `Sync` and `'static` on the public handles and errors, and `Send` on the
//! futures of the manager's async entry points, so a change that breaks spawning them
//! fails to compile here.

use std::future::Future;

use agentwire_manager::{
    BatchError, BrokerError, ConnectError, ConnectOptions, Connection, EmitError, InMemoryBroker,
    PreparedEvent, UnifiedWebSocketManager,
};
use agentwire_protocol::{Event, EventId, UserId};

fn send_sync_static<T: Send + Sync + 'static>() {}

fn send<F: Future + Send>(_: &F) {}

/// Never run: compiling it is the check that the futures are `Send`, so they can be
/// spawned on a multi-threaded runtime.
fn futures_are_send(
    m: UnifiedWebSocketManager,
    user: UserId,
    event: Event,
    c: Connection,
    id: EventId,
) {
    send(&m.connect_user(user.clone(), ConnectOptions::default()));
    let batch: Vec<PreparedEvent> = Vec::new();
    send(&m.emit_prepared_many(&batch));
    send(&m.lookup_event(&user, &id));
    send(&m.history(&user, agentwire_protocol::Seq::ZERO, 1));
    send(&m.broker_health());
    send(&m.emit_critical_event(&user, event));
    let mut out = Vec::new();
    send(&c.next_frames(&mut out, 16));
}

/// A compile-time check: it cannot fail at run time, it fails to build.
#[test]
fn handles_errors_and_futures_are_thread_safe() {
    send_sync_static::<UnifiedWebSocketManager>();
    send_sync_static::<Connection>();
    send_sync_static::<InMemoryBroker>();
    send_sync_static::<ConnectError>();
    send_sync_static::<EmitError>();
    send_sync_static::<BrokerError>();
    send_sync_static::<BatchError>();
    send_sync_static::<PreparedEvent>();
    let _ = futures_are_send as fn(UnifiedWebSocketManager, UserId, Event, Connection, EventId);
}
