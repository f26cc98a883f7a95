//! The event stream's metrics: streams opened, requests refused (by reason), events and
//! heartbeats written, write timeouts, and the final `close` events by code. Registered in
//! the server's registry by the application.

use agentwire_protocol::CloseCode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

use crate::ws::close_label;

type Labels = [(&'static str, &'static str); 1];

/// The event stream's metrics.
#[derive(Debug, Clone, Default)]
pub(crate) struct SseMetrics {
    opened: Counter,
    rejections: Family<Labels, Counter>,
    events_written: Counter,
    write_timeouts: Counter,
    closes: Family<Labels, Counter>,
}

impl SseMetrics {
    /// Creates the metrics and registers them in `registry`.
    pub(crate) fn register(registry: &mut Registry) -> SseMetrics {
        let m = SseMetrics::default();
        registry.register(
            "agentwire_sse_streams_opened",
            "/v1/stream requests answered with an event stream",
            m.opened.clone(),
        );
        registry.register(
            "agentwire_sse_rejections",
            "/v1/stream requests refused before the stream began, by reason",
            m.rejections.clone(),
        );
        registry.register(
            "agentwire_sse_messages_written",
            "SSE messages (events, replays, control frames) handed to event-stream connections",
            m.events_written.clone(),
        );
        registry.register(
            "agentwire_sse_write_timeouts",
            "Event-stream connections cut because a write did not finish within the write \
             timeout",
            m.write_timeouts.clone(),
        );
        registry.register(
            "agentwire_sse_closes",
            "Final `close` events sent on event streams, by close code",
            m.closes.clone(),
        );
        m
    }

    pub(crate) fn opened(&self) {
        self.opened.inc();
    }

    /// A request refused; `reason` as in `agentwire_handshake_rejections` (a token's
    /// `AuthError::reason`, `forbidden_origin`, `bad_request`, `shutting_down`) or a
    /// refused registration (`user_limit`, `node_full`, `broker`).
    pub(crate) fn rejected(&self, reason: &'static str) {
        self.rejections.get_or_create(&[("reason", reason)]).inc();
    }

    pub(crate) fn written(&self, messages: usize) {
        self.events_written.inc_by(messages as u64);
    }

    pub(crate) fn write_timeout(&self) {
        self.write_timeouts.inc();
    }

    pub(crate) fn closed(&self, code: CloseCode) {
        self.closes
            .get_or_create(&[("code", close_label(code))])
            .inc();
    }
}
