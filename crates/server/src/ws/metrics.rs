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

/// The `ts` of an event frame. The manager builds event frames as
/// `{"type":"…","seq":N,"event_id":"…","ts":T,…`: the type name (no quotes, no escapes)
/// is followed at once by `","seq":`, and the first `,"ts":` after it is the envelope's,
/// since that sequence cannot occur unescaped inside a JSON string and `data` comes after.
/// Other frames (`connection_established`, `replay_gap`, `pong`, `error`) carry no `ts`.
///
/// Called for every frame written, so the frame is read once, left to right: past the
/// `seq`'s digits and `,"event_id":"`, the first `"` after that ends the event id, and
/// `","ts":` follows it. Up to there no quote pair of `,"ts":` fits anywhere else, so
/// that `ts` is the first one, as a search would find it; a frame laid out otherwise is
/// searched for its first `,"ts":` (`ts_searched`).
pub(crate) fn event_ts(frame: &[u8]) -> Option<u64> {
    const EVENT_ID: &[u8] = b",\"event_id\":\"";
    const TS: &[u8] = b"\",\"ts\":";
    let rest = after_seq(frame)?;
    let seq_digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    if let Some(id) = rest[seq_digits..].strip_prefix(EVENT_ID)
        && let Some(end) = find_quote(id)
        && let Some(ts) = id[end..].strip_prefix(TS)
    {
        return leading_u64(ts);
    }
    ts_searched(rest)
}

/// What follows `{"type":"<name>","seq":` in an event frame.
fn after_seq(frame: &[u8]) -> Option<&[u8]> {
    const SEQ: &[u8] = b"\",\"seq\":";
    let rest = frame.strip_prefix(b"{\"type\":\"")?;
    let name_end = find_quote(&rest[..rest.len().min(64)])?;
    rest[name_end..].strip_prefix(SEQ)
}

/// Where the first `"` in `bytes` is. What it looks through is short (a type name, an
/// event id), so it reads eight bytes at a time itself rather than calling `memchr`.
fn find_quote(bytes: &[u8]) -> Option<usize> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    let mut at = 0;
    let mut chunks = bytes.chunks_exact(8);
    for chunk in &mut chunks {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        // A quote becomes a zero byte; the lowest flagged byte is the first zero (bytes
        // above it may be flagged too, by the borrow).
        let x = u64::from_le_bytes(word) ^ (u64::from(b'"') * ONES);
        let zeros = x.wrapping_sub(ONES) & !x & HIGHS;
        if zeros != 0 {
            return Some(at + zeros.trailing_zeros() as usize / 8);
        }
        at += 8;
    }
    chunks
        .remainder()
        .iter()
        .position(|&b| b == b'"')
        .map(|i| at + i)
}

/// The number after the first `,"ts":` in `rest` (what follows the `seq` key).
fn ts_searched(rest: &[u8]) -> Option<u64> {
    const TS: &[u8] = b",\"ts\":";
    // Built once: `memmem::find` would build its searcher again for every frame.
    static TS_FINDER: LazyLock<memmem::Finder<'static>> = LazyLock::new(|| memmem::Finder::new(TS));
    let at = TS_FINDER.find(rest)? + TS.len();
    leading_u64(&rest[at..])
}

/// The run of ASCII digits `digits` starts with, as a number: `None` when there is none
/// or when it is longer than 19 digits (so it always fits a `u64`). Eight digits at a time
/// while they last (a `ts` in milliseconds has 13), then one at a time.
fn leading_u64(digits: &[u8]) -> Option<u64> {
    let mut value = 0u64;
    let mut n = 0;
    let mut rest = digits;
    while n + 8 <= 19
        && let Some(chunk) = rest.first_chunk::<8>()
        && let Some(eight) = eight_digits(u64::from_le_bytes(*chunk))
    {
        value = value * 100_000_000 + eight;
        n += 8;
        rest = &rest[8..];
    }
    for &d in rest {
        if !d.is_ascii_digit() {
            break;
        }
        if n == 19 {
            return None;
        }
        value = value * 10 + u64::from(d - b'0');
        n += 1;
    }
    (n > 0).then_some(value)
}

