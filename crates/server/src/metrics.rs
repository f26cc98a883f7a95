//! Prometheus metrics of one server instance: every counter and size of the manager's
//! `get_stats()` (read at scrape time), the server's own counters, and the
//! publish-to-write latency histogram.
//!
//! Each server has its own [`Registry`]; there is no process-wide recorder, so several
//! servers in one process (tests) each report exact values.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

use agentwire_manager::UnifiedWebSocketManager;
use agentwire_protocol::{CloseCode, EventType, Timestamp};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Why a `/ws` handshake was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Rejection {
    Unauthorized,
    ForbiddenOrigin,
    BadRequest,
    ShuttingDown,
}

impl Rejection {
    fn as_str(self) -> &'static str {
        match self {
            Rejection::Unauthorized => "unauthorized",
            Rejection::ForbiddenOrigin => "forbidden_origin",
            Rejection::BadRequest => "bad_request",
            Rejection::ShuttingDown => "shutting_down",
        }
    }
}

type Labels = [(&'static str, &'static str); 1];

/// The server's metrics.
pub(crate) struct Metrics {
    registry: Registry,
    publish_to_write: Histogram,
    frames_written: Counter,
    write_timeouts: Counter,
    bad_frames: Counter,
    token_refreshes: Counter,
    handshake_rejections: Family<Labels, Counter>,
    closes: Family<Labels, Counter>,
    /// The publish API's and the history read's.
    pub(crate) publish: crate::publish::PublishMetrics,
    /// Frames whose `ts` could not be read; counted, never expected.
    unparsed_ts: AtomicU64,
}

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    pub(crate) fn new(manager: UnifiedWebSocketManager) -> Metrics {
        let mut registry = Registry::default();
        let publish_to_write = Histogram::new(exponential_buckets(0.000_5, 2.0, 16));
        let frames_written = Counter::default();
        let write_timeouts = Counter::default();
        let bad_frames = Counter::default();
        let token_refreshes = Counter::default();
        let handshake_rejections = Family::<Labels, Counter>::default();
        let closes = Family::<Labels, Counter>::default();
        registry.register(
            "agentwire_publish_to_write_seconds",
            "Time from the broker accepting an event to its frame being written to a socket",
            publish_to_write.clone(),
        );
        registry.register(
            "agentwire_frames_written",
            "Frames written to WebSocket connections (events, replays and control frames)",
            frames_written.clone(),
        );
        registry.register(
            "agentwire_write_timeouts",
            "Connections dropped because a write did not finish within the write timeout",
            write_timeouts.clone(),
        );
        registry.register(
            "agentwire_client_bad_frames",
            "Client frames answered with an `error` frame",
            bad_frames.clone(),
        );
        registry.register(
            "agentwire_token_refreshes",
            "Connections whose expiry a `refresh_token` frame moved",
            token_refreshes.clone(),
        );
        registry.register(
            "agentwire_handshake_rejections",
            "/ws handshakes refused before the upgrade, by reason",
            handshake_rejections.clone(),
        );
        registry.register(
            "agentwire_closes",
            "Close frames sent by the server, by close code",
            closes.clone(),
        );
        let publish = crate::publish::PublishMetrics::register(&mut registry);
        registry.register_collector(Box::new(ManagerCollector { manager }));
        Metrics {
            registry,
            publish_to_write,
            frames_written,
            write_timeouts,
            bad_frames,
            token_refreshes,
            handshake_rejections,
            closes,
            publish,
            unparsed_ts: AtomicU64::new(0),
        }
    }

    /// The Prometheus text exposition of every metric.
    pub(crate) fn render(&self) -> String {
        let mut out = String::with_capacity(8 * 1024);
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }

    /// Records a frame about to be written; event frames feed the latency histogram.
    pub(crate) fn frame_written(&self, frame: &[u8], now: Timestamp) {
        self.frames_written.inc();
        if let Some(ts) = event_ts(frame) {
            let ms = now.as_millis().saturating_sub(ts);
            #[allow(clippy::cast_precision_loss)] // milliseconds fit an f64 exactly
            self.publish_to_write.observe(ms as f64 / 1_000.0);
        } else if frame.starts_with(b"{\"type\":\"") && frame_has_seq(frame) {
            self.unparsed_ts.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub(crate) fn write_timeout(&self) {
        self.write_timeouts.inc();
    }

    pub(crate) fn bad_frame(&self) {
        self.bad_frames.inc();
    }

    pub(crate) fn token_refreshed(&self) {
        self.token_refreshes.inc();
    }

    pub(crate) fn rejected(&self, why: Rejection) {
        self.handshake_rejections
            .get_or_create(&[("reason", why.as_str())])
            .inc();
    }

    pub(crate) fn closed(&self, code: CloseCode) {
        self.closes
            .get_or_create(&[("code", close_label(code))])
            .inc();
    }
}

fn close_label(code: CloseCode) -> &'static str {
    match code.code() {
        1000 => "1000",
        1001 => "1001",
        1002 => "1002",
        1007 => "1007",
        1008 => "1008",
        1009 => "1009",
        1011 => "1011",
        1013 => "1013",
        4001 => "4001",
        4002 => "4002",
        4003 => "4003",
        4004 => "4004",
        _ => "other",
    }
}

