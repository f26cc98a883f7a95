//! The timers of a long-lived connection (a WebSocket, an event stream): heartbeats and
//! the token's expiry, armed so that no deadline overflows an `Instant`.

use std::time::Duration;

use agentwire_protocol::Timestamp;
use tokio::time::Instant;

/// The longest single timer armed; a later deadline is re-armed when this one fires, so
/// a far-future `exp` or a huge interval cannot overflow an `Instant`.
pub(crate) const MAX_TIMER: Duration = Duration::from_secs(30 * 24 * 3600);

/// `d` from now, capped at [`MAX_TIMER`].
pub(crate) fn after(d: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(d.min(MAX_TIMER)).unwrap_or(now)
}

/// Seconds since the Unix epoch → the `Instant` it falls on (capped at [`MAX_TIMER`]).
pub(crate) fn instant_at_unix(secs: u64) -> Instant {
    let now_ms = Timestamp::now().as_millis();
    let at_ms = secs.saturating_mul(1_000);
    after(Duration::from_millis(at_ms.saturating_sub(now_ms)))
}

/// When a connection's first heartbeat ping is due: somewhere in the interval's second
/// half, so connections that arrived together (a restart, a load test) do not ping all
/// at once, interval after interval.
pub(crate) fn first_ping(interval: Duration) -> Instant {
    let spread = interval / 2;
    let jitter = spread.mul_f64(rand::random::<f64>());
    after(spread + jitter)
}
