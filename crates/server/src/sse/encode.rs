//! The bytes of the stream: one SSE message per frame
//! ([`agentwire_protocol::sse::write_message`]), with the `id` a reconnect resumes from,
//! heartbeat comments, the `retry` hint and the final `close` event.

use agentwire_protocol::{CloseCode, ServerFrame};
use bytes::Bytes;

/// The `retry:` hint sent first: how long a browser's `EventSource` waits before it
/// reconnects on its own, in milliseconds.
pub(crate) const RETRY_HINT_MS: u64 = 1_000;

/// A heartbeat: an SSE comment, which keeps proxies from timing the stream out and tells
/// the server, when it fails, that the peer is gone. Clients see nothing.
pub(crate) const HEARTBEAT: &[u8] = b": heartbeat\n\n";

/// The opening of every stream: the reconnect delay.
pub(crate) fn retry_hint() -> Bytes {
    Bytes::from(format!("retry: {RETRY_HINT_MS}\n\n"))
}

/// Where a frame leaves the stream: the `seq` of an event, the end of a `replay_gap` (the
/// stream moved past it), `None` for frames that are not in the stream
/// (`connection_established`, `pong`, `error`).
pub(crate) fn stream_position(frame: &[u8]) -> Option<u64> {
    if let Some(seq) = event_seq(frame) {
        return Some(seq);
    }
    if frame.starts_with(br#"{"type":"replay_gap""#)
        && let Ok(ServerFrame::ReplayGap(gap)) = ServerFrame::decode(frame)
    {
        return Some(gap.to_seq.get());
    }
    None
}

/// The `seq` of an event frame. The manager builds event frames as
/// `{"type":"…","seq":N,…`: the type name (no quotes, no escapes) is followed at once by
/// `","seq":`.
fn event_seq(frame: &[u8]) -> Option<u64> {
    const SEQ: &[u8] = b"\",\"seq\":";
    let rest = frame.strip_prefix(b"{\"type\":\"")?;
    let name_end = rest.iter().take(64).position(|&b| b == b'"')?;
    let digits = rest[name_end..].strip_prefix(SEQ)?;
    let n = digits.iter().take_while(|b| b.is_ascii_digit()).count();
    if n == 0 || n > 19 {
        return None;
    }
    std::str::from_utf8(&digits[..n]).ok()?.parse().ok()
}

/// The data of the final `close` event: the close code a WebSocket would have been closed
/// with, and its reason.
pub(crate) fn close_data(code: CloseCode) -> String {
    format!(r#"{{"code":{},"reason":"{}"}}"#, code.code(), code.reason())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_come_from_events_and_gaps() {
        assert_eq!(
            stream_position(br#"{"type":"agent_started","seq":42,"event_id":"x","ts":1}"#),
            Some(42)
        );
        assert_eq!(
            stream_position(br#"{"type":"replay_gap","from_seq":3,"to_seq":17}"#),
            Some(17)
        );
        assert_eq!(stream_position(br#"{"type":"pong"}"#), None);
        assert_eq!(
            stream_position(br#"{"type":"connection_established","connection_id":"c","user_id":"u","epoch":"e","heartbeat_interval_ms":1,"last_seq":9,"resumed":false}"#),
            None
        );
    }

    #[test]
    fn close_data_is_json() {
        let v: serde_json::Value =
            serde_json::from_str(&close_data(CloseCode::Replaced)).expect("json");
        assert_eq!(v["code"], 4003);
    }
}