fn frame_has_seq(frame: &[u8]) -> bool {
    frame.windows(7).take(64).any(|w| w == b",\"seq\":")
}

/// The `ts` of an event frame. The manager builds event frames as
/// `{"type":"…","seq":N,"event_id":"…","ts":T,…`: the type name (no quotes, no escapes)
/// is followed at once by `","seq":`, and the first `,"ts":` after it is the envelope's,
/// since that sequence cannot occur unescaped inside a JSON string and `data` comes after.
/// Other frames (`connection_established`, `replay_gap`, `pong`, `error`) carry no `ts`.
///
/// Called for every frame written, so it reads the frame once, left to right, and stops
/// at the `ts` (a search with `windows` over the head of every frame cost more than the
/// rest of the writer's own work per frame).
pub(crate) fn event_ts(frame: &[u8]) -> Option<u64> {
    const SEQ: &[u8] = b"\",\"seq\":";
    const TS: &[u8] = b",\"ts\":";
    let rest = frame.strip_prefix(b"{\"type\":\"")?;
    let name_end = rest.iter().take(64).position(|&b| b == b'"')?;
    let rest = rest[name_end..].strip_prefix(SEQ)?;
    let at = memchr::memmem::find(rest, TS)? + TS.len();
    let digits = &rest[at..];
    let n = digits.iter().take_while(|b| b.is_ascii_digit()).count();
    if n == 0 || n > 19 {
        return None;
    }
    Some(
        digits[..n]
            .iter()
            .fold(0u64, |v, d| v * 10 + u64::from(d - b'0')),
    )
}

/// Reads the manager's stats at scrape time.
#[derive(Debug)]
struct ManagerCollector {
    manager: UnifiedWebSocketManager,
}

fn counter(enc: &mut DescriptorEncoder<'_>, name: &str, help: &str, v: u64) -> fmt::Result {
    let c = ConstCounter::new(v);
    let m = enc.encode_descriptor(name, help, None, c.metric_type())?;
    c.encode(m)
}

fn gauge(enc: &mut DescriptorEncoder<'_>, name: &str, help: &str, v: u64) -> fmt::Result {
    let g = ConstGauge::new(i64::try_from(v).unwrap_or(i64::MAX));
    let m = enc.encode_descriptor(name, help, None, g.metric_type())?;
    g.encode(m)
}

