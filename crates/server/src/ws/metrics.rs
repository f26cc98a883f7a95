//! The WebSocket endpoint's metrics: handshake refusals (by reason: a refused token by its
//! `AuthError::reason`), frames written and the publish-to-write latency, write timeouts,
//! bad client frames and frame floods (with the cool-downs they start), token refreshes and
//! their refusals, and close codes. Registered in the server's registry by the application.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};

use agentwire_protocol::{CloseCode, Timestamp};
use bytes::Bytes;
use memchr::memmem;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Why a `/ws` handshake was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Rejection {
    /// The token was refused; the reason is its `AuthError::reason`.
    Token(&'static str),
    ForbiddenOrigin,
    BadRequest,
    ShuttingDown,
    /// The user is in its cool-down after a frame flood (`--client-frame-cooldown`).
    CoolingDown,
}

impl Rejection {
    /// The metric's `reason` label, also logged.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Rejection::Token(reason) => reason,
            Rejection::ForbiddenOrigin => "forbidden_origin",
            Rejection::BadRequest => "bad_request",
            Rejection::ShuttingDown => "shutting_down",
            Rejection::CoolingDown => "rate_limited",
        }
    }
}

type Labels = [(&'static str, &'static str); 1];

/// The WebSocket endpoint's metrics.
#[derive(Debug, Clone)]
pub(crate) struct WsMetrics {
    publish_to_write: Histogram,
    frames_written: Counter,
    direct_frames: Counter,
    direct_frames_split: Counter,
    write_timeouts: Counter,
    bad_frames: Counter,
    rate_limited: Counter,
    rate_limit_closes: Counter,
    cooldowns: Counter,
    cooldowns_cut: Counter,
    token_refreshes: Counter,
    token_refresh_refusals: Family<Labels, Counter>,
    handshake_rejections: Family<Labels, Counter>,
    closes: Family<Labels, Counter>,
    agui_forgotten: Counter,
    /// Frames whose `ts` could not be read; counted, never expected.
    unparsed_ts: Arc<AtomicU64>,
}

impl WsMetrics {
    /// Creates the metrics and registers them in `registry`.
    pub(crate) fn register(registry: &mut Registry) -> WsMetrics {
        let m = WsMetrics {
            publish_to_write: Histogram::new(exponential_buckets(0.000_5, 2.0, 16)),
            frames_written: Counter::default(),
            direct_frames: Counter::default(),
            direct_frames_split: Counter::default(),
            write_timeouts: Counter::default(),
            bad_frames: Counter::default(),
            rate_limited: Counter::default(),
            rate_limit_closes: Counter::default(),
            cooldowns: Counter::default(),
            cooldowns_cut: Counter::default(),
            token_refreshes: Counter::default(),
            token_refresh_refusals: Family::default(),
            handshake_rejections: Family::default(),
            closes: Family::default(),
            agui_forgotten: Counter::default(),
            unparsed_ts: Arc::default(),
        };
        registry.register(
            "agentwire_publish_to_write_seconds",
            "Time from the broker accepting an event to its frame being written to a socket",
            m.publish_to_write.clone(),
        );
        registry.register(
            "agentwire_frames_written",
            "Frames written to WebSocket connections (events, replays and control frames)",
            m.frames_written.clone(),
        );
        registry.register(
            "agentwire_direct_frames",
            "Event frames written by the task that delivered them, the connection's writer \
             waiting (counted in agentwire_frames_written too)",
            m.direct_frames.clone(),
        );
        registry.register(
            "agentwire_direct_frames_split",
            "Direct frames the socket took only in part, whose rest the writer wrote",
            m.direct_frames_split.clone(),
        );
        registry.register(
            "agentwire_write_timeouts",
            "Connections dropped because a write did not finish within the write timeout",
            m.write_timeouts.clone(),
        );
        registry.register(
            "agentwire_client_bad_frames",
            "Client frames answered with an `error` frame",
            m.bad_frames.clone(),
        );
        registry.register(
            "agentwire_client_frames_rate_limited",
            "Client frames dropped unread because the connection sent faster than \
             --client-frame-rate",
            m.rate_limited.clone(),
        );
        registry.register(
            "agentwire_client_rate_limit_closes",
            "Connections closed with 1008 because they kept sending faster than \
             --client-frame-rate",
            m.rate_limit_closes.clone(),
        );
        registry.register(
            "agentwire_client_frame_cooldowns",
            "Users put in cool-down (their handshakes refused with 429 for \
             --client-frame-cooldown) after a connection was closed with 1008 for its frame rate",
            m.cooldowns.clone(),
        );
        registry.register(
            "agentwire_client_frame_cooldowns_cut",
            "Cool-downs ended early to make room: MAX_COOLING_USERS users were already cooling \
             down on the node",
            m.cooldowns_cut.clone(),
        );
        registry.register(
            "agentwire_token_refreshes",
            "Connections whose expiry a `refresh_token` frame moved",
            m.token_refreshes.clone(),
        );
        registry.register(
            "agentwire_token_refresh_refusals",
            "`refresh_token` frames refused (each answered with an `error` frame), by reason",
            m.token_refresh_refusals.clone(),
        );
        registry.register(
            "agentwire_handshake_rejections",
            "/ws handshakes refused before the upgrade, by reason",
            m.handshake_rejections.clone(),
        );
        registry.register(
            "agentwire_closes",
            "Close frames sent by the server, by close code",
            m.closes.clone(),
        );
        registry.register(
            "agentwire_agui_messages_forgotten",
            "Streamed messages an AG-UI connection stopped tracking as open at \
             AGUI_MAX_OPEN_MESSAGES (their next delta opens them again)",
            m.agui_forgotten.clone(),
        );
        m
    }

