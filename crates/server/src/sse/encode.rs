//! The bytes of the stream: one SSE message per frame, with the `id` a reconnect resumes
//! from, heartbeat comments, the `retry` hint and the final `close` event.

use agentwire_protocol::{CloseCode, ServerFrame};
use bytes::{BufMut, Bytes, BytesMut};

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

/// Appends one SSE message: `event` (none: a `message`), `id` as `<epoch>:<seq>`, and
/// `data`, one `data:` line per line of it (serialized JSON has none, but a line break
/// must never end the message early).
pub(crate) fn push_message(
    out: &mut BytesMut,
    event: Option<&str>,
    id: Option<(&str, u64)>,
    data: &[u8],
) {
    out.reserve(data.len() + 64);
    if let Some(event) = event {
        out.put_slice(b"event: ");
        out.put_slice(event.as_bytes());
        out.put_u8(b'\n');
    }
    if let Some((epoch, seq)) = id {
        out.put_slice(b"id: ");
        out.put_slice(epoch.as_bytes());
        out.put_u8(b':');
        out.put_slice(seq.to_string().as_bytes());
        out.put_u8(b'\n');
    }
    for line in data.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        out.put_slice(b"data: ");
        out.put_slice(line);
        out.put_u8(b'\n');
    }
    out.put_u8(b'\n');
}

/// The data of the final `close` event: the close code a WebSocket would have been closed
/// with, and its reason.
pub(crate) fn close_data(code: CloseCode) -> String {
    format!(r#"{{"code":{},"reason":"{}"}}"#, code.code(), code.reason())
}

/// Parses a `Last-Event-ID` (`<epoch>:<seq>`, as this stream writes them).
pub(crate) fn parse_event_id(id: &str) -> Option<(&str, u64)> {
    let (epoch, seq) = id.rsplit_once(':')?;
    let seq = seq.parse().ok()?;
    (!epoch.is_empty()).then_some((epoch, seq))
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
    fn a_message_has_an_id_and_never_ends_early() {
        let mut out = BytesMut::new();
        push_message(&mut out, None, Some(("e_1", 7)), b"{\"a\":1}");
        push_message(&mut out, Some("close"), None, b"x\ny\r\nz");
        assert_eq!(
            &out[..],
            b"id: e_1:7\ndata: {\"a\":1}\n\nevent: close\ndata: x\ndata: y\ndata: z\n\n"
        );
    }

    #[test]
    fn event_ids_read_back() {
        assert_eq!(parse_event_id("e_1:7"), Some(("e_1", 7)));
        assert_eq!(parse_event_id("a:b:7"), Some(("a:b", 7)));
        assert_eq!(parse_event_id(":7"), None);
        assert_eq!(parse_event_id("e_1"), None);
        assert_eq!(parse_event_id("e_1:-1"), None);
    }

    #[test]
    fn close_data_is_json() {
        let v: serde_json::Value =
            serde_json::from_str(&close_data(CloseCode::Replaced)).expect("json");
        assert_eq!(v["code"], 4003);
    }
}