impl Collector for ManagerCollector {
    fn encode(&self, mut enc: DescriptorEncoder<'_>) -> fmt::Result {
        let s = self.manager.get_stats();
        let n = |v: usize| u64::try_from(v).unwrap_or(u64::MAX);
        let e = &mut enc;
        gauge(
            e,
            "agentwire_connections",
            "Live connections on this node",
            n(s.connections),
        )?;
        gauge(
            e,
            "agentwire_users",
            "Users with at least one live connection",
            n(s.users),
        )?;
        gauge(
            e,
            "agentwire_max_connections_of_a_user",
            "The most connections any one user holds",
            n(s.max_connections_of_a_user),
        )?;
        counter(
            e,
            "agentwire_connections_opened",
            "Connections accepted",
            s.connections_opened,
        )?;
        counter(
            e,
            "agentwire_connections_closed",
            "Connections removed",
            s.connections_closed,
        )?;
        counter(
            e,
            "agentwire_events_emitted",
            "Events accepted by the broker through this node (duplicates excluded)",
            s.events_emitted,
        )?;
        {
            let c = ConstCounter::new(0u64);
            let mut m = e.encode_descriptor(
                "agentwire_events_emitted_by_type",
                "Events accepted by the broker through this node, by type",
                None,
                c.metric_type(),
            )?;
            for (t, v) in EventType::ALL.iter().zip(s.events_emitted_by_type) {
                let labels = [("type", t.as_str())];
                ConstCounter::new(v).encode(m.encode_family(&labels)?)?;
            }
        }
        counter(
            e,
            "agentwire_events_delivered",
            "Live events queued to connections (one per connection reached)",
            s.events_delivered,
        )?;
        counter(
            e,
            "agentwire_events_replayed",
            "History events queued to resuming connections",
            s.events_replayed,
        )?;
        counter(
            e,
            "agentwire_replay_gaps",
            "replay_gap frames sent",
            s.replay_gaps,
        )?;
        counter(
            e,
            "agentwire_events_deduplicated",
            "Emits answered as duplicates of an earlier event_id",
            s.events_deduplicated,
        )?;
        counter(
            e,
            "agentwire_emit_failures",
            "Emits that failed",
            s.emit_failures,
        )?;
        counter(
            e,
            "agentwire_evictions",
            "Connections closed with 4003 to make room for a newer one of the same user",
            s.evictions,
        )?;
        counter(
            e,
            "agentwire_rejections_user_limit",
            "Connections refused with 4004 (per-user limit, policy reject)",
            s.rejections_user_limit,
        )?;
        counter(
            e,
            "agentwire_rejections_node_full",
            "Connections refused with 1013 (node connection limit)",
            s.rejections_node_full,
        )?;
        counter(
            e,
            "agentwire_slow_consumer_closes",
            "Connections closed with 1013 because their queue overflowed",
            s.slow_consumer_closes,
        )?;
        counter(
            e,
            "agentwire_heartbeat_timeouts",
            "Connections closed because their peer went silent",
            s.heartbeat_timeouts,
        )?;
        gauge(
            e,
            "agentwire_history_events",
            "Events held in history",
            s.history_events,
        )?;
        gauge(
            e,
            "agentwire_history_bytes",
            "Bytes held in history",
            s.history_bytes,
        )?;
        gauge(
            e,
            "agentwire_history_users",
            "Users whose stream the broker holds",
            s.history_users,
        )?;
        counter(
            e,
            "agentwire_history_trimmed",
            "Events trimmed from history by its bounds",
            s.history_trimmed,
        )?;
        gauge(
            e,
            "agentwire_dedupe_ids",
            "Event ids remembered for deduplication (in history or the dedupe window)",
            s.dedupe_ids,
        )?;
        counter(
            e,
            "agentwire_event_id_conflicts",
            "Emits refused because their event_id was accepted for a different event",
            s.event_id_conflicts,
        )?;
        counter(
            e,
            "agentwire_resyncs",
            "Broker signals that deliveries may have been missed (the user's connections catch up from history)",
            s.resyncs,
        )?;
        counter(
            e,
            "agentwire_catch_up_failures",
            "Connections closed with 1011 because history could not be read, or did not reach delivered events, within the catch-up wait",
            s.catch_up_failures,
        )?;
        gauge(
            e,
            "agentwire_queued_frames",
            "Frames waiting in connection queues, over all connections",
            s.queued_frames,
        )?;
        gauge(
            e,
            "agentwire_queued_bytes",
            "Bytes waiting in connection queues, over all connections (each at most --queue-max-bytes)",
            s.queued_bytes,
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ts_is_read_from_event_frames_only() {
        let frame = br#"{"type":"custom","seq":3,"event_id":"x,\"ts\":1","ts":1700,"data":{"name":"n","value":{"ts":5}}}"#;
        assert_eq!(event_ts(frame), Some(1700));
        let hello = br#"{"type":"connection_established","connection_id":"c","user_id":"u","epoch":"e","heartbeat_interval_ms":1,"last_seq":0,"resumed":false}"#;
        assert_eq!(event_ts(hello), None);
        assert_eq!(event_ts(br#"{"type":"pong"}"#), None);
        assert_eq!(
            event_ts(br#"{"type":"replay_gap","from_seq":1,"to_seq":2}"#),
            None
        );
    }
}