    pub(crate) fn agui_messages_forgotten(&self, n: u64) {
        self.agui_forgotten.inc_by(n);
    }

    /// Records a batch of frames about to be written: one count for the batch, and each
    /// event frame's age into the latency histogram. `stamps[i]`, when there is one, is
    /// the `ts` of `frames[i]` as the manager queued it (`Connection::next_frames_stamped`);
    /// a frame without is read for its `ts` (`event_ts`).
    pub(crate) fn frames_written(&self, frames: &[Bytes], stamps: &[Option<u64>], now: Timestamp) {
        self.frames_written.inc_by(frames.len() as u64);
        let now = now.as_millis();
        for (i, frame) in frames.iter().enumerate() {
            let known = stamps.get(i).copied().flatten();
            if let Some(ts) = known.or_else(|| event_ts(frame)) {
                let ms = now.saturating_sub(ts);
                #[allow(clippy::cast_precision_loss)] // milliseconds fit an f64 exactly
                self.publish_to_write.observe(ms as f64 / 1_000.0);
            } else if frame.starts_with(b"{\"type\":\"") && frame_has_seq(frame) {
                self.unparsed_ts.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// A frame written by the task that delivered it ([`Self::frames_written`] counts it
    /// too); `split` when the socket took only part of it.
    pub(crate) fn direct_frame(&self, split: bool) {
        self.direct_frames.inc();
        if split {
            self.direct_frames_split.inc();
        }
    }

    pub(crate) fn write_timeout(&self) {
        self.write_timeouts.inc();
    }

    pub(crate) fn bad_frame(&self) {
        self.bad_frames.inc();
    }

    pub(crate) fn rate_limited(&self) {
        self.rate_limited.inc();
    }

    pub(crate) fn rate_limit_closed(&self) {
        self.rate_limit_closes.inc();
    }

    pub(crate) fn cooldown_started(&self, cut_another: bool) {
        self.cooldowns.inc();
        if cut_another {
            self.cooldowns_cut.inc();
        }
    }

    pub(crate) fn token_refreshed(&self) {
        self.token_refreshes.inc();
    }

    /// A `refresh_token` frame refused; `reason` is the `AuthError::reason` (or
    /// `token_other_user`).
    pub(crate) fn token_refresh_refused(&self, reason: &'static str) {
        self.token_refresh_refusals
            .get_or_create(&[("reason", reason)])
            .inc();
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

/// The `code` label of a close code.
pub(crate) fn close_label(code: CloseCode) -> &'static str {
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

/// The `ts` of an event frame, for a frame that came without its stamp (the manager
/// stamps every event frame it queues: see [`WsMetrics::frames_written`]). The manager
/// builds event frames as `{"type":"…","seq":N,"event_id":"…","ts":T,…`: the type name (no
/// quotes, no escapes) is followed at once by `","seq":`, and the first `,"ts":` after it
/// is the envelope's, since that sequence cannot occur unescaped inside a JSON string and
/// `data` comes after. Other frames (`connection_established`, `replay_gap`, `pong`,
/// `error`) carry no `ts`.
pub(crate) fn event_ts(frame: &[u8]) -> Option<u64> {
    const SEQ: &[u8] = b"\",\"seq\":";
    const TS: &[u8] = b",\"ts\":";
    // Built once: `memmem::find` would build its searcher again for every frame.
    static TS_FINDER: LazyLock<memmem::Finder<'static>> = LazyLock::new(|| memmem::Finder::new(TS));
    let rest = frame.strip_prefix(b"{\"type\":\"")?;
    let name_end = memchr::memchr(b'"', &rest[..rest.len().min(64)])?;
    let rest = rest[name_end..].strip_prefix(SEQ)?;
    let at = TS_FINDER.find(rest)? + TS.len();
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