/// The number eight ASCII digits spell, read as one little-endian word (the first digit
/// in the lowest byte); `None` unless all eight are digits.
fn eight_digits(word: u64) -> Option<u64> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0xF0F0_F0F0_F0F0_F0F0;
    // Every byte is 0x30..=0x39: its high nibble is 3, and adding 6 leaves it 3.
    if word & HIGH != 0x30 * ONES || word.wrapping_add(6 * ONES) & HIGH != 0x30 * ONES {
        return None;
    }
    let d = word - 0x30 * ONES;
    // Pairs, then fours, then all eight.
    let pairs = d.wrapping_mul(10).wrapping_add(d >> 8);
    const LOW_OF_FOURS: u64 = 0x0000_00FF_0000_00FF;
    let eight = (pairs & LOW_OF_FOURS)
        .wrapping_mul(100 + (1_000_000 << 32))
        .wrapping_add(((pairs >> 16) & LOW_OF_FOURS).wrapping_mul(1 + (10_000 << 32)))
        >> 32;
    Some(eight)
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

    /// `event_ts` as it was before it read the event id's layout: the first `,"ts":` after
    /// `","seq":`, found by a search.
    fn event_ts_by_search(frame: &[u8]) -> Option<u64> {
        const SEQ: &[u8] = b"\",\"seq\":";
        const TS: &[u8] = b",\"ts\":";
        let rest = frame.strip_prefix(b"{\"type\":\"")?;
        let name_end = memchr::memchr(b'"', &rest[..rest.len().min(64)])?;
        let rest = rest[name_end..].strip_prefix(SEQ)?;
        let at = memmem::find(rest, TS)? + TS.len();
        leading_u64_by_digit(&rest[at..])
    }

    /// The number at the start of `digits`, one digit at a time.
    fn leading_u64_by_digit(digits: &[u8]) -> Option<u64> {
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

    /// Runs of every length up to 24, each byte a digit or one of the bytes next to the
    /// digits in ASCII (`/` and `:`), or any byte at all.
    #[test]
    fn numbers_read_eight_digits_at_a_time_match_one_at_a_time() {
        let mut rng = Rng(0x2545_f491_4f6c_dd1d);
        for _ in 0..200_000 {
            let len = rng.below(25);
            let digits: Vec<u8> = (0..len)
                .map(|_| match rng.below(20) {
                    0 => b'/',
                    1 => b':',
                    2 => rng.next() as u8,
                    _ => b'0' + rng.below(10) as u8,
                })
                .collect();
            assert_eq!(
                leading_u64(&digits),
                leading_u64_by_digit(&digits),
                "{}",
                String::from_utf8_lossy(&digits)
            );
        }
        for s in [
            "18446744073709551615",
            "9999999999999999999",
            "00000000",
            "12345678",
        ] {
            assert_eq!(
                leading_u64(s.as_bytes()),
                leading_u64_by_digit(s.as_bytes()),
                "{s}"
            );
        }
    }

    /// Every position of a quote, or none, in strings of every length up to 40, among
    /// bytes that differ from a quote by one bit, other quotes after it included.
    #[test]
    fn the_first_quote_is_found_where_memchr_finds_it() {
        let mut rng = Rng(0x1234_5678_9abc_def1);
        for _ in 0..100_000 {
            let len = rng.below(41);
            let bytes: Vec<u8> = (0..len)
                .map(|_| match rng.below(8) {
                    0 => b'"',
                    1 => b'"' ^ (1 << rng.below(8)),
                    2 => 0,
                    3 => 0xff,
                    _ => rng.next() as u8,
                })
                .collect();
            assert_eq!(
                find_quote(&bytes),
                memchr::memchr(b'"', &bytes),
                "{bytes:?}"
            );
        }
    }

    /// A small deterministic generator (xorshift), so every run checks the same frames.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }

        fn pick<'a>(&mut self, from: &[&'a str]) -> &'a str {
            from[self.below(from.len())]
        }
    }

    /// Frames laid out as the manager writes them, and near misses of that layout (pieces
    /// left out, quotes and `,"ts":` inside the event id, long or missing numbers, bytes
    /// changed anywhere): reading the layout finds the same `ts` as the search does.
    #[test]
    fn reading_the_layout_finds_the_ts_a_search_finds() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let prefixes = [
            "{\"type\":\"",
            "{\"type\":\"",
            "{\"type\": \"",
            "{\"typ\":\"",
            "",
        ];
        let names = ["custom", "message_delta", "", "a\\\"b", "x,\"ts\":1"];
        let seqs = ["\",\"seq\":", "\",\"seq\":", "\",\"seq\" :", "\",\"sq\":"];
        let seq_digits = ["3", "123456", "", "1a", "99999999999999999999999"];
        let ids = [
            ",\"event_id\":\"",
            ",\"event_id\":\"",
            ",\"event_id\": \"",
            ",\"id\":\"",
            "",
        ];
        let id_bodies = [
            "018f2b9c-1d2e-7a3b-8c4d-5e6f7a8b9c0d",
            "",
            "x,\\\"ts\\\":1",
            "x\\\",\\\"ts\\\":2",
            "\\\\",
            ",",
            "ab",
            "\",\"ts\":7,\"",
        ];
        let ts_keys = [
            "\",\"ts\":",
            "\",\"ts\":",
            "\", \"ts\":",
            "\",\"ts\" :",
            "\",\"tz\":",
            "\"",
        ];
        let ts_digits = [
            "1700000000000",
            "0",
            "",
            "-1",
            "1234567890123456789",
            "12345678901234567890",
            "18446744073709551615",
            "9999999999999999999",
        ];
        let tails = [",\"data\":{\"ts\":5}}", "}", "", ",\"ts\":42}", "x"];
        let noise = [b'"', b',', b':', b't', b's', b'1', b'\\', b'x'];
        for _ in 0..200_000 {
            let mut frame = String::new();
            frame.push_str(rng.pick(&prefixes));
            frame.push_str(rng.pick(&names));
            frame.push_str(rng.pick(&seqs));
            frame.push_str(rng.pick(&seq_digits));
            frame.push_str(rng.pick(&ids));
            frame.push_str(rng.pick(&id_bodies));
            frame.push_str(rng.pick(&ts_keys));
            frame.push_str(rng.pick(&ts_digits));
            frame.push_str(rng.pick(&tails));
            let mut frame = frame.into_bytes();
            for _ in 0..rng.below(3) {
                if frame.is_empty() {
                    break;
                }
                let at = rng.below(frame.len());
                match rng.below(3) {
                    0 => frame[at] = noise[rng.below(noise.len())],
                    1 => {
                        frame.remove(at);
                    }
                    _ => frame.insert(at, noise[rng.below(noise.len())]),
                }
            }
            assert_eq!(
                event_ts(&frame),
                event_ts_by_search(&frame),
                "{}",
                String::from_utf8_lossy(&frame)
            );
        }
    }
}
