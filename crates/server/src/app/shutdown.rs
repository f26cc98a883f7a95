//! Graceful shutdown: the signals that start it, and the drain that ends every connection
//! with 1001 after its queue is flushed.

use std::future::Future;
use std::time::Duration;

use agentwire_protocol::CloseCode;
use tokio::time::Instant;

use super::state::AppState;

/// A future that resolves on SIGTERM or Ctrl-C (SIGINT). The handlers are installed when
/// this function is called, not when the future is first polled, so a signal that arrives
/// in between is not lost (nor does it kill the process). A handler that cannot be
/// installed is logged, and that signal is not awaited.
///
/// Call it inside a tokio runtime.
///
/// # Cancel safety
/// The returned future is cancel safe.
pub fn signal() -> impl Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let install = |kind: SignalKind, name: &'static str| match signal(kind) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(signal = name, error = %e, "cannot install a signal handler");
                None
            }
        };
        let mut term = install(SignalKind::terminate(), "SIGTERM");
        let mut int = install(SignalKind::interrupt(), "SIGINT");
        async move {
            let term = async {
                match term.as_mut() {
                    Some(s) => s.recv().await,
                    None => std::future::pending().await,
                }
            };
            let int = async {
                match int.as_mut() {
                    Some(s) => s.recv().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = term => tracing::info!("SIGTERM received"),
                _ = int => tracing::info!("Ctrl-C received"),
            }
        }
    }
    #[cfg(not(unix))]
    async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
        tracing::info!("Ctrl-C received");
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
