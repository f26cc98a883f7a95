//! Graceful shutdown: the signals that start it, and the drain that ends every connection
//! with 1001 after its queue is flushed.

use std::time::Duration;

use agentwire_protocol::CloseCode;
use tokio::time::Instant;

use crate::server::AppState;

/// Resolves on SIGTERM or Ctrl-C (SIGINT). If a handler cannot be installed, that signal
/// is simply not awaited; the future never resolves by itself.
///
/// # Cancel safety
/// Cancel safe.
pub async fn signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => tracing::info!("Ctrl-C received"),
        () = term => tracing::info!("SIGTERM received"),
    }
}

/// Marks the server as shutting down (`/readyz` answers 503, `/ws` refuses), asks every
/// connection to close with 1001 once its queue is written, and waits until none is left
/// or `deadline` passes. Returns how many connections were still open at the deadline.
pub(crate) async fn drain(app: &AppState, deadline: Instant) -> usize {
    app.begin_shutdown();
    let closing = app.manager.close_all(CloseCode::GoingAway);
    tracing::info!(connections = closing, "closing every connection with 1001");
    loop {
        let left = app.manager.connection_count();
        if left == 0 {
            return 0;
        }
        if Instant::now() >= deadline {
            tracing::warn!(
                connections = left,
                "shutdown timeout reached with connections open"
            );
            return left;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        // A handshake that was past its shutdown check when the drain began.
        app.manager.close_all(CloseCode::GoingAway);
    }
}
